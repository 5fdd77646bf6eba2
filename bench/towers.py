"""Tower backends against T separately trained single-task models, on this machine.

For T in {4, 16, 64} small towers (conv 32/32/32, widths 19/11/7, dense 64/64, L = 200,
batch 64), the time of one training step (forward, backward, RMSprop step, max-norm) of:

- the k = 0 towers module with the ``loop`` backend and with the ``batched`` backend,
- T single-task models trained one after another (the baseline; target: towers <= 1.0x),
- the hard model (k = L) at the same T.

Timings are interleaved across the variants and the best of several rounds is kept, so
that load from other processes hits every variant alike. Prints the ratios to the T singles;
``backend: auto`` is set from these figures (models.net.auto_backend).

    .venv/bin/python bench/towers.py [--rounds 5] [--tasks 4 16 64] [--threads N]
                                     [--channels 32 --dense 64 --seq-len 200 --batch 64]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtlsweep.models import build_model  # noqa: E402
from mtlsweep.config.run import ArchConfig, ModelConfig, SharingConfig  # noqa: E402

IN_CHANNELS = 4
SIZE = dict(channels=32, dense=64, seq_len=200, batch=64)


def config(k: int, backend: str) -> ModelConfig:
    c, d = SIZE["channels"], SIZE["dense"]
    arch = ArchConfig(conv_channels=[c, c, c], conv_widths=[19, 11, 7], pool=[3, 4, 4], dense=[d, d],
                      dropout=0.3)
    return ModelConfig(arch=arch, sharing=SharingConfig(shared_layers=k), backend=backend)


class Trainee:
    """One or more models trained by the same step function."""

    def __init__(self, models):
        self.models = models
        self.opts = [torch.optim.RMSprop(m.param_groups(0.002), lr=0.002, alpha=0.98) for m in models]

    def step(self, x, y):
        col = 0
        for model, opt in zip(self.models, self.opts):
            t = model.n_tasks
            logits = model(x)
            loss = sum(F.binary_cross_entropy_with_logits(logits[:, j], y[:, col + j]) for j in range(t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.apply_max_norm(7.0)
            col += t


def build(kind: str, n_tasks: int) -> Trainee:
    names = [f"task{i}" for i in range(n_tasks)]
    if kind == "singles":
        return Trainee([build_model(config(0, "loop"), 1, IN_CHANNELS, SIZE["seq_len"], [n], seed=0)
                        for n in names])
    k, backend = {"loop": (0, "loop"), "batched": (0, "batched"), "hard": (5, "loop")}[kind]
    return Trainee([build_model(config(k, backend), n_tasks, IN_CHANNELS, SIZE["seq_len"], names, seed=0)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per round and variant")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    for key, value in SIZE.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    args = ap.parse_args(argv)
    SIZE.update({key: getattr(args, key) for key in SIZE})
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, seq_len = SIZE["batch"], SIZE["seq_len"]
    torch.manual_seed(0)
    kinds = ["singles", "loop", "batched", "hard"]
    c, d = SIZE["channels"], SIZE["dense"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; towers conv {c}/{c}/{c} "
          f"dense {d}/{d}, L={seq_len}, batch {batch}; best of {args.rounds} rounds x {args.steps} steps")
    print("wall ms per step (and /singles); cpu = process CPU time /singles, less sensitive to other load")
    print(f"{'T':>4} {'singles':>9} {'loop':>16} {'batched':>16} {'hard':>16}   "
          f"{'cpu loop':>9} {'cpu batched':>12} {'cpu hard':>9}")
    started = time.perf_counter()
    for n_tasks in args.tasks:
        x = F.one_hot(torch.randint(0, 4, (batch, seq_len)), 4).float().transpose(1, 2).contiguous()
        y = torch.randint(0, 2, (batch, n_tasks)).float()
        trainees = {kind: build(kind, n_tasks) for kind in kinds}
        for trainee in trainees.values():  # warm-up: allocator, kernel selection
            trainee.step(x, y)
        wall = {kind: [] for kind in kinds}
        cpu = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind, trainee in trainees.items():
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    trainee.step(x, y)
                wall[kind].append((time.perf_counter() - t0) / args.steps)
                cpu[kind].append((time.process_time() - c0) / args.steps)
        w = {kind: min(v) * 1e3 for kind, v in wall.items()}
        c = {kind: min(v) for kind, v in cpu.items()}
        cells = " ".join(f"{w[k]:>8.1f} ({w[k] / w['singles']:>5.2f})" for k in ("loop", "batched", "hard"))
        print(f"{n_tasks:>4} {w['singles']:>9.1f} {cells}   {c['loop'] / c['singles']:>9.2f} "
              f"{c['batched'] / c['singles']:>12.2f} {c['hard'] / c['singles']:>9.3f}", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
