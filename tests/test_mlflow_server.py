import base64
import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mtlsweep.data.errors import DataError
from mtlsweep.data import task_keys as names
from mtlsweep.mlflow_server import server
from mtlsweep.mlflow_server.__main__ import main


def _free_port():
    return server._free_port("127.0.0.1")


def test_status_state_files_and_refusal_of_a_second_server(mlflow_server):
    info = server.status(mlflow_server.project_dir)
    assert info.healthy and info.alive and info.url == mlflow_server.url
    assert info.backend == f"sqlite:///{Path(mlflow_server.project_dir) / 'mlflow.db'}"
    d = Path(mlflow_server.project_dir)
    state = json.loads((d / server.STATE_FILE).read_text())
    assert state["pgid"] == state["pid"] == int((d / server.PID_FILE).read_text())
    assert state["artifact_root"] == str(d / "artifacts") and Path(state["log_path"]).is_file()
    with pytest.raises(server.TrackingError, match=f"already runs at {mlflow_server.url}"):
        server.start(d)


def test_cli_status_prints_the_url(mlflow_server, capsys):
    assert main(["status", "--dir", mlflow_server.project_dir]) == 0
    out = capsys.readouterr().out
    assert "answering" in out and mlflow_server.url in out


def test_cli_status_without_server(tmp_path, capsys):
    assert main(["status", "--dir", str(tmp_path)]) == 1
    assert "no MLflow server" in capsys.readouterr().out
    assert server.stop(tmp_path) is False


def test_check_reachable(mlflow_server):
    server.check_reachable(mlflow_server.url)
    server.check_reachable("sqlite:///nowhere/mlflow.db")  # not a server: nothing to check
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(server.TrackingError) as e:
        server.check_reachable(dead, timeout=2)
    msg = str(e.value)
    assert dead in msg and "\n" not in msg


def test_resolve_tracking_uri_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = server.resolve_tracking_uri(default_dir=tmp_path / "ws")
    assert default == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}" and (tmp_path / "ws").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:1")
    assert server.resolve_tracking_uri(default_dir=tmp_path) == "http://env:1"
    assert server.resolve_tracking_uri(cli_uri="http://cli:1") == "http://cli:1"
    assert server.resolve_tracking_uri("http://cfg:1", "http://cli:1") == "http://cfg:1"


def test_redact_uri():
    assert server.redact_uri("postgresql://bob:s3cr@t@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert server.redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"
    assert server.redact_uri("postgresql://bob:a/b@db/x") == "postgresql://bob:***@db/x"     # '/' in it
    assert server.redact_uri("http://host:5000/x") == "http://host:5000/x"


def test_server_keeps_its_database_private_and_its_backend_off_the_command_line(mlflow_server):
    import stat
    from pathlib import Path
    db = Path(mlflow_server.project_dir) / "mlflow.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    cmdline = Path(f"/proc/{mlflow_server.pid}/cmdline").read_bytes().decode()
    assert "mlflow.db" not in cmdline and "--backend-store-uri" not in cmdline


def test_sanitize_names_is_unique_valid_and_reversible():
    tasks = ["K562", "GM12878 (rep 1)", "a/b", "a_b", "A_B", "..", "", "héla", "x" * 300]
    m = names.sanitize_names(tasks)
    assert m["K562"] == "K562" and m["a_b"] == "a_b"  # valid names keep themselves
    assert m["a/b"] not in ("a_b", "a/b") and m["A_B"] not in ("a_b", "A_B")
    keys = list(m.values())
    assert len({k.lower() for k in keys}) == len(tasks)
    for k in keys:
        assert names.is_valid_key(k) and len(k) <= names.MAX_KEY_LEN and "/" not in k
    assert names.invert(m)["GM12878 _rep 1_"] == "GM12878 (rep 1)"
    with pytest.raises(DataError, match="'K562' appears more than once"):
        names.sanitize_names(["K562", "K562"])


def _api(url, auth=None):
    req = urllib.request.Request(url + "/api/2.0/mlflow/experiments/search?max_results=1")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_basic_auth_refuses_anonymous_and_accepts_admin(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "boss")
    with pytest.raises(server.TrackingError, match="MLFLOW_TRACKING_PASSWORD"):
        server.start(tmp_path, auth=True)
    assert server.status(tmp_path) is None
    password = "correct horse battery %staple"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    info = server.start(tmp_path, auth=True)
    try:
        ini = tmp_path / server.AUTH_INI
        assert stat.S_IMODE(ini.stat().st_mode) == 0o600
        assert password not in " ".join(Path(f"/proc/{info.pid}/cmdline").read_text().split("\0"))
        assert _api(info.url) == 401
        assert _api(info.url, "boss:wrong-password-xx") == 401
        assert _api(info.url, f"boss:{password}") == 200
        server.check_reachable(info.url)  # /health stays open
        from mlflow import MlflowClient  # picks the credentials from the environment

        assert MlflowClient(info.url).create_experiment("auth-ok")
        # Without or with wrong credentials, commands refuse in one line before any work.
        from mtlsweep.app.cli import main
        (tmp_path / "run.yaml").write_text(f"data: {{path: {tmp_path / 'none.h5'}}}\n")
        for password, said in ((None, "are not set"), ("wrong-password-xx", "were refused")):
            if password is None:
                monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
            else:
                monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
            for argv in (["train", "--config", str(tmp_path / "run.yaml")], ["compare", "--out", str(tmp_path / "c")]):
                capsys.readouterr()
                assert main(argv + ["--tracking-uri", info.url]) == 2
                err = capsys.readouterr().err.strip().splitlines()
                assert len(err) == 1 and "asks for credentials (HTTP 401)" in err[0] and said in err[0], err
        assert not (tmp_path / "c").exists()
    finally:
        assert server.stop(tmp_path) is True
    assert not ini.exists() and not (tmp_path / server.PID_FILE).exists()
    assert server.status(tmp_path) is None and not server._group_alive(info.pgid)
    with pytest.raises(ProcessLookupError):
        os.killpg(info.pgid, 0)

