"""Motif scores + gradient-boosted trees on the default synthetic benchmark, measured in one run.

    python bench/motif_gbm.py [--dir DIR] [--features max ...] [--backend auto] [--n-jobs N]
                              [--max-motifs N] [--speed-only]

1. Feature speed: samples/s of the motif scan for the JASPAR CORE vertebrates set (~1000
   motifs) at L = 600, for the default method (table gather, 4 width groups) and for the plain
   conv1d (one conv over all motifs padded to the widest, and one conv per width group), with
   `max` alone and with `max, count, bins`.
2. The family end to end on data.synthetic's default spec (16 tasks, 20000 x 600; written to
   DIR once): feature time (no cache), fit time and validation/test AUROC, with
   models.motif_gbm.fit_gbm, for the CNN families' table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from mtlsweep.config.run import GbmConfig  # noqa: E402
from mtlsweep.data.jaspar import load_motifs  # noqa: E402
from mtlsweep.data.motif_features import FeatureOptions, MotifScanner, compute_features, select_motifs  # noqa: E402
from mtlsweep.data.store import Store  # noqa: E402
from mtlsweep.data.synthetic import SynthSpec, write_synthetic  # noqa: E402
from mtlsweep.models.motif_gbm import fit_gbm  # noqa: E402
from mtlsweep.training.reference_runner import evaluate  # noqa: E402


def feature_speed(codes: np.ndarray, motifs, repeats: int = 2) -> list[tuple[str, str, float]]:
    rows = []
    variants = [("gather, 4 width groups (default)", MotifScanner(motifs)),
                ("conv1d, 4 width groups", MotifScanner(motifs, method="conv")),
                ("conv1d, one conv (all padded)", MotifScanner(motifs, method="conv", max_groups=1))]
    for feats in (("max",), ("max", "count", "bins")):
        opts = FeatureOptions(feats)
        for name, sc in variants:
            compute_features(codes[:16], sc, opts)  # warm-up: thread pools, allocator
            best = 0.0
            for _ in range(repeats):  # best of: the machine may be shared
                t0 = time.perf_counter()
                compute_features(codes, sc, opts)
                best = max(best, len(codes) / (time.perf_counter() - t0))
            rows.append((name, "+".join(feats), best))
    return rows


def speed(store, motifs, n: int) -> None:
    codes = store.split("train").codes[:n]
    print(f"\nfeature speed, {len(motifs)} motifs, L={store.seq_len}, {len(codes)} sequences "
          f"(best of 2; torch threads {__import__('torch').get_num_threads()}):")
    rows = feature_speed(codes, motifs)
    ref = {f: s for name, f, s in rows if name.startswith("conv1d, one conv")}
    for name, feats, sps in rows:
        print(f"  {name:36s} {feats:14s} {sps:8.1f} samples/s   x{sps / ref[feats]:.2f} vs one conv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="workspace/bench/motif_gbm", help="where the default synthetic data is written")
    p.add_argument("--features", nargs="+", default=["max"])
    p.add_argument("--backend", default="sklearn", choices=["auto", "xgboost", "sklearn"])
    p.add_argument("--n-jobs", type=int, default=None)
    p.add_argument("--max-motifs", type=int, default=None)
    p.add_argument("--n-speed", type=int, default=256, help="sequences for the feature-speed probe")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: none, so features are timed)")
    p.add_argument("--speed-only", action="store_true")
    p.add_argument("--no-speed", action="store_true", help="skip the feature-speed probe")
    args = p.parse_args()

    d = Path(args.dir)
    spec = SynthSpec()
    if not (d / "store.h5").is_file():
        t0 = time.perf_counter()
        write_synthetic(spec, d)
        print(f"wrote the default synthetic benchmark to {d} in {time.perf_counter() - t0:.1f} s")
    store = Store.load(d / "store.h5")
    motifs = select_motifs(load_motifs(), args.max_motifs)
    print(f"data: {store}; motifs: {len(motifs)} JASPAR CORE vertebrates, widths "
          f"{min(m.width for m in motifs)}-{max(m.width for m in motifs)}")

    if not args.no_speed:
        if args.n_jobs:
            torch.set_num_threads(args.n_jobs)
        speed(store, motifs, args.n_speed)
    if args.speed_only:
        return

    gbm = GbmConfig(features=args.features, backend=args.backend, n_jobs=args.n_jobs, cache_dir=args.cache_dir,
                    max_motifs=args.max_motifs)
    backend = gbm.backend
    t0 = time.perf_counter()
    fit = fit_gbm(gbm, store, seed=0, motifs=motifs, progress=False)
    total = time.perf_counter() - t0
    feat_s = sum(v for k, v in fit.timings.items() if k.startswith("features_"))
    n_all = sum(store.n(s) for s in store.splits)
    metrics = evaluate(fit, store)
    val, test = metrics["valid"].summary(), metrics["test"].summary()
    print(f"\nmotif_gbm on the default synthetic benchmark ({store.n_tasks} tasks, {store.n('train')} train, "
          f"L={store.seq_len}), features {args.features}, backend {backend}, "
          f"{len(fit.feature_names)} features:")
    print(f"  features (all splits{', cached' if fit.features_cached else ''}) {feat_s:8.1f} s   "
          f"({n_all / feat_s:.0f} samples/s)")
    print(f"  fit ({store.n_tasks} models)          {fit.timings['fit_s']:8.1f} s   "
          f"(rounds mean {np.mean(list(fit.rounds.values())):.0f}, {fit.n_nodes} tree nodes)")
    print(f"  total                           {total:8.1f} s")
    print(f"  val  AUROC mean {val['auroc_mean']:.4f}  median {val['auroc_median']:.4f}  AUPRC mean {val['auprc_mean']:.4f}")
    print(f"  test AUROC mean {test['auroc_mean']:.4f}  median {test['auroc_median']:.4f}  AUPRC mean {test['auprc_mean']:.4f}")
    print("  per-task val AUROC: " + " ".join(f"{a:.3f}" for a in metrics["valid"].auroc))


if __name__ == "__main__":
    main()
