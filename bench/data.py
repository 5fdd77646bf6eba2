"""Store vs Basset HDF5: random-batch throughput and RAM, measured in one run.

    python bench/data.py [--n 200000] [--len 600] [--tasks 164] [--dir DIR]

Writes a synthetic Basset file (N x 4 x 1 x L float16, random codes with ~1% N, ~8% positives
and some unknown labels), converts it to a store in a subprocess (to measure the conversion's
own peak RSS), then draws random batches of 128:
  - store: batches() + to_device(..., "cpu"), i.e. including one-hot expansion;
  - Basset: h5py fancy indexing with sorted indices (what a user would do), then to torch.
Targets: store >= 100k samples/s; store RAM <= 1/8 of the float16 one-hot.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtlsweep.data.basset_hdf5 import write_basset  # noqa: E402
from mtlsweep.data.store import Store, batches, to_device  # noqa: E402

BATCH = 128


def synth(n: int, seq_len: int, n_tasks: int, seed: int = 0, block: int = 16384):
    rng = np.random.default_rng(seed)
    codes = np.empty((n, seq_len), dtype=np.uint8)
    labels = np.empty((n, n_tasks), dtype=np.int8)
    for a in range(0, n, block):  # in blocks: the float temporaries would dwarf the codes
        b = min(a + block, n)
        c = rng.integers(0, 4, (b - a, seq_len), dtype=np.uint8)
        c[rng.random((b - a, seq_len), dtype=np.float32) < 0.01] = 4
        lab = (rng.random((b - a, n_tasks), dtype=np.float32) < 0.08).astype(np.int8)
        lab[rng.random((b - a, n_tasks), dtype=np.float32) < 0.02] = -1
        codes[a:b], labels[a:b] = c, lab
    return codes, labels


_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from mtlsweep.data.store import basset_to_store
def hwm():  # VmHWM resets at exec, unlike ru_maxrss which Linux carries over from the parent
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
before = hwm()
t = time.perf_counter()
basset_to_store({src!r}, {dst!r})
print(time.perf_counter() - t, before, hwm())
"""


