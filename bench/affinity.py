"""Cost of task-affinity probing (train.affinity_every) and of FAMO, against plain steps
measured in the same run.

    python bench/affinity.py [--tasks 16,164] [--every 10] [--max-tasks 16] [--steps 60] [--repeats 3]

The small architecture (conv 64/64/64, dense 128/128, L = 200, batch 128), every layer shared.
Printed per T: the step time without probing, the step time with a probe every N steps
(amortized over the N steps), their ratio, the time of one probe, and FAMO's step time
against equal weighting (target <= 1.2x: FAMO adds no backward pass).
"""
from __future__ import annotations

import sys
from pathlib import Path as _Path

# bench/data.py would shadow the data package: put the repository first on the path.
sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from mtlsweep.config.run import RunConfig  # noqa: E402
from mtlsweep.models import build_model  # noqa: E402
from mtlsweep.schedules.factory import build_weighting  # noqa: E402
from mtlsweep.training.loss import masked_bce_per_task  # noqa: E402
from mtlsweep.training.task_affinity import TaskAffinity  # noqa: E402

SMALL = {"model.arch.conv_channels": [64, 64, 64], "model.arch.conv_widths": [15, 7, 5],
         "model.arch.dense": [128, 128], "model.sharing.shared_layers": 5}
L, BATCH = 200, 128


def step_times(n_tasks: int, steps: int, every: int, max_tasks: int, weighting: str,
               probe: bool) -> tuple[float, float]:
    """(seconds per step amortized, seconds per probe)."""
    cfg = RunConfig().with_overrides({**SMALL, "schedule.weighting": weighting})
    names = [f"t{i}" for i in range(n_tasks)]
    torch.manual_seed(0)
    model = build_model(cfg.model, n_tasks, 4, L, names, seed=0)
    w = build_weighting(cfg.schedule, n_tasks)
    opt = torch.optim.Adam(list(model.parameters()) + list(w.parameters()), lr=0.002)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (BATCH, L)), 4).float().transpose(1, 2)
    y = (torch.rand(BATCH, n_tasks) < 0.1).float()
    mask = torch.rand(BATCH, n_tasks) > 0.05
    ones = torch.ones(n_tasks)
    aff = TaskAffinity(names, every, max_tasks, 0.002) if probe else None
    probe_s = 0.0

    def step(i):
        nonlocal probe_s
        if aff is not None and aff.due(i):
            t = time.perf_counter()
            aff.probe(model, x, y, mask)
            probe_s += time.perf_counter() - t
        opt.zero_grad()
        per_task, known = masked_bce_per_task(model(x), y, mask)
        w.backward(per_task, ones, model, known)
        opt.step()
        w.after_step()
    step(1)                                       # warm-up (not a probe step)
    probe_s = 0.0
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    total = time.perf_counter() - t0
    n_probes = len([i for i in range(steps) if i % every == 0]) if probe else 0
    return total / steps, probe_s / max(n_probes, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="16,164")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--max-tasks", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"small architecture, every layer shared, batch {BATCH}, L={L}, 1 thread; probe every {a.every} "
          f"steps, {a.max_tasks} tasks per probe")
    for T in [int(t) for t in a.tasks.split(",")]:
        # Interleaved repeats, the fastest of each kept: a 2-core machine's steps vary by ~20%.
        runs = {"plain": [], "probed": [], "famo": []}
        for _ in range(a.repeats):
            runs["plain"].append(step_times(T, a.steps, a.every, a.max_tasks, "equal", probe=False))
            runs["probed"].append(step_times(T, a.steps, a.every, a.max_tasks, "equal", probe=True))
            runs["famo"].append(step_times(T, a.steps, a.every, a.max_tasks, "famo", probe=False))
        plain = min(r[0] for r in runs["plain"])
        probed, per_probe = min(runs["probed"])
        famo = min(r[0] for r in runs["famo"])
        print(f"T={T:4d}: step {plain:.3f} s; with probing {probed:.3f} s/step = {probed / plain:.2f}x "
              f"(one probe {per_probe:.2f} s = {per_probe / plain:.1f} steps); "
              f"FAMO {famo:.3f} s/step = {famo / plain:.2f}x equal")


if __name__ == "__main__":
    main()
