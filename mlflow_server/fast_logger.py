"""Batched MLflow logging that never stops training when the tracking server is away.

One epoch report (hundreds of per-task metrics) goes out as `MlflowClient.log_batch` calls of
at most 1000 entities (MLflow 3.17 limits, mlflow/utils/validation.py: 1000 metrics, 100
params, 100 tags, 1000 entities in all, 1 MB of JSON per request), never one call per metric.

What cannot be sent (connection refused, timeout, HTTP 5xx/429/401/403 after MLflow's own
retries) is appended to `<spool_dir>/spool.jsonl` (JSON lines, fsync'd), retried on the next
`flush()`, and `sync(spool_dir)` sends whatever is left (`mtlsweep sync`). Each spooled batch
carries an id; a `{"sent": id}` line is appended once the server accepted it, and the file is
compacted (rewritten without sent entries, removed when empty) at the end of each drain. A
crash between the server's acceptance and the marker resends that batch, which changes
nothing: the SQL store drops a metric identical in (key, value, timestamp, step), re-logging a
param with the same value or a tag is a no-op, and a batch's timestamps are fixed when it is
first logged. Batches are sent in log order, and new data waits behind the spool, so a tag
set later is never overwritten by an older spooled one.

Fail fast: MLflow's client retries a dead server for minutes by default (7 retries, backoff
factor 2, 120 s timeout). `FastLogger` sets MLFLOW_HTTP_REQUEST_MAX_RETRIES=1,
MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=0 and MLFLOW_HTTP_REQUEST_TIMEOUT=10 in os.environ unless
they are already set (the user's values win). MLflow reads them at every request, so this
applies to every MLflow HTTP call of the process; the spool is what makes it safe here.

NaN metric values are accepted by MLflow 3.17 (stored with is_nan) and sent as they are;
+-inf is stored as +-1.8e308 by the server.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import queue
import re
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mtlsweep.data.errors import DataError
from mtlsweep.mlflow_server.runs_view import end_run
from mtlsweep.mlflow_server.server import TrackingError, check_reachable

_log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
# The server refuses a log_batch body over 1e6 bytes; stay clear of it with long params/tags.
MAX_BATCH_BYTES = 800_000
MAX_KEY_LEN = 250

SPOOL_FILE = "spool.jsonl"
REJECTED_FILE = "rejected.jsonl"
LOCK_FILE = "spool.lock"
# What a run's end left for `mtlsweep sync` when the server was away (written by the run logger).
PENDING_ARTIFACTS = "pending_artifacts.jsonl"
PENDING_STATUS = "pending_status.jsonl"

FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

_KEY_RE = re.compile(r"^[/\w.\- :]*$")


def fail_fast_http() -> None:
    """Make MLflow's HTTP client give up on a dead server in seconds (process-wide)."""
    for k, v in FAIL_FAST_ENV.items():
        os.environ.setdefault(k, v)


def _check_key(kind: str, key) -> str:
    if not isinstance(key, str) or not key:
        raise DataError(f"{kind} key {key!r}: must be a non-empty string")
    if not _KEY_RE.match(key) or posixpath.normpath(key) != key or len(key) > MAX_KEY_LEN:
        raise DataError(
            f"{kind} key {key!r}: MLflow allows at most {MAX_KEY_LEN} of letters, digits, "
            "'_', '-', '.', ' ', ':' and '/' with no empty, '.' or '..' path parts "
            "(use mtlsweep.data.task_keys.sanitize_names for task names)"
        )
    return key


def strip_userinfo(uri: str) -> str:
    # Credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD, never from a spool file.
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _is_transient(exc: BaseException) -> bool:
    """True for failures that a later retry can cure (server away, overloaded, auth)."""

    if isinstance(exc, MlflowException):
        code = exc.get_http_status_code()
        return code >= 500 or code in (401, 403, 408, 429)

    return isinstance(exc, (requests.exceptions.RequestException, OSError))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


