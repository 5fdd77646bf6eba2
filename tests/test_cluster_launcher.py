"""`ray up` + `ray submit` + `ray down` with search/clusters/onprem.yaml against an sshd on 127.0.0.1.

The on-prem YAML's `ray stop` (head start commands, `ray down`) ends every Ray process on the
machine, including the session cluster the other tests share, so the end-to-end test is marked
`cluster_launcher`, deselected by default (pyproject addopts), and run in its own pytest process:

    .venv/bin/python -m pytest -q -m cluster_launcher tests/test_cluster_launcher.py

It needs root, openssh-server and rsync, and nothing on 127.0.0.1:22 or any Ray running;
otherwise it skips (with MTLSWEEP_REQUIRE_CLUSTER_LAUNCHER=1, as in CI, it fails instead).

It runs a variant of the shipped YAML that differs only where a test has to: the throwaway key,
a cluster name of its own, and the head's venv is this test venv (so the YAML's `pip install -e`
becomes a `--dry-run` that checks the synced copy installs without touching the venv). Everything
it leaves on the machine (~/.bashrc, ~/mtlsweep, ~/ray_bootstrap_*, /tmp/ray entries, the
authorized_keys line, /run/sshd, sshd) is put back afterwards.
"""
from __future__ import annotations

import copy
import getpass
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from sshd_fixture import HOST, LoopbackSshd, missing_requirements, port_in_use

from mtlsweep.search.processes import alive

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "search" / "clusters" / "onprem.yaml"
VENV = Path(sys.prefix)
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
HOME = Path(pwd.getpwuid(0).pw_dir)                       # ~ of ssh_user root on the "remote" head
RAY_TMP = Path("/tmp/ray")
# What `ray up` / `ray submit` create in the head's home directory.
HOME_PATHS = [".bashrc", "mtlsweep", "sweep.py", "ray_bootstrap_config.yaml", "ray_bootstrap_key.pem", "mlruns"]
REQUIRE = os.environ.get("MTLSWEEP_REQUIRE_CLUSTER_LAUNCHER") == "1"


def _skip(reason: str):
    if REQUIRE:
        pytest.fail(f"MTLSWEEP_REQUIRE_CLUSTER_LAUNCHER=1 but: {reason}")
    pytest.skip(reason)


