"""Feature time of the reference families per 10,000 sequences, and what a fit of each costs.

    python bench/reference_features.py [--length 120 600] [--n 10000] [--threads 1]

For each sequence length: seconds to turn 10,000 random sequences into the features of
kmer_linear (canonical k-mers of both strands, k = 4, 5, 6) and motif_gbm (max score of the 1,019
JASPAR CORE vertebrate motifs on both strands; with count and bins), best of 2, on the same
threads; the ratio is against motif_gbm's default (max), measured in the same run. Then each
family fitted on the 16-task related benchmark of the ground-truth study (data seed 0: 2,800
train sequences of 120 bp): features, fit and validation AUROC.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from mtlsweep.config.run import GbmConfig, KmerConfig  # noqa: E402
from mtlsweep.data.kmers import both_strand_counts  # noqa: E402
from mtlsweep.data.motif_features import FeatureOptions, MotifScanner, compute_features  # noqa: E402
from mtlsweep.data.store import open_dataset
from mtlsweep.models.kmer_linear import fit_kmer_linear
from mtlsweep.models.motif_gbm import (
    fit_gbm,
    load_motif_set,  # noqa: E402
)
from mtlsweep.studies.ground_truth import STUDY, ensure_data, load_design
from mtlsweep.training.metrics import task_metrics


def best_of(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):      # best of: the machine may be shared
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def feature_times(codes: np.ndarray, scanner: MotifScanner) -> list[tuple[str, float]]:
    rows = [(f"kmer_linear k={k} ({4 ** k // 2 + (4 ** (k // 2) // 2 if k % 2 == 0 else 0)} features)",
             best_of(lambda k=k: both_strand_counts(codes, k))) for k in (4, 5, 6)]
    rows.append(("kmer_linear k=4,5,6 (its default grid)", sum(t for _, t in rows)))
    compute_features(codes[:16], scanner, FeatureOptions(("max",)))       # warm-up: thread pools, allocator
    for feats in (("max",), ("max", "count", "bins")):
        rows.append((f"motif_gbm {'+'.join(feats)} ({scanner.n_motifs} motifs)",
                     best_of(lambda f=feats: compute_features(codes, scanner, FeatureOptions(f)))))
    return rows


def fit_once(threads: int) -> None:
    design = load_design(STUDY / "regimes.yaml", STUDY / "variants.yaml")
    ws = Path(tempfile.gettempdir()) / "mtlsweep-bench-references"
    store = open_dataset(ensure_data(ws, "related", design.regimes["related"], 0))
    print(f"\none fit on the related benchmark (data seed 0: {store.n('train')} train sequences, {store.seq_len} bp, "
          f"{store.n_tasks} tasks):")
    for name, fit in (("kmer_linear", lambda: fit_kmer_linear(KmerConfig(n_jobs=threads), store)),
                      ("motif_gbm", lambda: fit_gbm(GbmConfig(n_jobs=threads, cache_dir=None), store))):
        t0 = time.perf_counter()
        f = fit()
        total = time.perf_counter() - t0
        feats = sum(v for k, v in f.timings.items() if k.startswith("features_"))
        auroc = np.nanmean(task_metrics(f.probs["valid"], store.split("valid").labels).auroc)
        print(f"  {name:12s} features {feats:6.1f} s   fit {f.timings['fit_s']:6.1f} s   total {total:6.1f} s   "
              f"valid AUROC {auroc:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, nargs="+", default=[120, 600])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-fit", action="store_true", help="features only")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    scanner = MotifScanner(load_motif_set(GbmConfig()))
    rng = np.random.default_rng(0)
    for length in a.length:
        codes = rng.integers(0, 4, size=(a.n, length), dtype=np.uint8)
        rows = feature_times(codes, scanner)
        ref = dict(rows)[f"motif_gbm max ({scanner.n_motifs} motifs)"]
        print(f"\nfeatures of {a.n:,} sequences of {length} bp ({a.threads} thread(s), best of 2):")
        for name, t in rows:
            print(f"  {name:48s} {t * 10_000 / a.n:8.2f} s per 10,000   x{t / ref:.3f} vs motif_gbm max")
    if not a.no_fit:
        fit_once(a.threads)


if __name__ == "__main__":
    main()
