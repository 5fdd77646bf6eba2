"""The k-mer reference family: k-mer counts of both strands + one logistic regression per task.

A model that knows no motif and shares nothing: per task an L2-penalised logistic regression
(scikit-learn, lbfgs) on the shares of the canonical k-mers among the windows of both strands,
standardised with train statistics. The k-mer length and the penalty are tuned on validation,
over ``kmer.k`` x ``kmer.C``: jointly for all tasks (``kmer.select: joint``, as a CNN arm's
learning rate), or per task. Unknown labels are left out of each task's fit and scores.
training/reference_runner.py turns a fit into a run like a CNN's; ``KmerLinearModel.load``
predicts from codes again.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mtlsweep.config.run import KmerConfig
from mtlsweep.data.errors import DataError
from mtlsweep.data.kmers import both_strand_counts, canonical_columns
from mtlsweep.models.threads import limited_threads

MODEL_DIR = "kmer_linear"
MANIFEST = "manifest.json"


@dataclass
class Standardised:
    """Features of one k on every split, scaled by the train split's mean and sd."""
    k: int
    X: dict[str, np.ndarray]
    mean: np.ndarray
    sd: np.ndarray


def features(store, k: int, splits) -> Standardised:
    raw = {s: both_strand_counts(store.split(s).codes, k) for s in splits}
    mean = raw["train"].mean(axis=0)
    sd = raw["train"].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0).astype(np.float32)
    return Standardised(k, {s: (x - mean) / sd for s, x in raw.items()}, mean, sd)


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    known = y >= 0
    y, p = y[known], p[known]
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else np.nan


