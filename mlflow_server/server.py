"""Start, stop and inspect one `mlflow server` per project directory.

The server runs in its own session (process group), so `stop` ends exactly the processes
this module started, never other MLflow servers on the machine. Its state lives beside the
data it serves: `<project_dir>/mlflow_server.json` (url, pid, pgid, backend with the password
redacted, artifact root, log path) and `<project_dir>/mlflow_server.pid`.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from mtlsweep.config.errors import UserError

STATE_FILE = "mlflow_server.json"
PID_FILE = "mlflow_server.pid"
LOG_FILE = "mlflow_server.log"
AUTH_INI = "basic_auth.ini"
SECRET_FILE = ".flask_secret_key"

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# MLflow's own defaults for --allowed-hosts (localhost and private ranges); passing the flag
# replaces them, so they are repeated when a non-loopback host adds its own names.
_DEFAULT_ALLOWED = [
    "localhost", "127.0.0.1", "[::1]", "localhost:*", "127.0.0.1:*", "[[]::1]:*",
    "10.*", "192.168.*", *[f"172.{n}.*" for n in range(16, 32)],
]
# The auth app refuses shorter admin passwords (mlflow.utils.validation._validate_password).
_MIN_PASSWORD_LEN = 12

# Popen objects of servers started by this process: polling them reaps the zombie that a
# killed child otherwise leaves, which would still look alive to kill(pid, 0).
_CHILDREN: dict[int, subprocess.Popen] = {}


class TrackingError(UserError, RuntimeError):
    """A tracking server or store problem, described in one line."""


@dataclass
class ServerInfo:
    url: str
    pid: int
    pgid: int
    backend: str
    artifact_root: str
    log_path: str
    project_dir: str
    host: str
    port: int
    auth: bool = False
    alive: bool = False
    healthy: bool = False


def redact_uri(uri: str) -> str:
    """`scheme://user:secret@host` -> `scheme://user:***@host`, also when the secret holds a
    '/' (not URL-encoded, as people write passwords): the userinfo ends at the last '@'."""
    return re.sub(r"^([A-Za-z][\w+.-]*://[^/:@?#]*):.*@(?=[^@]*$)", r"\1:***@", uri)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("0.0.0.0", "::") else "", 0))
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    # A wildcard bind is reached through loopback from this machine.
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# Our own server is on this machine: an http_proxy from the environment must not be asked.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _health(url: str, timeout: float = 2.0) -> bool:
    try:
        with _DIRECT.open(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _group_alive(pgid: int) -> bool:
    """True if a non-zombie process of group `pgid` exists."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command name: state ppid pgrp ...
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _read_state(project_dir: Path) -> dict | None:
    path = project_dir / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise TrackingError(f"{path}: unreadable server state ({e}); delete it if no server runs")


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clear_state(project_dir: Path) -> None:
    for name in (STATE_FILE, PID_FILE, AUTH_INI):
        (project_dir / name).unlink(missing_ok=True)


def _last_error(log_path: Path) -> str:
    """The exception line a crashed server's log ends with (`ValueError: ...`), else its last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", ln)]
    return (errors or lines or ["(empty log)"])[-1][:300]


def _info_from_state(state: dict) -> ServerInfo:
    fields = {k: state[k] for k in ServerInfo.__dataclass_fields__ if k in state}
    return ServerInfo(**fields)


def _allowed_hosts(host: str, port: int) -> list[str]:
    names = {host, socket.gethostname(), socket.getfqdn()} - {"0.0.0.0", "::", ""}
    extra = []
    for name in sorted(names):
        extra += [name, f"{name}:{port}"]
    return _DEFAULT_ALLOWED + extra


def _admin_credentials() -> tuple[str, str]:
    """The admin user and password basic auth is started with, checked before anything is written."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not user or not password:
        raise TrackingError(
            "auth=True needs the admin credentials in the environment variables "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (both set, non-empty)"
        )
    if len(password) < _MIN_PASSWORD_LEN:
        raise TrackingError(
            f"MLFLOW_TRACKING_PASSWORD: MLflow's basic auth needs at least "
            f"{_MIN_PASSWORD_LEN} characters, got {len(password)}"
        )
    if password != password.strip() or "\n" in password or "\r" in password:
        raise TrackingError(
            "MLFLOW_TRACKING_PASSWORD: must not contain line breaks or start/end with whitespace "
            "(MLflow reads it from an INI file)"
        )
    return user, password


def _auth_files(project_dir: Path, env: dict, user: str, password: str) -> None:
    """Write the basic-auth config (0600) with the admin credentials."""
    values = {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{project_dir / 'basic_auth.db'}",
        "admin_username": user,
        "admin_password": password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    # MLflow parses the file with ConfigParser's default interpolation: '%' must be doubled.
    lines = [f"{k} = {v.replace('%', '%%')}" for k, v in values.items()]
    _write_atomic(project_dir / AUTH_INI, "[mlflow]\n" + "\n".join(lines) + "\n", mode=0o600)
    os.chmod(project_dir / AUTH_INI, 0o600)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(project_dir / AUTH_INI)
    # The file above is the single source of the admin credentials.
    env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)  # the server never needs it in its environment
    if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        # CSRF key of the auth UI: must stay the same across restarts and workers.
        secret_path = project_dir / SECRET_FILE
        if not secret_path.exists():
            _write_atomic(secret_path, secrets.token_hex(32), mode=0o600)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret_path.read_text().strip()