def _log(msg: str):
    print(f"[cluster-launcher {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ray_session_dirs(pids: list[int]) -> set[Path]:
    """The session directories (under /tmp/ray) of these Ray daemons, from their --log_dir."""
    dirs = set()
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for a in args:
            if a.startswith(b"--log_dir="):
                log_dir = Path(a.split(b"=", 1)[1].decode())
                if log_dir.parent.parent == RAY_TMP and log_dir.parent.name.startswith("session_"):
                    dirs.add(log_dir.parent)
    return dirs


def ray_pids() -> list[int]:
    """Pids of Ray's daemons running on this machine (any cluster, any user). A zombie has ended:
    where the test runs as a PID namespace's init, nothing reaps the daemons `ray stop` ended."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                comm = (d / "comm").read_text().strip()
            except OSError:
                continue
            if comm in ("raylet", "gcs_server") and alive(int(d.name)):
                pids.append(int(d.name))
    return pids


def make_variant(shipped: dict, key: Path, venv: Path) -> dict:
    """The shipped YAML with the test's key, cluster name and venv; asserts nothing else changes."""
    v = copy.deepcopy(shipped)
    v["cluster_name"] = f"{shipped['cluster_name']}-pytest"
    v["auth"]["ssh_private_key"] = str(key)
    dry_runs = 0
    for section in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        cmds = []
        for cmd in shipped[section]:
            cmd = re.sub(r"(~/|\$HOME/)?mtl-venv", str(venv), cmd)
            if re.search(r"/pip install .*-e ~/mtlsweep", cmd):
                cmd = cmd.replace(" install ", " install --dry-run --no-deps --no-build-isolation "
                                  "--disable-pip-version-check ", 1)
                dry_runs += 1
            cmds.append(cmd)
        v[section] = cmds
    assert dry_runs == 1, "the shipped setup_commands no longer `pip install -e ~/mtlsweep` once"
    same = {k for k in shipped if k not in ("cluster_name", "auth", "setup_commands", "head_start_ray_commands",
                                           "worker_start_ray_commands")}
    assert {k: v[k] for k in same} == {k: shipped[k] for k in same} and v.keys() == shipped.keys()
    assert v["auth"]["ssh_user"] == shipped["auth"]["ssh_user"]
    return v


def test_make_variant_keeps_the_shipped_structure(tmp_path):
    shipped = yaml.safe_load(SHIPPED.read_text())
    v = make_variant(shipped, tmp_path / "key", Path("/opt/venv"))
    assert v["provider"] == shipped["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert v["file_mounts"] == {"~/mtlsweep": "."}
    assert not any("mtl-venv" in c for c in v["setup_commands"] + v["head_start_ray_commands"])
    assert [c.split()[1:] for c in v["head_start_ray_commands"]] == \
        [c.split()[1:] for c in shipped["head_start_ray_commands"]]


# -- machine state: checks first, then set-up that is always undone ----------------------------

@pytest.fixture
def preflight():
    reason = missing_requirements()
    if reason:
        _skip(reason)
    if port_in_use():
        _skip(f"{HOST}:22 is already taken (Ray's local provider can only ssh to port 22); "
              "stop that server to run this test")
    deadline = time.monotonic() + 20      # e.g. a previous pytest run's `ray stop` still finishing
    while ray_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    if ray_pids():
        _skip(f"Ray is running on this machine (pids {ray_pids()}); the on-prem YAML's `ray stop` would end it")
    if re.search(r"\s", str(VENV)):
        _skip(f"the venv path {VENV} contains whitespace")


@pytest.fixture
def home_state(preflight, tmp_path):
    """Back up what ray up/submit write into root's home (and the state under /tmp/ray); restore it."""
    backup = tmp_path / "home_backup"
    backup.mkdir()
    saved = {}
    for name in HOME_PATHS:
        p = HOME / name
        if p.exists() or p.is_symlink():
            dest = backup / name
            if p.is_dir() and not p.is_symlink():
                shutil.copytree(p, dest, symlinks=True)
            else:
                shutil.copy2(p, dest, follow_symlinks=False)
            saved[name] = dest
    ray_tmp_existed = RAY_TMP.exists()
    latest = RAY_TMP / "session_latest"
    latest_target = os.readlink(latest) if latest.is_symlink() else None
    control_user_dir = Path(f"/tmp/ray_ssh_{hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]}")
    control_user_dir_existed = control_user_dir.exists()
    prom_file = RAY_TMP / "prom_metrics_service_discovery.json"     # rewritten by every Ray head
    prom_file_existed = prom_file.exists()
    pymp_before = set(Path("/tmp").glob("pymp-*"))
    state = {"control_user_dir": control_user_dir, "ray_tmp_owned": []}
    yield state
    for name in HOME_PATHS:
        p = HOME / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        if name in saved:
            if saved[name].is_dir() and not saved[name].is_symlink():
                shutil.copytree(saved[name], p, symlinks=True)
            else:
                shutil.copy2(saved[name], p, follow_symlinks=False)
    # Only what this test's cluster wrote under /tmp/ray: its session directory and the local
    # provider's state files (other Ray users of the machine keep theirs).
    for p in state["ray_tmp_owned"]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if not prom_file_existed:
        prom_file.unlink(missing_ok=True)
    # multiprocessing temp dirs of the head's processes, which `ray stop` ended before they could
    # remove them: new ones whose listener socket no live process holds any more.
    bound = {ln.split()[-1] for ln in Path("/proc/net/unix").read_text().splitlines()[1:] if len(ln.split()) > 7}
    for d in set(Path("/tmp").glob("pymp-*")) - pymp_before:
        try:
            if not any(str(f) in bound for f in d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass
    if latest.is_symlink() and not latest.exists():
        latest.unlink()
        if latest_target is not None and (RAY_TMP / latest_target).exists():
            latest.symlink_to(latest_target)
    if not ray_tmp_existed and RAY_TMP.exists() and not any(RAY_TMP.iterdir()):
        RAY_TMP.rmdir()
    if not control_user_dir_existed:
        shutil.rmtree(control_user_dir, ignore_errors=True)


@pytest.fixture
def sshd(home_state, tmp_path):
    server = LoopbackSshd(tmp_path / "sshd", log=_log)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def tiny_sweep(signal_store_path, tmp_path):
    from conftest import TINY_ARCH
    d = tmp_path / "sweep"
    d.mkdir()
    base = {"data": {"path": str(signal_store_path), "batch_size": 64},
            "model": {"arch": TINY_ARCH, "sharing": {"shared_layers": 5}},
            "train": {"epochs": 1, "steps_per_epoch": 5, "num_threads": 1, "out_dir": str(d / "runs")},
            "tracking": {"experiment": "onprem"}}
    (d / "base.yaml").write_text(yaml.safe_dump(base))
    (d / "space.yaml").write_text(yaml.safe_dump({"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}))
    (d / "ws").mkdir()
    uri = f"sqlite:///{d / 'ws' / 'mlflow.db'}"
    # With a SQLite store MLflow's default artifact root is ./mlruns, i.e. ~/mlruns under `ray submit`:
    # create the experiment with its artifacts in tmp (the sweep reuses an experiment by name).
    from mlflow.tracking import MlflowClient
    MlflowClient(uri).create_experiment("onprem", artifact_location=(d / "artifacts").as_uri())
    args = ["--base", str(d / "base.yaml"), "--space", str(d / "space.yaml"), "--num-samples", "2",
            "--max-concurrent", "2", "--scheduler", "none", "--name", "onprem", "--workspace", str(d / "ws"),
            "--storage", str(d / "ray_results"), "--tracking-uri", uri, "--address", "auto"]
    return {"args": args, "uri": uri, "storage": d / "ray_results", "artifacts": d / "artifacts"}


# -- the test ------------------------------------------------------------------------------------

def _ray(args: list[str], env: dict, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    _log("$ ray " + " ".join(args))
    r = subprocess.run([str(RAY), *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    tail = "\n".join(r.stdout.rstrip().splitlines()[-8:])
    _log(f"  exit {r.returncode} after {time.monotonic() - t0:.0f} s; last lines:\n{tail}")
    if check:
        assert r.returncode == 0, f"ray {args[0]} failed:\n{r.stdout[-6000:]}"
    return r


@pytest.mark.cluster_launcher
def test_ray_up_submit_down_with_the_onprem_yaml(sshd, home_state, tiny_sweep, tmp_path):
    shipped = yaml.safe_load(SHIPPED.read_text())
    variant = make_variant(shipped, sshd.key, VENV)
    cfg = tmp_path / "onprem-pytest.yaml"
    cfg.write_text(yaml.safe_dump(variant, sort_keys=False))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    name = variant["cluster_name"]
    control_dir = home_state["control_user_dir"] / hashlib.sha256(name.encode()).hexdigest()[:10]
    home_state["ray_tmp_owned"] += [RAY_TMP / f"cluster-{name}.state", RAY_TMP / f"cluster-{name}.lock"]
    t0 = time.monotonic()
    try:
        _ray(["up", "-y", "--no-config-cache", str(cfg)], env, timeout=900)
        # file_mounts synced the project without the excluded paths; setup_commands ran.
        synced = HOME / "mtlsweep"
        assert (synced / "search" / "sweep.py").is_file() and (synced / "pyproject.toml").is_file()
        assert not (synced / ".venv").exists() and not (synced / ".git").exists()
        bashrc = (HOME / ".bashrc").read_text()
        assert f"export PATH={VENV}/bin:$PATH" in bashrc and "export RAY_AUTH_MODE=" in bashrc
        assert ray_pids(), "ray up returned but no raylet / gcs_server is running"

        r = _ray(["submit", "--no-config-cache", str(cfg), "search/sweep.py", "--", *tiny_sweep["args"]], env,
                 timeout=1200)
        assert "sweep onprem: 2 trials (0 failed)" in r.stdout, r.stdout[-6000:]

        from mlflow.tracking import MlflowClient
        client = MlflowClient(tiny_sweep["uri"])
        exp = client.get_experiment_by_name("onprem")
        trials = client.search_runs([exp.experiment_id], "tags.role = 'trial' and tags.sweep = 'onprem'")
        assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials), \
            [(t.info.run_id, t.info.status) for t in trials]
        assert (tiny_sweep["storage"] / "onprem").is_dir()
        assert any(tiny_sweep["artifacts"].rglob("config.yaml"))

        r = _ray(["exec", "--no-config-cache", str(cfg), "ray status"], env, timeout=300)
        assert "Active:" in r.stdout and "CPU" in r.stdout, r.stdout[-3000:]
    finally:
        home_state["ray_tmp_owned"] += sorted(ray_session_dirs(ray_pids()))    # the head's logs
        try:
            down = _ray(["down", "-y", str(cfg)], env, timeout=600, check=False)
        except subprocess.TimeoutExpired as e:
            down = subprocess.CompletedProcess(e.cmd, 124, stdout=f"timed out:\n{e.output or ''}")
        # Ray's ssh control masters linger ControlPersist=10s; close them now.
        if control_dir.exists():
            for sock in control_dir.iterdir():
                subprocess.run(["ssh", "-S", str(sock), "-O", "exit", f"root@{HOST}"], capture_output=True,
                               timeout=30)
            shutil.rmtree(control_dir, ignore_errors=True)
        deadline = time.monotonic() + 30
        while ray_pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = ray_pids()
        if left:   # never leave a cluster behind, even when the test fails
            _log(f"Ray still running after ray down (pids {left}); ray stop --force")
            subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
        # `ray down` has no --no-config-cache: drop the config cache it wrote for this cluster.
        for p in Path(tempfile.gettempdir()).glob("ray-config-*"):
            try:
                if json.loads(p.read_text()).get("config", {}).get("cluster_name") == name:
                    p.unlink()
            except (OSError, ValueError, AttributeError):
                pass
        _log(f"up + submit + down took {time.monotonic() - t0:.0f} s")
    assert down.returncode == 0, f"ray down failed:\n{down.stdout[-6000:]}"
    assert not left, f"ray down left Ray processes running: {left}"