def _chunks(metrics: list, params: list, tags: list):
    """Split records into log_batch-sized chunks: (metrics, params, tags) tuples."""
    def size(rec) -> int:
        # Escaping (non-ASCII, quotes) can grow a value several-fold in the request body.
        return 40 + len(json.dumps(rec))

    out = []
    cur_m, cur_p, cur_t, cur_bytes = [], [], [], 0

    def full(kind_list, limit, rec) -> bool:
        n = len(cur_m) + len(cur_p) + len(cur_t)
        return (len(kind_list) >= limit or n >= MAX_ENTITIES_PER_BATCH
                or (n and cur_bytes + size(rec) > MAX_BATCH_BYTES))

    for kind, records, limit in (("p", params, MAX_PARAMS_TAGS_PER_BATCH),
                                 ("t", tags, MAX_PARAMS_TAGS_PER_BATCH),
                                 ("m", metrics, MAX_METRICS_PER_BATCH)):
        for rec in records:
            target = {"m": cur_m, "p": cur_p, "t": cur_t}[kind]
            if full(target, limit, rec):
                out.append((cur_m, cur_p, cur_t))
                cur_m, cur_p, cur_t, cur_bytes = [], [], [], 0
                target = {"m": cur_m, "p": cur_p, "t": cur_t}[kind]
            target.append(rec)
            cur_bytes += size(rec)
    if cur_m or cur_p or cur_t:
        out.append((cur_m, cur_p, cur_t))
    return out


class _Clients:
    """One MlflowClient per tracking URI (MlflowClient construction is not free)."""

    def __init__(self):
        self._by_uri = {}

    def get(self, uri: str):
        if uri not in self._by_uri:

            self._by_uri[uri] = MlflowClient(tracking_uri=uri)
        return self._by_uri[uri]


def _send(client, run_id: str, metrics, params, tags) -> None:
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, ts, step) for k, v, ts, step in metrics],
        params=[Param(k, v) for k, v in params],
        tags=[RunTag(k, v) for k, v in tags],
        # MLFLOW_ENABLE_ASYNC_LOGGING would otherwise hide failures in a future.
        synchronous=True,
    )