def start(
    project_dir,
    *,
    backend_uri: str | None = None,
    artifact_root: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    auth: bool = False,
    workers: int = 1,
    wait_s: float = 90,
    allowed_hosts: list[str] | None = None,
) -> ServerInfo:
    """Start `mlflow server` for `project_dir` and wait until GET /health answers."""
    project_dir = Path(project_dir).expanduser().resolve()
    if workers < 1:
        raise TrackingError(f"workers: must be >= 1, got {workers}")
    if port is not None and not (0 < port < 65536):
        raise TrackingError(f"port: must be in 1..65535, got {port}")
    if port is not None and not _port_free(host, port):
        raise TrackingError(f"--port {port}: already in use on {host} (another server listens there); "
                            "choose another --port or stop that server")
    if project_dir.exists() and not project_dir.is_dir():
        raise TrackingError(f"--dir {project_dir}: is a file, not a directory")
    credentials = _admin_credentials() if auth else None
    backend = backend_uri or f"sqlite:///{project_dir / 'mlflow.db'}"
    _check_backend(backend)
    old = _read_state(project_dir) if project_dir.is_dir() else None
    if old is not None and _group_alive(int(old["pgid"])):
        raise TrackingError(
            f"{project_dir}: an MLflow server already runs at {old['url']} "
            f"(pid {old['pid']}); stop it first (mtlsweep server stop --dir {project_dir})"
        )
    if artifact_root is None:
        artifacts = str(project_dir / "artifacts")
    elif "://" in artifact_root:
        artifacts = artifact_root
    else:
        artifacts = str(Path(artifact_root).expanduser().resolve())

    # Everything checkable is checked: from here on, a start that fails removes what it created.
    created = [d for d in (project_dir, Path(artifacts)) if "://" not in str(d) and not d.exists()]
    try:
        return _launch(project_dir, backend, artifacts, host, port, auth, credentials, workers, wait_s,
                       allowed_hosts, log_kept=project_dir not in created)
    except BaseException:
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        raise


def _check_backend(backend: str) -> None:
    """A backend store URI `mlflow server` can open, refused in one line before anything starts."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", backend)
    scheme = m.group(1).lower().split("+")[0] if m else ""
    if scheme not in BACKEND_SCHEMES:
        raise TrackingError(f"--backend-uri {redact_uri(backend)}: use sqlite:///path/mlflow.db, "
                            "postgresql://user@host/db, mysql://user@host/db or mssql://user@host/db")
    if scheme == "postgresql" and not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        raise TrackingError(
            f"backend {redact_uri(backend)}: PostgreSQL needs a driver; install the project's "
            "extra: pip install -e '.[postgres]'"
        )


BACKEND_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _launch(project_dir: Path, backend: str, artifacts: str, host: str, port: int | None, auth: bool,
            credentials: tuple[str, str] | None, workers: int, wait_s: float,
            allowed_hosts: list[str] | None, log_kept: bool) -> ServerInfo:
    project_dir.mkdir(parents=True, exist_ok=True)
    _clear_state(project_dir)
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    port = port or _free_port(host)

    env = dict(os.environ)
    # Otherwise 3.17 starts a job runner and 7 consumers (~2 GB) that tracking never uses.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if auth:
        _auth_files(project_dir, env, *credentials)

    # The backend URI (a database password, perhaps) goes by the environment, not the command
    # line that `ps` shows every user; a SQLite database is created private to its owner.
    env["MLFLOW_BACKEND_STORE_URI"] = backend
    for db in [sqlite_path(backend)] + ([project_dir / "basic_auth.db"] if auth else []):
        if db is not None:
            _private_file(db)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--serve-artifacts", "--artifacts-destination", artifacts,
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]
    if host not in _LOOPBACK or allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(allowed_hosts or _allowed_hosts(host, port))]
    if auth:
        cmd += ["--app-name", "basic-auth"]

    log_path = project_dir / LOG_FILE
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start port {port}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=project_dir, start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    url = f"http://{_url_host(host)}:{port}"
    info = ServerInfo(
        url=url, pid=proc.pid, pgid=proc.pid, backend=redact_uri(backend),
        artifact_root=redact_uri(artifacts), log_path=str(log_path),
        project_dir=str(project_dir), host=host, port=port, auth=auth, alive=True,
    )
    # Written before the wait so that `stop` can end a server whose start is interrupted.
    _write_atomic(project_dir / STATE_FILE, json.dumps(asdict(info), indent=1) + "\n")
    _write_atomic(project_dir / PID_FILE, f"{proc.pid}\n")

    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            _clear_state(project_dir)
            raise TrackingError(
                f"mlflow server exited with code {proc.returncode} before answering at {url}: "
                f"{_last_error(log_path)}" + (f" (log {log_path})" if log_kept else "")
            )
        if _health(url, timeout=1.0):
            time.sleep(0.5)
            if proc.poll() is None:       # the answer came from the server just started, still alive
                break
        if time.monotonic() > deadline:
            _terminate(proc.pid)
            _clear_state(project_dir)
            raise TrackingError(
                f"mlflow server did not answer at {url}/health within {wait_s:.0f} s: "
                f"{_last_error(log_path)}" + (f" (log {log_path})" if log_kept else "")
            )
        time.sleep(0.25)
    info.healthy = True
    return info


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (None for any other)."""
    return Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None


