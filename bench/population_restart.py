"""What a synchronous population's barriers cost, with and without its members' workers kept.

    python bench/population_restart.py            (from any directory)

A PBT population of 4 members on an embedded Ray with 2 CPUs, 8 epochs, perturbed every 2:
every member is paused at each of the 3 barriers and restarted from its checkpoint. Measured
twice in one run, on the same data and seed: with Ray's own search algorithm for the members
(BasicVariantGenerator: Tune ends a paused member's worker once every member has been drawn) and
with the platform's (search/population.py's PopulationGenerator: the worker is kept for the next
member). The same 4 trials as a plain sweep, with no barrier, are the floor.

Prints each sweep's wall time, the worker processes the cluster started for it (one core-worker
log each) and the ratios; round 0 trains the shared baseline and is not compared. Target: a
population costs what the plain sweep does (1.0x), with no more workers than CPUs.
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

import ray
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.search.basic_variant import BasicVariantGenerator

from bench.sweep import make_store
from mtlsweep.search import experiment
from mtlsweep.search.driver import SweepArgs, run_sweep
from mtlsweep.search.population import PopulationGenerator

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
MEMBERS, EPOCHS, INTERVAL = 4, 8, 2


def population(tmp: Path, name: str, scheduler: str = "pbt") -> tuple[float, int, int]:
    """(wall s, worker processes started, epochs logged to MLflow) of one sweep of the 4 members."""
    base = {"data": {"path": str(tmp / "small.h5"), "batch_size": 64},
            "model": {"arch": {"conv_channels": [8, 8, 8], "conv_widths": [7, 5, 3], "pool": [2, 2, 2],
                               "dense": [16, 16]}, "sharing": {"shared_layers": 5}},
            "optim": {"name": "adam"},
            "train": {"epochs": EPOCHS, "patience": EPOCHS, "steps_per_epoch": 5, "num_threads": 1,
                      "out_dir": str(tmp / "runs")},
            "tracking": {"experiment": "bench"}}
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp / "space.yaml").write_text(yaml.safe_dump({"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}))
    args = SweepArgs(base=str(tmp / "base.yaml"), space=str(tmp / "space.yaml"), num_samples=MEMBERS, name=name,
                     scheduler=scheduler, perturbation_interval=INTERVAL, workspace=str(tmp / "ws"), verbose=0, seed=0,
                     baseline="fixed")
    before = _workers()
    t0 = time.perf_counter()
    run_sweep(args, log=lambda *_: None)
    wall = time.perf_counter() - t0
    # Counted in MLflow: Tune's own result.json of a member on a reused worker misses some epochs.
    client = MlflowClient(f"sqlite:///{tmp / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench")
    runs = client.search_runs([exp.experiment_id], f"tags.role = 'trial' and tags.sweep = '{name}'")
    epochs = sum(len(client.get_metric_history(r.info.run_id, "val/auroc_mean")) for r in runs)
    return wall, len(_workers() - before), epochs


def _workers() -> set[str]:
    """The worker processes the embedded cluster has started so far: one core-worker log each."""
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return {p.name for p in logs.glob("python-core-worker-*.log")}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_store(2000, 100, 4, tmp / "small.h5")
        # Two CPUs whatever the machine: fewer slots than members, so every barrier pauses them all.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        restarts = MEMBERS * (EPOCHS // INTERVAL - 1)
        print(f"PBT, {MEMBERS} members on 2 CPUs, {EPOCHS} epochs, a barrier every {INTERVAL}: {restarts} restarts")
        got = {}
        # Round 0 trains the sweeps' shared baseline and warms the caches; round 1 is measured.
        for rnd in (0, 1):
            for label, searcher in (("ray", BasicVariantGenerator), ("kept", PopulationGenerator)):
                experiment.PopulationGenerator = searcher      # the sweep builds its members' search from this name
                got[label] = population(tmp, f"{label}-{rnd}")
                wall, workers, epochs = got[label]
                print(f"round {rnd}, {searcher.__name__:22}: wall {wall:6.1f} s, worker processes started "
                      f"{workers:2d}, epochs logged {epochs}")
        wall, workers, epochs = got["plain"] = population(tmp, "plain", scheduler="none")
        print(f"the same 4 trials, no population (Optuna, max 2 at a time): wall {wall:6.1f} s, worker processes "
              f"started {workers:2d}, epochs logged {epochs}")
        (w0, n0, _), (w1, n1, _), (w2, _, _) = got.values()
        print(f"kept workers: wall {w1 / w0:.2f}x, workers started {n1 / n0:.2f}x of Ray's; "
              f"population / plain sweep: {w1 / w2:.2f}x (Ray's: {w0 / w2:.2f}x)")
        ray.shutdown()


if __name__ == "__main__":
    main()
