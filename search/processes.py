"""The machine's processes as Linux /proc shows them: parents, liveness, and ending a set of them
with a grace period. Elsewhere than Linux the table is empty and nothing is ended."""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Process:
    ppid: int
    uid: int
    cmdline: bytes          # NUL-separated, as /proc gives it


def process_table(proc: Path = Path("/proc")) -> dict[int, Process]:
    """pid -> Process of every process readable in ``proc`` (one ended while read is left out)."""
    out: dict[int, Process] = {}
    if not proc.is_dir():
        return out
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            # The command (2nd field) may hold spaces and parentheses: the parent pid follows the last ')'.
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            out[int(d.name)] = Process(ppid, d.stat().st_uid, (d / "cmdline").read_bytes())
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie: a zombie has ended, only its parent's wait() is missing."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def end_processes(pids, grace_s: float = 5.0, kill_wait_s: float = 5.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still running after ``grace_s``; waits at most
    ``kill_wait_s`` more for them to go."""
    pids = list(pids)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        if not any(alive(p) for p in pids):
            return