def _private_file(path: Path) -> None:
    """Create ``path`` (if missing) readable and writable by its owner only; SQLite keeps the
    mode for the database and gives its journal the same."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the server binds: a port whose old connections linger in TIME_WAIT is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _terminate(pgid: int, timeout: float = 10.0) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc = _CHILDREN.pop(pgid, None)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def stop(project_dir, timeout: float = 10.0) -> bool:
    """End the server of `project_dir` (SIGTERM, SIGKILL after `timeout`). False if none ran."""
    project_dir = Path(project_dir).expanduser().resolve()
    state = _read_state(project_dir)
    if state is None:
        return False
    pgid = int(state["pgid"])
    was_alive = _group_alive(pgid)
    if was_alive:
        _terminate(pgid, timeout)
    _clear_state(project_dir)
    return was_alive


def status(project_dir) -> ServerInfo | None:
    """The recorded server of `project_dir`, with whether it lives and answers; None if none."""
    project_dir = Path(project_dir).expanduser().resolve()
    state = _read_state(project_dir)
    if state is None:
        return None
    info = _info_from_state(state)
    info.alive = _group_alive(info.pgid)
    info.healthy = info.alive and _health(info.url)
    return info


def resolve_tracking_uri(config_uri: str | None = None, cli_uri: str | None = None,
                         default_dir="workspace", create: bool = True) -> str:
    """First set of: the config's tracking URI, --tracking-uri, MLFLOW_TRACKING_URI;
    else the embedded default `sqlite:///<abs default_dir>/mlflow.db` (its directory created
    unless `create` is false: a command that may still refuse creates it later, with `make_room`)."""
    for where, uri in (("tracking.uri", config_uri), ("--tracking-uri", cli_uri),
                       ("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI"))):
        if uri and uri.strip():
            return check_uri(uri.strip(), where)
    uri = f"sqlite:///{Path(default_dir).expanduser().resolve() / 'mlflow.db'}"
    if create:
        make_room(uri)
    return uri


def make_room(uri: str) -> None:
    """Create the directory a SQLite tracking store will be written in."""
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def require_store(uri: str) -> None:
    """A command that only reads tracked runs refuses a SQLite store that does not exist, rather
    than creating an empty one."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"{uri}: no MLflow store there (nothing has been tracked in that workspace); "
                            "pass --tracking-uri or --workspace of one that has runs")


URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def check_uri(uri: str, where: str = "--tracking-uri") -> str:
    """A tracking URI MLflow can open: a known scheme (``postgresql+psycopg`` and the like
    included) or a local directory path; anything else is one line naming what is allowed."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if m is None or (len(m.group(1)) == 1 and os.name == "nt"):       # a path (C: on Windows)
        return uri
    scheme = m.group(1).lower().split("+")[0]
    if scheme not in URI_SCHEMES:
        raise TrackingError(f"{where} {redact_uri(uri)}: unknown scheme {m.group(1)!r}; use http(s)://host:port, "
                            "sqlite:///path/mlflow.db, postgresql://user@host/db or a local directory")
    if scheme in ("http", "https") and not re.match(r"^https?://[^/]+", uri, re.I):
        raise TrackingError(f"{where} {redact_uri(uri)}: expected http(s)://host[:port]")
    return uri


def check_reachable(uri: str, timeout: float = 5) -> None:
    """Raise TrackingError if an http(s) tracking URI does not answer GET /health, or refuses this
    user's credentials."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            healthy = r.status == 200
            reason = f"HTTP {r.status}"
        if healthy:
            check_access(uri, timeout)
            return
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = str(getattr(e, "reason", e))
    raise TrackingError(
        f"MLflow tracking server {redact_uri(uri)} does not answer ({reason}); start it with "
        f"`mtlsweep server start` or set another tracking URI"
    )


def check_access(uri: str, timeout: float = 5) -> None:
    """Refuse, in one line, an http(s) tracking server that will not let this user read and write
    runs (basic auth: wrong or missing credentials), before any work is done."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 1}', headers={"Content-Type": "application/json"})
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code == 401:
            said = "were refused" if user and password else "are not set"
            raise TrackingError(f"MLflow tracking server {redact_uri(uri)} asks for credentials (HTTP 401) and "
                                f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD {said}; set them to a user of "
                                "that server") from None
        if e.code == 403:
            raise TrackingError(f"MLflow tracking server {redact_uri(uri)}: user {user!r} may not read its "
                                "experiments (HTTP 403); ask its admin for a permission") from None
    except (urllib.error.URLError, OSError):
        pass                      # unreachable: check_reachable says so
