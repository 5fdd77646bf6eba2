"""Cost of a training step with each task weighting at T = 164 (per-task gradients for
PCGrad and GradNorm; FAMO's one backward pass), against equal weighting measured in the same run.

    python bench/weighting.py [--arch small|basset] [--steps 3] [--chunk 32]
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

SMALL = {"model.arch.conv_channels": [64, 64, 64], "model.arch.conv_widths": [15, 7, 5],
         "model.arch.dense": [128, 128]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["small", "basset"], default="small")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=164)
    a = ap.parse_args()
    length = 600 if a.arch == "basset" else 200
    over = {} if a.arch == "basset" else dict(SMALL)
    times = {}
    for w in ("equal", "uncertainty", "famo", "gradnorm", "pcgrad"):
        cfg = RunConfig().with_overrides({**over, "schedule.weighting": w, "schedule.per_task_grad_chunk": a.chunk})
        model = build_model(cfg.model, a.tasks, 4, length, [f"t{i}" for i in range(a.tasks)], seed=0)
        weighting = build_weighting(cfg.schedule, a.tasks)
        opt = torch.optim.RMSprop(list(model.parameters()) + list(weighting.parameters()), lr=0.002)
        x = torch.nn.functional.one_hot(torch.randint(0, 4, (128, length)), 4).float().transpose(1, 2)
        y = (torch.rand(128, a.tasks) < 0.1).float()
        mask = torch.ones_like(y, dtype=torch.bool)
        ones = torch.ones(a.tasks)

        def step():
            opt.zero_grad()
            per_task, known = masked_bce_per_task(model(x), y, mask)
            weighting.backward(per_task, ones, model, known)
            opt.step()
            weighting.after_step()
        step()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        times[w] = (time.perf_counter() - t0) / a.steps
    n_shared = sum(p.numel() for p in model.shared_parameters())
    print(f"arch {a.arch}, T={a.tasks}, batch 128, L={length}, {n_shared:,} shared parameters, chunk {a.chunk}")
    for w, t in times.items():
        print(f"{w:12s} {t:7.3f} s/step  {t / times['equal']:6.2f}x equal")


if __name__ == "__main__":
    main()
