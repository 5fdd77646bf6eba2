"""Plots people would rather see than read; each returns the PNG path it wrote."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kw):
    """(figure, axes) like pyplot.subplots, without pyplot: no global state and no GUI backend,
    so plots render anywhere (a Tune trial's thread, a cluster node, CI) and need no closing."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def learning_curves(history: Sequence[dict], path: Path, title: str = "") -> Path:
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = subplots(1, 2, figsize=(9, 3.4))
    for key, label in (("train/loss", "train"), ("val/loss", "valid")):
        a.plot(epochs, [h.get(key, math.nan) for h in history], marker="o", label=label)
    a.set_xlabel("epoch"); a.set_ylabel("BCE loss"); a.legend()
    b.plot(epochs, [h.get("val/auroc_mean", math.nan) for h in history], marker="o", label="mean")
    b.plot(epochs, [h.get("val/auroc_median", math.nan) for h in history], marker=".", label="median")
    b.set_xlabel("epoch"); b.set_ylabel("validation AUROC"); b.legend()
    fig.suptitle(title or "learning curves")
    return save_figure(fig, path)


def auroc_vs_baseline(tasks: Sequence[str], auroc: np.ndarray, baseline: np.ndarray, path: Path,
                      title: str = "") -> Path:
    """Per-task AUROC of a run (y) against the single-task baseline (x), with the diagonal."""
    fig, ax = subplots(figsize=(4.6, 4.4))
    ok = np.isfinite(auroc) & np.isfinite(baseline)
    better = ok & (auroc > baseline)
    ax.scatter(baseline[ok & ~better], auroc[ok & ~better], s=16, c="tab:red", label="worse than baseline")
    ax.scatter(baseline[better], auroc[better], s=16, c="tab:green", label="better than baseline")
    if ok.any():
        lo = float(min(baseline[ok].min(), auroc[ok].min())) - 0.02
        hi = float(max(baseline[ok].max(), auroc[ok].max())) + 0.02
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlim(lo, hi); ax.set_ylim(lo, hi)
    if len(tasks) <= 24:
        for i in np.flatnonzero(ok):
            ax.annotate(tasks[i], (baseline[i], auroc[i]), fontsize=6, alpha=0.7)
    ax.set_xlabel("single-task baseline AUROC"); ax.set_ylabel("this run's AUROC")
    ax.set_title(title or f"{int(better.sum())}/{int(ok.sum())} tasks improved")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def schedule_weights(history: Sequence[dict], tasks: Sequence[str], path: Path) -> Path:
    """Mean loss weight per task per epoch, as the schedule applied it."""
    mat = np.array([[h.get(f"schedule/weight/{t}", math.nan) for t in tasks] for h in history]).T
    fig, ax = subplots(figsize=(max(4, 0.35 * len(history) + 2), max(2.5, 0.18 * len(tasks) + 1)))
    im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest",
                   extent=(0.5, len(history) + 0.5, len(tasks) - 0.5, -0.5))
    if len(tasks) <= 40:
        ax.set_yticks(range(len(tasks)), tasks, fontsize=6)
    ax.set_xlabel("epoch"); ax.set_ylabel("task")
    fig.colorbar(im, ax=ax, label="mean weight")
    return save_figure(fig, path)


def heatmap(mat: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: Path, title: str,
            cmap: str = "magma", vmin: Optional[float] = None, vmax: Optional[float] = None,
            xlabel: str = "", ylabel: str = "") -> Path:
    fig, ax = subplots(figsize=(max(4, 0.3 * len(cols) + 2.5), max(3, 0.25 * len(rows) + 1.5)))
    im = ax.imshow(mat, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if len(cols) <= 40:
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    if len(rows) <= 40:
        ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_xlabel(xlabel); ax.set_ylabel(ylabel); ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, path)
