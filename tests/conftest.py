import os
import tempfile

import pytest


def pytest_configure(config):
    # FASTA indexes and other caches go to a throwaway directory, never the user's ~/.cache.
    os.environ["MTLSWEEP_CACHE"] = tempfile.mkdtemp(prefix="mtlsweep-cache-")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` on a free loopback port for the whole session (~10 s start)."""
    from mtlsweep.mlflow_server import server

    project_dir = tmp_path_factory.mktemp("mlflow_server")
    info = server.start(project_dir)
    yield info
    server.stop(project_dir)


@pytest.fixture
def killable_server(tmp_path):
    """A real MLflow server of this test alone, so that the test may SIGKILL and restart it."""
    from mtlsweep.mlflow_server import server

    d = tmp_path / "killable_server"
    info = server.start(d)
    yield d, info
    server.stop(d)


def write_sweep_files(d, store_path, space: dict, experiment: str, epochs: int, steps: int) -> None:
    """base.yaml (a tiny model on ``store_path``, tracking on) and space.yaml in ``d``."""
    import yaml
    base = {"data": {"path": str(store_path), "batch_size": 64},
            "model": {"arch": TINY_ARCH, "sharing": {"shared_layers": 5}},
            "optim": {"name": "adam", "lr": 0.01},
            "train": {"epochs": epochs, "patience": epochs, "steps_per_epoch": steps, "num_threads": 1,
                      "out_dir": str(d / "runs")},
            "tracking": {"enabled": True, "experiment": experiment}}
    (d / "base.yaml").write_text(yaml.safe_dump(base))
    (d / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))


def make_signal_store(n=3000, length=60, n_tasks=3, seed=0, unknown=0.1):
    """A store where task t is positive when its k-mer occurs: learnable in seconds, no JASPAR."""
    import numpy as np

    from mtlsweep.data.store import SplitArrays, Store

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(n, length), dtype=np.uint8)
    motifs = [np.array(m, dtype=np.uint8) for m in ([0, 1, 2, 3, 0, 1], [3, 3, 2, 2, 1, 1], [2, 0, 2, 0, 3, 1],
                                                    [1, 3, 1, 3, 0, 0])][:n_tasks]
    labels = np.zeros((n, n_tasks), dtype=np.int8)
    for t, m in enumerate(motifs):
        hit = rng.random(n) < 0.3
        pos = rng.integers(0, length - len(m), size=n)
        for i in np.flatnonzero(hit):
            codes[i, pos[i]:pos[i] + len(m)] = m
        labels[:, t] = hit
    labels[rng.random(labels.shape) < unknown] = -1
    cut1, cut2 = int(n * 0.7), int(n * 0.85)
    splits = {"train": SplitArrays(codes[:cut1], labels[:cut1]),
              "valid": SplitArrays(codes[cut1:cut2], labels[cut1:cut2]),
              "test": SplitArrays(codes[cut2:], labels[cut2:])}
    return Store.from_arrays([f"task{t}" for t in range(n_tasks)], splits)


@pytest.fixture(scope="session")
def signal_store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("signal") / "store.h5"
    make_signal_store().save(path)
    return path


TINY_ARCH = {"conv_channels": [8, 8, 8], "conv_widths": [7, 5, 3], "pool": [2, 2, 2], "dense": [16, 16],
             "dropout": 0.1}


@pytest.fixture
def tiny_config(signal_store_path, tmp_path):
    """A tiny run config on the signal store; tests override what they exercise."""
    from mtlsweep.config.run import RunConfig

    def make(**over):
        base = {"data.path": str(signal_store_path), "data.batch_size": 32,
                **{f"model.arch.{k}": v for k, v in TINY_ARCH.items()},
                "optim.name": "adam", "optim.lr": 0.01, "train.epochs": 3, "train.patience": 3,
                "train.out_dir": str(tmp_path / "runs"), "train.num_threads": 1}
        base.update(over)
        return RunConfig().with_overrides(base)
    return make


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real Ray head on loopback for the whole session (`ray start --head`), with the
    dashboard so the Jobs API can be tested; drivers in tests connect to it by address."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ray_processes import stop_cluster

    bin_dir = Path(sys.executable).parent
    port, dash, agent, client = _free_port(), _free_port(), _free_port(), _free_port()
    # The venv first on PATH, as the cluster YAMLs do: job entrypoints say plain `python`.
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    temp = tmp_path_factory.mktemp("ray")
    cmd = [str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--num-cpus=2", f"--object-store-memory={300 * 1024**2}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
           # Not Ray's fixed 52365: an embedded cluster elsewhere on the machine holds it, and the
           # Jobs API goes through this agent.
           f"--dashboard-agent-listen-port={agent}",
           # Nor the client server's fixed 10001, for the same reason.
           f"--ray-client-server-port={client}",
           f"--temp-dir={temp}"]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    old = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        # Only this cluster: `ray stop --force` would end every Ray of the user on the machine.
        stop_cluster(temp, f":{port}")     # the client server names only the GCS address
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models: one torch thread is faster, and steadier when other jobs share the CPU."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(cfg, run_dir, *, callbacks=(), store=None, resume=False, progress=False, baseline=None):
    """A run request executed the one way every caller does (training.run.execute)."""
    from pathlib import Path

    from mtlsweep.training.request import RunRequest
    from mtlsweep.training.run import execute
    return execute(RunRequest(cfg, Path(run_dir), data=store, resume=resume, callbacks=tuple(callbacks),
                              progress=progress, baseline=baseline))