class Spool:
    """The append-only spool file of one directory, guarded by an flock across processes."""

    def __init__(self, spool_dir):
        self.dir = Path(spool_dir).expanduser().resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / SPOOL_FILE
        self.rejected_path = self.dir / REJECTED_FILE
        self._tlock = threading.RLock()
        self._depth = 0
        self._lock_fd = None

    def __enter__(self):
        self._tlock.acquire()
        if self._depth == 0:
            self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        self._tlock.release()

    def has_pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def _append(self, path: Path, lines: list[dict]) -> None:
        data = "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in lines)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, uri: str, run_id: str, chunks) -> int:
        entries = [
            {"id": uuid.uuid4().hex, "uri": strip_userinfo(uri), "run_id": run_id,
             "t_logged": time.time(), "m": m, "p": p, "t": t}
            for m, p, t in chunks
        ]
        with self:
            self._append(self.path, entries)
        return sum(len(e["m"]) + len(e["p"]) + len(e["t"]) for e in entries)

    def pending(self) -> list[dict]:
        """Entries without a sent/rejected marker, in log order (a torn last line is skipped)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        entries, done = [], set()
        for line in text.splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "id" in d:
                entries.append(d)
            elif "sent" in d:
                done.add(d["sent"])
            elif "rejected" in d:
                done.add(d["rejected"])
        return [e for e in entries if e["id"] not in done]

    def mark(self, entry: dict, error: str | None = None) -> None:
        if error is None:
            self._append(self.path, [{"sent": entry["id"]}])
        else:
            self._append(self.rejected_path, [dict(entry, error=error)])
            self._append(self.path, [{"rejected": entry["id"]}])

    def compact(self) -> None:
        left = self.pending()
        if not left:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{SPOOL_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            for e in left:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def drain(self, clients: _Clients, uri_override: str | None = None) -> tuple[int, int, str]:
        """Send pending entries in order until one fails transiently.

        Returns (values sent, values rejected, first error or "") and leaves the rest spooled.
        """
        sent = rejected = 0
        error = ""
        with self:
            try:
                for e in self.pending():
                    n = len(e["m"]) + len(e["p"]) + len(e["t"])
                    try:
                        _send(clients.get(uri_override or e["uri"]), e["run_id"],
                              e["m"], e["p"], e["t"])
                    except Exception as exc:  # noqa: BLE001 - classified below
                        if _is_transient(exc):
                            error = error or _one_line(exc)
                            break
                        self.mark(e, _one_line(exc))
                        rejected += n
                        error = error or _one_line(exc)
                        continue
                    self.mark(e)
                    sent += n
            finally:
                self.compact()
        return sent, rejected, error


class FastLogger:
    """Log metrics/params/tags of one run in batches, spooling what the server cannot take.

    `timestamp` is in milliseconds since the epoch (MLflow's unit); default: now.
    With `async_=True` a background thread sends; `flush()` waits for it, then retries the
    spool. `close()` flushes and stops the thread. A batch the server will never accept (a
    param logged again with another value, a deleted run) is kept in rejected.jsonl beside the
    spool, the other batches still go out, and TrackingError is raised: at the call in sync
    mode, at the next call or flush()/close() in async mode.
    """

    def __init__(self, tracking_uri: str, run_id: str, spool_dir, async_: bool = False, *,
                 retry_interval_s: float = 30.0, fail_fast: bool = True):
        if fail_fast:
            fail_fast_http()
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.spool = Spool(spool_dir)
        self.retry_interval_s = retry_interval_s
        self.n_sent = 0
        self.n_spooled = 0
        self.n_rejected = 0
        self.n_calls = 0
        self._clients = _Clients()
        self._last_failure = 0.0
        self._outage = False
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue | None = None
        self._thread = None
        if async_:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._worker, name="FastLogger", daemon=True)
            self._thread.start()

    # -- public API -------------------------------------------------------------------------
    def log_metrics(self, metrics: dict, step: int, timestamp: int | None = None) -> None:
        ts = int(time.time() * 1000) if timestamp is None else int(timestamp)
        step = int(step)
        recs = []
        for k, v in metrics.items():
            _check_key("metric", k)
            if isinstance(v, (bool, str, bytes)):
                raise DataError(f"metric {k!r}: value must be a number, got {v!r}")
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise DataError(f"metric {k!r}: value must be a number, got {v!r}") from None
            recs.append([k, fv, ts, step])
        self._submit(recs, [], [])

    def log_params(self, params: dict) -> None:
        self._submit([], [[_check_key("param", k), str(v)] for k, v in params.items()], [])

    def set_tags(self, tags: dict) -> None:
        self._submit([], [], [[_check_key("tag", k), str(v)] for k, v in tags.items()])

    def flush(self) -> None:
        if self._queue is not None:
            self._queue.join()
        self._drain(force=True)
        self._raise_pending_error()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def spooled(self) -> bool:
        """True while some logged data waits in the spool."""
        return self.spool.has_pending()

    # -- internals --------------------------------------------------------------------------
    def _submit(self, metrics, params, tags) -> None:
        if self._closed:
            raise TrackingError(f"FastLogger for run {self.run_id} is closed")
        if not (metrics or params or tags):
            return
        if self._queue is not None:
            self._raise_pending_error()
            self._queue.put((metrics, params, tags))
        else:
            self._write(metrics, params, tags)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            items, stop = [item], False
            # Coalesce what queued up meanwhile into as few batches as possible.
            while sum(len(i[0]) for i in items) < MAX_METRICS_PER_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            # MLflow refuses a batch naming a param or tag key twice: the last tag value
            # wins (as it would have call by call), identical params collapse, and a changed
            # param stays twice so that the server's refusal reaches the caller.
            params = list({(k, v): [k, v] for i in items for k, v in i[1]}.values())
            tags = list({k: [k, v] for i in items for k, v in i[2]}.values())
            try:
                self._write([r for i in items for r in i[0]], params, tags)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                if self._error is None:
                    self._error = e
            finally:
                for _ in items:
                    self._queue.task_done()
                if stop:
                    self._queue.task_done()
            if stop:
                return

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def _note_failure(self, msg: str) -> None:
        self._last_failure = time.monotonic()
        if not self._outage:
            self._outage = True
            _log.warning("MLflow at %s unreachable (%s); spooling to %s",
                         self.tracking_uri, msg, self.spool.path)

    def _drain(self, force: bool) -> None:
        """Retry the spool; at most every retry_interval_s unless forced."""
        if not self.spool.has_pending():
            return
        if not force and time.monotonic() - self._last_failure < self.retry_interval_s:
            return
        sent, rejected, err = self.spool.drain(self._clients)
        self.n_sent += sent
        self.n_rejected += rejected
        if rejected:
            _log.error("MLflow rejected %d spooled values (kept in %s): %s",
                       rejected, self.spool.rejected_path, err)
        if self.spool.has_pending():
            self._note_failure(err)
        elif self._outage:
            self._outage = False
            _log.warning("MLflow at %s reachable again; spool sent", self.tracking_uri)

    def _write(self, metrics, params, tags) -> None:
        chunks = _chunks(metrics, params, tags)
        with self.spool:
            self._drain(force=False)
            if self.spool.has_pending():
                # Keep log order: new data queues behind what is already spooled.
                self.n_spooled += self.spool.append(self.tracking_uri, self.run_id, chunks)
                return
            client = self._clients.get(self.tracking_uri)
            refused = []
            for i, (m, p, t) in enumerate(chunks):
                try:
                    self.n_calls += 1
                    _send(client, self.run_id, m, p, t)
                except Exception as exc:  # noqa: BLE001 - classified below
                    if not _is_transient(exc):
                        # The other chunks still go out; this one is kept for inspection.
                        entry = {"id": uuid.uuid4().hex, "uri": strip_userinfo(self.tracking_uri),
                                 "run_id": self.run_id, "t_logged": time.time(),
                                 "m": m, "p": p, "t": t}
                        self.spool.mark(entry, _one_line(exc))
                        self.n_rejected += len(m) + len(p) + len(t)
                        refused.append(_one_line(exc))
                        continue
                    self.n_spooled += self.spool.append(self.tracking_uri, self.run_id,
                                                        chunks[i:])
                    self._note_failure(_one_line(exc))
                    break
                else:
                    self.n_sent += len(m) + len(p) + len(t)
        if refused:
            raise TrackingError(
                f"MLflow at {self.tracking_uri} refused {len(refused)} batch(es) for run "
                f"{self.run_id} (kept in {self.spool.rejected_path}): {refused[0]}"
            )


def sync(spool_dir, tracking_uri: str | None = None) -> int:
    """Bring the runs spooled in `spool_dir` to the state an uninterrupted run has: send the
    spooled metrics, params and tags, then the artifacts and the end status the run could not
    deliver (to `tracking_uri` or each entry's own URI).

    Returns the number of items sent (metric, param and tag values, artifacts, statuses).
    Raises TrackingError if a server does not answer (what was sent stays sent, the rest stays
    spooled) or if the server refused some entries (moved to rejected.jsonl).
    """
    fail_fast_http()
    spool = Spool(spool_dir)
    tails = [_read_jsonl(spool.dir / name) for name in (PENDING_ARTIFACTS, PENDING_STATUS)]
    if not spool.has_pending() and not any(tails):
        return 0
    uris = {tracking_uri} if tracking_uri else {e["uri"] for e in spool.pending()} | {
        e["uri"] for e in tails[1] if "uri" in e}
    for uri in sorted(uris):
        check_reachable(uri)
    sent, rejected, err = spool.drain(_Clients(), uri_override=tracking_uri)
    if rejected:
        raise TrackingError(
            f"{spool.dir}: sent {sent} values; the server refused {rejected} "
            f"(kept in {spool.rejected_path}): {err}"
        )
    if spool.has_pending():
        left = sum(len(e["m"]) + len(e["p"]) + len(e["t"]) for e in spool.pending())
        raise TrackingError(f"{spool.dir}: sent {sent} values, {left} still spooled: {err}")
    return sent + _sync_run_ends(spool.dir, tracking_uri)


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue                     # a torn last line: the writer died mid-write
    return out


def _sync_run_ends(spool_dir: Path, tracking_uri: str | None) -> int:
    """Artifacts, then statuses (a run is FINISHED only once everything of it arrived); each
    file is rewritten with what is left, so a second sync sends nothing twice."""
    clients = _Clients()
    n = 0
    for name, send in ((PENDING_ARTIFACTS, lambda c, e: c.log_artifact(e["run_id"], e["path"])),
                       (PENDING_STATUS, lambda c, e: end_run(c, e["run_id"], e["status"], end_time=e.get("end_time")))):
        path = spool_dir / name
        entries = _read_jsonl(path)
        left = []
        for i, e in enumerate(entries):
            if name == PENDING_ARTIFACTS and not Path(e["path"]).exists():
                _rewrite(path, entries[i:])           # what was sent stays sent
                raise TrackingError(f"{path}: artifact {e['path']} of run {e['run_id']} no longer exists")
            uri = tracking_uri or e.get("uri")
            if uri is None:
                raise TrackingError(f"{path}: entry for run {e['run_id']} names no tracking URI; pass --tracking-uri")
            try:
                send(clients.get(uri), e)
            except Exception as exc:  # noqa: BLE001 - keep the rest for the next sync
                left = entries[i:]
                _rewrite(path, left)
                raise TrackingError(f"{path}: sent {n}, {len(left)} left: {_one_line(exc)}") from None
            n += 1
        _rewrite(path, left)
    return n


def _rewrite(path: Path, entries: list[dict]) -> None:
    if not entries:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    os.replace(tmp, path)