"""Ray helpers an embedded cluster leaves behind when its driver is SIGKILLed.

The raylet and GCS die with the driver, but Ray's dashboard agent and runtime-env agent stay,
reparented to PID 1 and still listening (seen in 2 of 3 kills). A living cluster's agents have
their raylet as parent, so an agent whose parent is init belongs to no cluster: the next
embedded start ends those (SIGTERM, then SIGKILL). Linux /proc only; elsewhere nothing is done.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def orphaned_agents(proc: Path = Path("/proc")) -> list[int]:
    """PIDs of this user's Ray agents whose parent is init (their raylet is gone)."""
    out = []
    if not proc.is_dir():
        return out
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            owner = d.stat().st_uid
        except (OSError, ValueError, IndexError):
            continue
        if ppid == 1 and owner == os.getuid() and title.startswith(AGENT_TITLES):
            out.append(int(d.name))
    return out


def end_orphaned_agents(timeout: float = 5.0) -> list[int]:
    """End the orphaned agents; returns their PIDs."""
    pids = orphaned_agents()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            break
    return pids