def convert_in_subprocess(src: str, dst: str) -> tuple[float, float, float]:
    """(seconds, peak RSS MiB after imports, peak RSS MiB of the whole conversion)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=root, src=src, dst=dst)],
                         check=True, capture_output=True, text=True)
    secs, before, after = out.stdout.split()
    return float(secs), float(before), float(after)


def bench_store(split, n_batches: int, rounds: int, seed: int = 0) -> list[float]:
    """samples/s of `rounds` runs of n_batches (the machine may be shared: report the spread)."""
    rng = np.random.default_rng(seed)
    for idx in list(batches(split, BATCH, shuffle=True, rng=rng))[:20]:  # warm-up (LUT cache)
        to_device(split, idx, "cpu")
    out = []
    for _ in range(rounds):
        idxs = list(batches(split, BATCH, shuffle=True, rng=rng, drop_last=True))[:n_batches]
        t = time.perf_counter()
        for idx in idxs:
            x, y, mask = to_device(split, idx, "cpu")
        out.append(len(idxs) * BATCH / (time.perf_counter() - t))
    return out


def bench_h5py(path: str, n: int, n_batches: int, rounds: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    out = []
    with h5py.File(path, "r") as f:
        xin, yout = f["train_in"], f["train_out"]
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(n_batches):
                idx = np.sort(rng.choice(n, BATCH, replace=False))
                # converted with numpy, as to_device does on the CPU, so that torch's thread
                # hand-offs on a busy machine do not penalise this side
                x = torch.from_numpy(xin[idx][:, :, 0, :].astype(np.float32))
                lab = yout[idx]
                y, mask = torch.from_numpy(np.maximum(lab, 0).astype(np.float32)), torch.from_numpy(lab >= 0)
            out.append(n_batches * BATCH / (time.perf_counter() - t))
    return out


def _spread(v: list[float]) -> str:
    return f"{np.median(v):12,.0f} samples/s (median of {len(v)}; min {min(v):,.0f}, max {max(v):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="sequences in total (90%% train)")
    ap.add_argument("--len", type=int, default=600)
    ap.add_argument("--tasks", type=int, default=164)
    ap.add_argument("--store-batches", type=int, default=500, help="batches per timing round")
    ap.add_argument("--h5-batches", type=int, default=100, help="batches per timing round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="working folder (default: a temp folder, removed)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    work = args.dir or tempfile.mkdtemp(prefix="mtlsweep-bench-")
    os.makedirs(work, exist_ok=True)
    src, dst = os.path.join(work, "basset.h5"), os.path.join(work, "store.h5")
    try:
        n_train = int(args.n * 0.9)
        n_valid = (args.n - n_train) // 2
        codes, labels = synth(args.n, args.len, args.tasks)
        cut = [0, n_train, n_train + n_valid, args.n]
        splits = {s: (codes[a:b], labels[a:b]) for s, a, b in zip(("train", "valid", "test"), cut, cut[1:])}
        t = time.perf_counter()
        write_basset(src, [f"cell{i:03d}" for i in range(args.tasks)], splits, overwrite=True)
        t_write = time.perf_counter() - t
        del codes, labels, splits
        size_gb = os.path.getsize(src) / 2**30
        print(f"Basset file: {args.n:,} x {args.len} bp x {args.tasks} tasks, {size_gb:.2f} GiB on disk, "
              f"written in {t_write:.1f} s")

        if os.path.exists(dst):
            os.remove(dst)
        t_conv, rss0, rss = convert_in_subprocess(src, dst)
        print(f"convert:     {t_conv:.1f} s ({args.n / t_conv:,.0f} seq/s); converter peak RSS "
              f"{rss:,.0f} MiB, of which {rss0:,.0f} MiB before converting (imports); input "
              f"{size_gb * 1024:,.0f} MiB, store file {os.path.getsize(dst) / 2**20:,.0f} MiB")

        t = time.perf_counter()
        store = Store.load(dst)
        print(f"load store:  {time.perf_counter() - t:.2f} s")
        train = store.splits["train"]

        sps_store = bench_store(train, args.store_batches, args.rounds)
        sps_h5 = bench_h5py(src, n_train, args.h5_batches, args.rounds)
        print(f"\nrandom batches of {BATCH} (train split, {n_train:,} rows), torch threads "
              f"{torch.get_num_threads()}:")
        print(f"  store + to_device(cpu, one-hot):  {_spread(sps_store)}   (target >= 100,000)")
        print(f"  Basset HDF5 via h5py, sorted idx: {_spread(sps_h5)}")
        print(f"  ratio store / h5py (medians): {np.median(sps_store) / np.median(sps_h5):,.1f}x")

        n_all = sum(sp.n for sp in store.splits.values())
        codes_b = sum(sp.codes.nbytes for sp in store.splits.values())
        labels_b = sum(sp.labels.nbytes for sp in store.splits.values())
        onehot_b = n_all * 4 * args.len * np.dtype(np.float16).itemsize
        print(f"\nRAM for all {n_all:,} sequences:")
        print(f"  store codes {codes_b / 2**20:,.0f} MiB + labels {labels_b / 2**20:,.0f} MiB = "
              f"{(codes_b + labels_b) / 2**20:,.0f} MiB")
        print(f"  float16 one-hot {onehot_b / 2**20:,.0f} MiB (+ the same int8 labels {labels_b / 2**20:,.0f} MiB)")
        print(f"  sequences: codes / one-hot                   = 1/{onehot_b / codes_b:.2f}   (target <= 1/8)")
        print(f"  codes+labels / one-hot                       = 1/{onehot_b / (codes_b + labels_b):.2f}")
        print(f"  codes+labels / (one-hot+labels)              = 1/{(onehot_b + labels_b) / (codes_b + labels_b):.2f}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
