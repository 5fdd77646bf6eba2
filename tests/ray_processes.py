"""Stop one Ray cluster of the machine, not every one: `ray stop --force` ends every Ray process
of the user, so a test session would kill a sweep or study running beside it.

A cluster's own processes name its temp dir on their command line (gcs_server, raylet, the
dashboard, the monitors) or, for the Ray client server, its GCS port; its workers and agents
rename themselves (``ray::...``) but are descendants of those, found through /proc's parent links.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from mtlsweep.search.processes import end_processes, process_table


def cluster_processes(temp_dir: str | os.PathLike, *marks: str) -> set[int]:
    """The pids of this user's processes naming ``temp_dir`` (or one of ``marks``, such as ":<gcs
    port>") on their command line, and of all their descendants."""
    # Each as a whole: /x/ray must not match /x/ray2, nor :6379 match :63790.
    keys = [re.compile(re.escape(os.fsencode(m)) + rb"(?=[/\0 ]|$)") for m in (str(Path(temp_dir)), *marks)]
    procs = {pid: p for pid, p in process_table().items() if p.uid == os.getuid() and pid != os.getpid()}
    found = {pid for pid, p in procs.items() if any(k.search(p.cmdline) for k in keys)}
    grew = True
    while grew:
        more = {pid for pid, p in procs.items() if p.ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def stop_cluster(temp_dir: str | os.PathLike, *marks: str, grace_s: float = 10.0) -> set[int]:
    """SIGTERM the cluster's processes, SIGKILL what is left after ``grace_s``; the pids signalled."""
    pids = cluster_processes(temp_dir, *marks)
    end_processes(pids, grace_s=grace_s)
    return pids

