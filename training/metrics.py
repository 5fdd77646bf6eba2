"""Per-task classification metrics with unknown labels, vectorized over tasks.

Labels are int8 with -1 = unknown; an unknown label takes no part in any metric. A task
with no positives or no negatives among its known labels has an undefined AUROC/AUPRC
(NaN), never 0.5: summaries skip NaNs and count them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

# What a sweep may call a run's "worst" task (--worst): a low percentile over tasks (numpy's
# linear interpolation between the tasks' AUROCs) or the minimum. At 164 tasks the minimum is
# one task's noise; the 10th percentile (p10, the default) is the 16th-17th worst task.
WORST_STATS = {"min": 0.0, "p5": 5.0, "p10": 10.0, "p25": 25.0}
DEFAULT_WORST = "p10"


def worst_stats(values: np.ndarray, name: str) -> dict[str, float]:
    """``{name}_{stat}`` for every WORST_STATS statistic over the finite ``values`` (NaN when none is)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return {f"{name}_{k}": float(np.percentile(v, q)) if len(v) else float("nan") for k, q in WORST_STATS.items()}


@dataclass
class TaskMetrics:
    auroc: np.ndarray      # [T], NaN where undefined
    auprc: np.ndarray      # [T], NaN where undefined
    accuracy: np.ndarray   # [T] at threshold 0.5, NaN with no known labels
    loss: np.ndarray       # [T] mean BCE over known labels, NaN with no known labels
    n_pos: np.ndarray      # [T]
    n_neg: np.ndarray      # [T]

    def summary(self, prefix: str = "") -> dict[str, float]:
        def _agg(fn, a):
            return float(fn(a)) if np.isfinite(a).any() else float("nan")
        return {
            f"{prefix}auroc_mean": _agg(np.nanmean, self.auroc),
            f"{prefix}auroc_median": _agg(np.nanmedian, self.auroc),
            f"{prefix}auprc_mean": _agg(np.nanmean, self.auprc),
            f"{prefix}auprc_median": _agg(np.nanmedian, self.auprc),
            f"{prefix}accuracy_mean": _agg(np.nanmean, self.accuracy),
            f"{prefix}loss": _agg(np.nanmean, self.loss),
            f"{prefix}tasks_undefined": float(np.isnan(self.auroc).sum()),
            **worst_stats(self.auroc, f"{prefix}auroc"),
        }


def _ranking_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC (Mann-Whitney, ties at average rank) and average precision (scikit-learn's
    step-wise definition, ties as one threshold) per column, from one sort per task.

    Unknown labels are given the score +inf: they sort after every known entry, so the
    known entries' ranks are untouched, and they add neither true nor false positives."""
    labels_t = np.ascontiguousarray(labels.T)
    known = labels_t >= 0
    s = np.where(known, scores.T, np.inf)
    t, n = s.shape
    order = np.argsort(s, axis=1, kind="stable")
    s = np.take_along_axis(s, order, axis=1)
    pos = np.take_along_axis(labels_t == 1, order, axis=1)
    known = np.take_along_axis(known, order, axis=1)
    n_pos = pos.sum(1).astype(np.float64)
    n_neg = (known & ~pos).sum(1).astype(np.float64)

    # AUROC: average rank of each tie group = (first + last position) / 2.
    idx = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (t, n))
    starts = np.ones((t, n), dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones((t, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, idx, 0.0), axis=1)
    last = np.minimum.accumulate(np.where(ends, idx, np.inf)[:, ::-1], axis=1)[:, ::-1]
    rank_sum = np.where(pos, (first + last) / 2, 0.0).sum(1)

    # Average precision: walk the scores from high to low; a threshold sits at each tie
    # group's end (in descending order that is a group start in ascending order).
    pos_d, known_d, end_d = pos[:, ::-1], known[:, ::-1], starts[:, ::-1] & known[:, ::-1]
    tp = np.cumsum(pos_d, axis=1, dtype=np.float64)
    fp = np.cumsum(known_d & ~pos_d, axis=1, dtype=np.float64)
    tp_at_end = np.where(end_d, tp, 0.0)
    prev_tp = np.zeros_like(tp)
    prev_tp[:, 1:] = np.maximum.accumulate(tp_at_end, axis=1)[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(end_d, (tp - prev_tp) * tp / (tp + fp), 0.0).sum(1)
        roc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        ap = gain / n_pos
    undefined = (n_pos == 0) | (n_neg == 0)
    roc[undefined] = np.nan
    ap[undefined] = np.nan
    return roc, ap


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return _ranking_metrics(np.asarray(scores), np.asarray(labels))[0]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return _ranking_metrics(np.asarray(scores), np.asarray(labels))[1]


def task_metrics(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> TaskMetrics:
    """probs: [N, T] sigmoid outputs; labels: [N, T] int8 with -1 unknown."""
    probs = np.asarray(probs, dtype=np.float32)
    labels = np.asarray(labels)
    known = labels >= 0
    y = (labels == 1)
    n_known = known.sum(0)
    p = np.clip(probs.astype(np.float64), eps, 1 - eps)
    bce = -np.log(np.where(y, p, 1.0 - p))
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(known, bce, 0.0).sum(0) / n_known
        acc = (known & ((probs >= 0.5) == y)).sum(0) / n_known
    roc, ap = _ranking_metrics(probs, labels)
    return TaskMetrics(
        auroc=roc, auprc=ap,
        accuracy=acc.astype(np.float64), loss=loss.astype(np.float64),
        n_pos=y.sum(0), n_neg=(labels == 0).sum(0))


def baseline_array(baseline: Optional[Mapping[str, float]], tasks: Sequence[str]) -> Optional[np.ndarray]:
    """The baseline's AUROC of each task, in the run's task order (NaN where it has none)."""
    if not baseline:
        return None
    return np.array([baseline.get(t, np.nan) for t in tasks], dtype=np.float64)


def delta_metrics(auroc: np.ndarray, baseline: np.ndarray, tasks: Sequence[str], prefix: str = "val") -> dict[str, float]:
    """A run against its baseline, task by task: the deltas, their mean (the sweep's
    ``val/delta_auroc_mean`` objective), median and low percentiles (WORST_STATS), how many tasks
    improved of those compared, and the worst shortfall: max over tasks of baseline − run AUROC
    (> 0: some task lost that much; a sweep's --constraint-delta δ holds when it is <= δ)."""
    delta = np.asarray(auroc, dtype=np.float64) - baseline
    ok = np.isfinite(delta)
    out = {f"{prefix}/delta_auroc/{t}": float(d) for t, d in zip(tasks, delta) if np.isfinite(d)}
    out[f"{prefix}/delta_auroc_mean"] = float(delta[ok].mean()) if ok.any() else float("nan")
    out[f"{prefix}/delta_auroc_median"] = float(np.median(delta[ok])) if ok.any() else float("nan")
    out[f"{prefix}/tasks_improved"] = float((delta[ok] > 0).sum())
    out[f"{prefix}/tasks_compared"] = float(ok.sum())
    out.update(worst_stats(delta, f"{prefix}/delta_auroc"))
    out[f"{prefix}/worst_shortfall"] = -out[f"{prefix}/delta_auroc_min"]
    return out
