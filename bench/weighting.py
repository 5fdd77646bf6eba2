"""Cost of a training step with each task weighting (per-task gradients for PCGrad, GradNorm and
the TorchJD Jacobian arms; FAMO's one backward pass), against equal weighting measured in the same run.

    python bench/weighting.py [--arch small|basset] [--tasks 164] [--steps 3] [--chunk 32]
                              [--arms equal,upgrad,...] [--max-step-s 60] [--threads 1]

An arm whose first (untimed) step takes longer than --max-step-s is reported as skipped.
"""
from __future__ import annotations

import sys
from pathlib import Path as _Path

# bench/data.py would shadow the data package: put the repository first on the path.
sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from mtlsweep.config.registry import WEIGHTINGS  # noqa: E402
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
    ap.add_argument("--arms", default=",".join(WEIGHTINGS.names),
                    help="comma-separated weightings (default: every registered one); equal is always timed")
    ap.add_argument("--max-step-s", type=float, default=60.0, help="skip an arm whose first step takes longer")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    length = 600 if a.arch == "basset" else 200
    over = {} if a.arch == "basset" else dict(SMALL)
    names = [f"t{i}" for i in range(a.tasks)]
    # Equal is timed first and last: the two tell how much the machine's load moved the numbers.
    arms = ["equal"] + [w for w in a.arms.split(",") if w and w != "equal"] + ["equal"]
    times: dict[str, float] = {}
    equal: list[float] = []
    skipped: dict[str, str] = {}
    for w in arms:
        cfg = RunConfig().with_overrides({**over, "schedule.weighting": w, "schedule.per_task_grad_chunk": a.chunk})
        model = build_model(cfg.model, a.tasks, 4, length, names, seed=0)
        weighting = build_weighting(cfg.schedule, a.tasks, seed=0, task_names=names)
        opt = torch.optim.RMSprop(list(model.parameters()) + list(weighting.parameters()), lr=0.002)
        torch.manual_seed(0)
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
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step()
            first = time.perf_counter() - t0
            if first > a.max_step_s:
                skipped[w] = f"first step {first:.1f} s > --max-step-s {a.max_step_s:g}"
                continue
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
        t = (time.perf_counter() - t0) / a.steps
        if w == "equal":
            equal.append(t)
        else:
            times[w] = t
        print(f"  {w:14s} {t:7.3f} s/step", file=sys.stderr, flush=True)
    n_shared = sum(p.numel() for p in model.shared_parameters())
    print(f"arch {a.arch}, T={a.tasks}, batch 128, L={length}, {n_shared:,} shared parameters, chunk {a.chunk}, "
          f"{a.threads} thread(s), {a.steps} timed steps")
    ref = sum(equal) / len(equal)
    print(f"{'equal':14s} {ref:7.3f} s/step  (first {equal[0]:.3f}, last {equal[-1]:.3f}: ratios are to their mean)")
    for w, t in times.items():
        print(f"{w:14s} {t:7.3f} s/step  {t / ref:7.2f}x equal")
    for w, why in skipped.items():
        print(f"{w:14s} skipped: {why}")


if __name__ == "__main__":
    main()
