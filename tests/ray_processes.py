"""Stop one Ray cluster of the machine, not every one: `ray stop --force` ends every Ray process
of the user, so a test session would kill a sweep or study running beside it.

A cluster's own processes name its temp dir on their command line (gcs_server, raylet, the
dashboard, the monitors) or, for the Ray client server, its GCS port; its workers and agents
rename themselves (``ray::...``) but are descendants of those, found through /proc's parent links.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of this user's processes."""
    out = {}
    uid = os.getuid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if d.stat().st_uid != uid:
                continue
            # The command (2nd field) may hold spaces and parentheses: the parent pid follows the last ')'.
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            out[int(d.name)] = (ppid, (d / "cmdline").read_bytes())
        except (OSError, ValueError, IndexError):
            continue     # ended while read
    return out


def cluster_processes(temp_dir: str | os.PathLike, *marks: str) -> set[int]:
    """The pids of the processes naming ``temp_dir`` (or one of ``marks``, such as ":<gcs port>") on
    their command line, and of all their descendants."""
    # Each as a whole: /x/ray must not match /x/ray2, nor :6379 match :63790.
    keys = [re.compile(re.escape(os.fsencode(m)) + rb"(?=[/\0 ]|$)") for m in (str(Path(temp_dir)), *marks)]
    procs = _processes()
    found = {pid for pid, (_, cmd) in procs.items() if pid != os.getpid() and any(k.search(cmd) for k in keys)}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found - {os.getpid()}
        found |= more
        grew = bool(more)
    return found


def stop_cluster(temp_dir: str | os.PathLike, *marks: str, grace_s: float = 10.0) -> set[int]:
    """SIGTERM the cluster's processes, SIGKILL what is left after ``grace_s``; the pids signalled."""
    pids = cluster_processes(temp_dir, *marks)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        if not any(_alive(p) for p in pids):
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"      # a zombie has ended; only its parent's wait() is missing