@dataclass
class TaskFit:
    """One task's logistic regression on the k-mers of one k."""
    k: int
    C: float
    coef: np.ndarray          # [F]
    intercept: float
    n_iter: int
    converged: bool

    def margin(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef + self.intercept


def fit_task(X: np.ndarray, y: np.ndarray, k: int, C: float, max_iter: int, seed: int) -> TaskFit:
    """scikit-learn's L2 logistic regression (lbfgs) on the rows with a known label."""
    known = y >= 0
    lr = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # reported by the run's certificate instead
        lr.fit(X[known], y[known])
    n_iter = int(np.max(lr.n_iter_))
    return TaskFit(k, float(C), lr.coef_.ravel().astype(np.float32), float(lr.intercept_[0]), n_iter,
                   n_iter < max_iter)


@dataclass
class KmerFit:
    """Everything one fit produced; training.reference_runner turns it into a RunResult."""
    task_names: list[str]
    fits: dict[int, TaskFit]                # task -> its chosen fit
    scalers: dict[int, Standardised]        # k -> the train statistics (features dropped)
    skipped: list[int]
    probs: dict[str, np.ndarray]            # split -> [N, T] (0.5 in skipped columns)
    timings: dict[str, float]               # features_s, fit_s
    grid_val: dict[tuple[int, float], float]   # (k, C) -> mean validation AUROC over tasks
    kcfg: KmerConfig = field(default_factory=KmerConfig)

    @property
    def n_params(self) -> int:
        return int(sum(f.coef.size + 1 for f in self.fits.values()))

    @property
    def flops_per_sample(self) -> int:
        return int(sum(2 * f.coef.size for f in self.fits.values()))

    @property
    def stopped(self) -> dict[int, bool]:
        return {t: f.converged for t, f in self.fits.items()}

    def tuned(self) -> dict[str, dict]:
        """What the fit tuned on validation: per dimension the values tried and each task's choice."""
        return {"kmer.k": {"values": list(self.kcfg.k), "chosen": [f.k for f in self.fits.values()]},
                "kmer.C": {"values": list(self.kcfg.C), "chosen": [f.C for f in self.fits.values()]}}

    def metrics(self) -> dict[str, float]:
        ks = [f.k for f in self.fits.values()]
        cs = [f.C for f in self.fits.values()]
        return {"kmer/n_features_mean": float(np.mean([f.coef.size for f in self.fits.values()])),
                "kmer/k_mean": float(np.mean(ks)), "kmer/C_median": float(np.median(cs)),
                "kmer/tasks_skipped": float(len(self.skipped))}

    def info(self) -> dict:
        return {"select": self.kcfg.select, "grid_val_auroc": {f"k={k},C={c:g}": v for (k, c), v in
                                                               self.grid_val.items()}}

    def convergence_terms(self) -> tuple[str, str]:
        return "lbfgs converged", "raise kmer.max_iter"

    def save(self, run_dir: Path) -> Path:
        return save_models(self, run_dir)


def _trainable(labels: np.ndarray) -> np.ndarray:
    return ((labels == 1).sum(0) > 0) & ((labels == 0).sum(0) > 0)


def fit_kmer_linear(kcfg: KmerConfig, store, *, seed: int = 0, data_path: str = "store",
                    progress: bool = False) -> KmerFit:
    for split in ("train", "valid"):
        if split not in store.splits or store.n(split) == 0:
            raise DataError(f"{data_path}: the {split} split is empty; training needs train and valid")
    too_long = [k for k in kcfg.k if k > store.seq_len]
    if too_long:
        raise DataError(f"kmer.k: {too_long[0]} is longer than the sequences ({store.seq_len} bp) of {data_path}")
    splits = [s for s in ("train", "valid", "test") if s in store.splits and store.n(s) > 0]
    Y = {s: store.split(s).labels for s in splits}
    active = _trainable(Y["train"])
    if not active.any():
        raise DataError(f"{data_path}: no task has both positives and negatives among its known train "
                        "labels; nothing to fit")
    tasks = [int(t) for t in np.flatnonzero(active)]
    timings = {"features_s": 0.0, "fit_s": 0.0}
    by_setting: dict[tuple[int, float], dict[int, TaskFit]] = {}
    val_auroc: dict[tuple[int, float], dict[int, float]] = {}
    scalers: dict[int, Standardised] = {}
    with limited_threads(kcfg.n_jobs):
        for k in kcfg.k:
            t0 = time.perf_counter()
            feats = features(store, k, splits)
            timings["features_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for t in tasks:
                for C in kcfg.C:
                    f = by_setting.setdefault((k, C), {})[t] = fit_task(feats.X["train"], Y["train"][:, t], k, C,
                                                                         kcfg.max_iter, seed)
                    val_auroc.setdefault((k, C), {})[t] = _auroc(Y["valid"][:, t], f.margin(feats.X["valid"]))
            timings["fit_s"] += time.perf_counter() - t0
            scalers[k] = Standardised(k, {}, feats.mean, feats.sd)
            if progress:
                print(f"kmer_linear: k={k} fitted for {len(tasks)} tasks over C in {sorted(kcfg.C)}", flush=True)
    grid_val = {s: float(np.nanmean(list(v.values()))) if np.isfinite(list(v.values())).any() else np.nan
                for s, v in val_auroc.items()}
    if kcfg.select == "joint":
        best = max(grid_val, key=lambda s: (grid_val[s] if np.isfinite(grid_val[s]) else -np.inf))
        fits = {t: by_setting[best][t] for t in tasks}
    else:
        fits = {}
        for t in tasks:
            score = {s: val_auroc[s][t] for s in by_setting}
            fits[t] = by_setting[max(score, key=lambda s: score[s] if np.isfinite(score[s]) else -np.inf)][t]
    kept = {k: scalers[k] for k in {f.k for f in fits.values()}}
    probs = predict(fits, kept, {s: store.split(s).codes for s in splits}, store.n_tasks)
    return KmerFit(list(store.task_names), fits, kept, [t for t in range(store.n_tasks) if not active[t]], probs,
                   timings, grid_val, kcfg)


def predict(fits: dict[int, TaskFit], scalers: dict[int, Standardised], codes: dict[str, np.ndarray],
            n_tasks: int) -> dict[str, np.ndarray]:
    """split -> [N, T] probabilities (0.5 where a task has no model)."""
    out = {}
    for s, c in codes.items():
        X = {k: (both_strand_counts(c, k) - sc.mean) / sc.sd for k, sc in scalers.items()}
        p = np.full((c.shape[0], n_tasks), 0.5, dtype=np.float32)
        for t, f in fits.items():
            p[:, t] = 1.0 / (1.0 + np.exp(-f.margin(X[f.k])))
        out[s] = p
    return out


def save_models(fit: KmerFit, run_dir: Path) -> Path:
    """run_dir/kmer_linear/: manifest.json and weights.npz (per task its k, C, coefficients)."""
    d = Path(run_dir) / MODEL_DIR
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for t, f in fit.fits.items():
        arrays[f"coef_{t}"] = f.coef
    for k, sc in fit.scalers.items():
        arrays[f"mean_{k}"], arrays[f"sd_{k}"] = sc.mean, sc.sd
    tmp = d / f".weights.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, d / "weights.npz")
    manifest = {"task_names": fit.task_names, "skipped_tasks": [fit.task_names[t] for t in fit.skipped],
                "tasks": {str(t): {"k": f.k, "C": f.C, "intercept": f.intercept, "n_iter": f.n_iter,
                                   "converged": f.converged} for t, f in fit.fits.items()},
                "canonical_kmers": {str(k): list(canonical_columns(k)[1]) for k in fit.scalers},
                "kmer": fit.kcfg.model_dump(mode="json")}
    tmp = d / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, d / MANIFEST)
    return d


class KmerLinearModel:
    """A saved run's models: predict_proba(codes [N, L]) -> [N, T] (NaN for skipped tasks)."""

    def __init__(self, manifest: dict, fits: dict[int, TaskFit], scalers: dict[int, Standardised]):
        self.manifest, self.fits, self.scalers = manifest, fits, scalers
        self.task_names: list[str] = manifest["task_names"]

    @classmethod
    def load(cls, run_dir) -> "KmerLinearModel":
        d = Path(run_dir) / MODEL_DIR
        if not (d / MANIFEST).is_file():
            raise DataError(f"{d / MANIFEST}: no such file; not a kmer_linear run directory")
        manifest = json.loads((d / MANIFEST).read_text())
        with np.load(d / "weights.npz") as z:
            fits = {int(t): TaskFit(v["k"], v["C"], z[f"coef_{t}"], v["intercept"], v["n_iter"], v["converged"])
                    for t, v in manifest["tasks"].items()}
            scalers = {int(k): Standardised(int(k), {}, z[f"mean_{k}"], z[f"sd_{k}"]) for k in
                       {f.k for f in fits.values()}}
        return cls(manifest, fits, scalers)

    def predict_proba(self, codes: np.ndarray) -> np.ndarray:
        p = predict(self.fits, self.scalers, {"x": np.asarray(codes)}, len(self.task_names))["x"]
        p[:, [i for i in range(len(self.task_names)) if i not in self.fits]] = np.nan
        return p
