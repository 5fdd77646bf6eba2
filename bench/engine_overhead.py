"""Full Basset (T = 164, L = 600, batch 128, RMSprop + max-norm 7) trained through
training/ against a minimal hand-written loop over the same model and batches.

    python bench/engine_overhead.py [--steps 12] [--threads 2]

Prints samples/s of both and the engine's overhead; target: overhead <= 5%.
"""
from __future__ import annotations

import sys
from pathlib import Path as _Path

# bench/data.py would shadow the data package: put the repository first on the path.
sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtlsweep.data.store import SplitArrays, Store, batches, to_device
from mtlsweep.models import build_model
from mtlsweep.config.run import RunConfig
from mtlsweep.training.engine import Trainer
from mtlsweep.training.loss import masked_bce_per_task


def make_store(n_train: int, n_valid: int, tasks: int = 164, length: int = 600) -> Store:
    rng = np.random.default_rng(0)

    def split(n):
        return SplitArrays(rng.integers(0, 4, (n, length), dtype=np.uint8),
                           (rng.random((n, tasks)) < 0.08).astype(np.int8))
    return Store.from_arrays([f"ct{i:03d}" for i in range(tasks)], {"train": split(n_train), "valid": split(n_valid)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    store = make_store(128 * (a.steps + 1), 256)
    cfg = RunConfig().with_overrides({"data.path": "unused", "train.steps_per_epoch": a.steps,
                                      "train.num_threads": a.threads})   # Basset defaults otherwise

    # Minimal loop: the same model, optimizer, loss, max-norm and batch order.
    model = build_model(cfg.model, 164, 4, 600, store.task_names, seed=0)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.002, alpha=0.98)
    model.train()
    split = store.splits["train"]
    it = list(batches(split, 128, shuffle=True, rng=np.random.default_rng([0, 1]), drop_last=True))[:a.steps]
    x, y, m = to_device(split, it[0], "cpu")     # warm-up step, not timed
    opt.zero_grad(); masked_bce_per_task(model(x), y, m)[0].sum().backward(); opt.step()
    t0 = time.perf_counter()
    for idx in it:
        x, y, m = to_device(split, idx, "cpu")
        opt.zero_grad()
        masked_bce_per_task(model(x), y, m)[0].sum().backward()
        opt.step()
        model.apply_max_norm(7.0)
    hand = a.steps * 128 / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), store=store, progress=False)
        tr.train_epoch(0)                             # warm-up epoch, not timed
        t0 = time.perf_counter()
        out = tr.train_epoch(1)
        eng = a.steps * 128 / (time.perf_counter() - t0)
    print(f"full Basset, T=164, batch 128, {a.steps} steps, {a.threads} threads, "
          f"{model.n_params():,} parameters")
    print(f"hand loop:       {hand:8.1f} samples/s")
    print(f"training engine: {eng:8.1f} samples/s (engine's own figure {out['cost/samples_per_s']:.1f})")
    print(f"engine overhead: {100 * (hand / eng - 1):+.1f}%  (target <= 5%)")


if __name__ == "__main__":
    main()
