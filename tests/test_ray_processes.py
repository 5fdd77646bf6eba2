"""The test session's Ray cluster is stopped alone: a sweep or study running beside the tests keeps
its cluster (tests/ray_processes.py, used by conftest's ray_cluster)."""
import shutil
import subprocess
import sys
import tempfile

from ray_processes import cluster_processes, stop_cluster

from mtlsweep.search.processes import alive

# A stand-in for a cluster's process: names its temp dir, as gcs_server and raylet do, and starts
# a child that does not (a renamed worker).
PARENT = ("import subprocess, sys, time; "
          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)")


def _start(temp) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PARENT, f"--session-dir={temp}/session_1"])


def _wait_for_child(temp, timeout=20.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(cluster_processes(temp)) >= 2:
            return
        time.sleep(0.05)
    raise AssertionError("the stand-in's child never started")


def test_stops_only_the_named_cluster_and_its_descendants(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    a, b = _start(ours), _start(theirs)
    try:
        _wait_for_child(ours)
        _wait_for_child(theirs)
        mine, other = cluster_processes(ours), cluster_processes(theirs)
        assert a.pid in mine and len(mine) == 2 and not mine & other
        stopped = stop_cluster(ours, grace_s=5)
        assert stopped == mine
        a.wait(timeout=5)
        assert not any(alive(p) for p in mine)
        assert all(alive(p) for p in other), "the other cluster was stopped too"
    finally:
        stop_cluster(ours, grace_s=1)
        stop_cluster(theirs, grace_s=1)
        for p in (a, b):
            p.kill()
            p.wait()


def test_a_temp_dir_that_is_a_prefix_of_another_is_matched_as_a_path_only(tmp_path):
    # "/x/ray" must not stop "/x/ray2": the key is matched up to a separator.
    a, b = _start(tmp_path / "ray"), _start(tmp_path / "ray2")
    try:
        _wait_for_child(tmp_path / "ray2")
        assert b.pid not in cluster_processes(tmp_path / "ray")
    finally:
        for t in ("ray", "ray2"):
            stop_cluster(tmp_path / t, grace_s=1)
        for p in (a, b):
            p.kill()
            p.wait()


def test_the_session_cluster_leaves_no_process_once_stopped(ray_cluster, tmp_path):
    # A second real cluster, started as conftest starts the session's, stopped the same way: nothing
    # of it is left (the client server included), and the session's cluster is untouched.
    import socket
    from pathlib import Path

    ports = []
    for _ in range(4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    port, dash, agent, client = ports
    # Short: the session's socket paths must fit a unix socket's 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="ray2-"))
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=1", f"--object-store-memory={100 * 1024**2}", "--include-dashboard=false",
                    f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
                    "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, env=ray_cluster["env"], capture_output=True, timeout=120, text=True)
    session = cluster_processes(tmp_path / "none", ":" + ray_cluster["address"].rsplit(":", 1)[1])
    assert session
    try:
        pids = stop_cluster(temp, f":{port}")
        assert len(pids) >= 4                      # gcs_server, raylet, monitors, client server, agents
        assert not cluster_processes(temp, f":{port}")
        assert all(alive(p) for p in session), "the session's cluster was stopped too"
    finally:
        stop_cluster(temp, f":{port}", grace_s=1)
        shutil.rmtree(temp, ignore_errors=True)
