"""Plots people would rather see than read; each returns the PNG path it wrote (or the figure).

matplotlib is imported by the first plot, not with this module: a command that only reads
numbers (``mtlsweep compare`` without a report) never pays for it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, layout: Optional[str] = None, **kw):
    """(figure, axes) like pyplot.subplots, without pyplot: no global state and no GUI backend,
    so plots render anywhere (a Tune trial's thread, a cluster node, CI) and need no closing."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout=layout)
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


def cluster_order(mat: np.ndarray) -> np.ndarray:
    """An order of the rows of ``mat`` that puts rows with similar profiles next to each other: the
    leaves of average-linkage clustering (Euclidean, optimal leaf order; NaN counts as 0)."""
    n = mat.shape[0]
    if n < 3:
        return np.arange(n)
    from scipy.cluster.hierarchy import leaves_list, linkage
    z = linkage(np.nan_to_num(np.asarray(mat, dtype=np.float64), nan=0.0), method="average", metric="euclidean",
                optimal_ordering=True)
    return leaves_list(z)


# A tall heatmap: inches per row, and the cap on the figure's height (one row per task).
ROW_IN, MAX_HEIGHT_IN = 0.11, 20.0
# Row labels smaller than this many points are thinned (every k-th row named) rather than shrunk further.
MIN_LABEL_PT = 5.5


def symmetric_limit(mat: np.ndarray, q: float = 98.0) -> float:
    """A colour range ±limit shared by every cell of ``mat``: the q-th percentile of |value| (one
    outlier does not wash out the rest; the colour bar's arrows mark what lies beyond)."""
    vals = np.abs(mat[np.isfinite(mat)])
    lim = float(np.percentile(vals, q)) if vals.size else 0.0
    return lim if lim > 0 else 0.01


def row_heatmaps(panels: Sequence[tuple[str, np.ndarray]], rows: Sequence[str], cols: Sequence[str],
                 row_label: str, col_label: str, title: str = ""):
    """Side-by-side heatmaps sharing their rows (one panel per (colour-bar label, matrix rows x
    cols)), diverging colours centred at 0 with a symmetric range per panel, missing cells grey.
    The height grows with the rows up to MAX_HEIGHT_IN; row labels shrink, then thin. Returns the
    figure."""
    n = len(rows)
    height = min(MAX_HEIGHT_IN, max(3.5, ROW_IN * n + 2.5))
    width = 2.2 + len(panels) * (0.55 * len(cols) + 1.4)
    fig, axes = subplots(1, len(panels), figsize=(width, height), layout="constrained", sharey=True,
                         squeeze=False)
    row_pt = (height - 2.5) * 72 / max(n, 1)            # the points one row gets
    step = 1 if row_pt >= MIN_LABEL_PT else math.ceil(MIN_LABEL_PT / row_pt)
    for ax, (label, mat) in zip(axes[0], panels):
        lim = symmetric_limit(mat)
        im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                       interpolation="nearest")
        ax.set_facecolor("0.85")                          # masked (missing) cells
        ax.set_xticks(range(len(cols)), cols, fontsize=7)
        ax.tick_params(top=True, labeltop=True)        # named at both ends of a tall figure
        for tick in ax.xaxis.get_major_ticks():         # slanted away from the cells, above and below
            tick.label1.set(rotation=35, ha="right", va="top", rotation_mode="anchor")
            tick.label2.set(rotation=35, ha="left", va="bottom", rotation_mode="anchor")
        ax.xaxis.set_label_position("top")
        ax.set_xlabel(col_label)
        # A colour bar at the top of the panel's side: a tall figure's reader sees it first.
        fig.colorbar(im, ax=ax, label=label, extend="both", shrink=min(1.0, 4.0 / height), anchor=(0.0, 1.0),
                     panchor=(1.0, 1.0), aspect=15)
    first = axes[0][0]
    first.set_yticks(range(0, n, step), [rows[i] for i in range(0, n, step)],
                     fontsize=max(MIN_LABEL_PT, min(7.0, 0.8 * row_pt)))
    first.set_ylabel(row_label + (f" (one in {step} named)" if step > 1 else ""))
    if title:
        fig.suptitle(title)
    return fig
