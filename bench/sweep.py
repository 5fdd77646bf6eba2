"""Sweep overheads on this machine, measured in one run against in-run baselines.

    python bench/sweep.py            (from any directory; needs the bench extra: pip install -e '.[bench]')

1. Per-trial overhead (trial wall time - its training time) with and without reuse_actors,
   on an embedded Ray with 2 CPUs. Target: <= 1 s per trial with reuse_actors.
2. Extra memory (USS) of 2 concurrent trials reading the dataset store from Ray's object
   store (zero-copy) against 2 trials each holding a private copy. Target: shared <= 1.2x
   one copy.
"""
from __future__ import annotations

import sys
from pathlib import Path as _Path

# bench/data.py would shadow the data package: put the repository first on the path.
sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import yaml
from mlflow.tracking import MlflowClient

from mtlsweep.data.store import SplitArrays, Store
from mtlsweep.search.driver import SweepArgs, run_sweep

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def make_store(n: int, length: int, tasks: int, path: Path):
    rng = np.random.default_rng(0)

    def split(k):
        return SplitArrays(rng.integers(0, 4, (k, length), dtype=np.uint8),
                           (rng.random((k, tasks)) < 0.1).astype(np.int8))
    store = Store.from_arrays([f"t{i}" for i in range(tasks)],
                              {"train": split(n), "valid": split(n // 10), "test": split(n // 10)})
    store.save(path)
    return store


def trial_overhead(tmp: Path, reuse: bool, n_trials: int) -> tuple[float, float]:
    base = {"data": {"path": str(tmp / "small.h5"), "batch_size": 64},
            "model": {"arch": {"conv_channels": [8, 8, 8], "conv_widths": [7, 5, 3], "pool": [2, 2, 2],
                               "dense": [16, 16]}, "sharing": {"shared_layers": 5}},
            "optim": {"name": "adam"}, "train": {"epochs": 2, "steps_per_epoch": 5, "num_threads": 1,
                                                 "out_dir": str(tmp / "runs")},     # nothing in the caller's cwd
            "tracking": {"experiment": "bench"}}
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp / "space.yaml").write_text(yaml.safe_dump({"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}))
    name = f"reuse{int(reuse)}"
    args = SweepArgs(base=str(tmp / "base.yaml"), space=str(tmp / "space.yaml"), num_samples=n_trials,
                     max_concurrent=2, scheduler="none", name=name, workspace=str(tmp / "ws"), verbose=0,
                     reuse_actors=reuse)
    t0 = time.perf_counter()
    res = run_sweep(args, log=lambda *_: None)
    wall = time.perf_counter() - t0
    client = MlflowClient(f"sqlite:///{tmp / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench")
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{res.parent_run_id}'")
    train_s = [sum(m.value for m in client.get_metric_history(k.info.run_id, "cost/epoch_s")) for k in kids]
    run_s = [(k.info.end_time - k.info.start_time) / 1000 for k in kids]
    return wall, float(np.mean(run_s) - np.mean(train_s)), wall * 2 / n_trials - float(np.mean(train_s))


def shared_memory(store) -> tuple[float, float, float]:
    @ray.remote(num_cpus=1)
    class Reader:
        def hold(self, s, copy: bool):
            import psutil
            self.s = {k: (np.array(v.codes, copy=True) if copy else v.codes) for k, v in s.splits.items()}
            total = sum(int(a[::97].sum()) for a in self.s.values())   # touch the pages
            total += sum(int(a.sum()) for a in self.s.values())
            return psutil.Process().memory_full_info().uss / 2**20

        def baseline(self):
            import psutil
            return psutil.Process().memory_full_info().uss / 2**20

    one_copy = sum(v.codes.nbytes for v in store.splits.values()) / 2**20
    ref = ray.put(store)
    out = {}
    for copy in (False, True):
        readers = [Reader.remote() for _ in range(2)]
        before = ray.get([r.baseline.remote() for r in readers])
        after = ray.get([r.hold.remote(ref, copy) for r in readers])
        out[copy] = sum(a - b for a, b in zip(after, before))
        for r in readers:
            ray.kill(r)
    return one_copy, out[False], out[True]


def main() -> None:
    try:
        import psutil  # noqa: F401 - the memory measurement reads USS through it
    except ImportError:
        sys.exit("bench/sweep.py: needs psutil: pip install -e '.[bench]'")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_store(2000, 100, 4, tmp / "small.h5")
        big = make_store(400_000, 600, 8, tmp / "big.h5")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=1200 * 2**20, log_to_driver=False)
        one, shared, private = shared_memory(big)
        print(f"dataset codes: {one:.0f} MiB (one copy)")
        print(f"2 trials, shared store (zero-copy): +{shared:.0f} MiB private memory = {shared / one:.2f}x one copy")
        print(f"2 trials, private copies:           +{private:.0f} MiB private memory = {private / one:.2f}x one copy")
        print("target: shared <= 1.2x one copy")
        for reuse in (False, True):
            wall, over_run, over_wall = trial_overhead(tmp, reuse, 8)
            print(f"reuse_actors={reuse!s:5}: sweep wall {wall:.1f}s; per-trial overhead "
                  f"(MLflow run time - training) {over_run:.2f}s, (wall x concurrency / trials - training) "
                  f"{over_wall:.2f}s")
        print("target: <= 1 s per trial with reuse_actors")
        ray.shutdown()


if __name__ == "__main__":
    main()
