"""Ray helpers an embedded cluster leaves behind when its driver is SIGKILLed.

The raylet and GCS die with the driver, but Ray's dashboard agent and runtime-env agent stay,
reparented to PID 1 and still listening (seen in 2 of 3 kills). A living cluster's agents have
their raylet as parent, so an agent whose parent is init belongs to no cluster: the next
embedded start ends those (SIGTERM, then SIGKILL). Linux /proc only; elsewhere nothing is done.
"""
from __future__ import annotations

import os
from pathlib import Path

from mtlsweep.search.processes import end_processes, process_table

AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def orphaned_agents(proc: Path = Path("/proc")) -> list[int]:
    """PIDs of this user's Ray agents whose parent is init (their raylet is gone)."""
    return [pid for pid, p in process_table(proc).items()
            if p.ppid == 1 and p.uid == os.getuid()
            and p.cmdline.split(b"\0")[0].decode(errors="replace").strip().startswith(AGENT_TITLES)]


def end_orphaned_agents(timeout: float = 5.0) -> list[int]:
    """End the orphaned agents; returns their PIDs."""
    pids = orphaned_agents()
    end_processes(pids, grace_s=timeout, kill_wait_s=timeout)
    return pids
