"""comparison.html: the comparison table and the plots that read it, from 2 tasks to Basset's 164.

What a reader sees, top to bottom: the caption (what the numbers are, which deltas the seeds do
not confirm, when too few tasks make a p-value empty), the table (scrolls sideways, first column
pinned, short headers with the column's full name on hover), then the plots: each configuration's
delta over its seeds, accuracy against cost, the learning curves of each family's best, one
scatter per configuration against its baseline on shared axes, and a clustered tasks x
configurations heatmap of the per-task deltas (AUROC, and AUPRC where runs log it), which carries
the per-task story once there are too many tasks to name on a scatter. A sweep of several
objectives first gets its Pareto front: what it is, its points, and their scatter.

Imported only when a report is written (compare.write_report): it brings matplotlib.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mtlsweep.config.tags import Role
from mtlsweep.mlflow_server.compare import (
    CURVE_METRIC,
    FAMILIES,
    ComparisonRow,
    Front,
    RunRow,
    _fmt,
    caption,
    compare_to_baseline,
    config_key,
    front_caption,
    front_cells,
    front_title,
    least_p,
    objective_value,
    p_floor_note,
)
from mtlsweep.plots import cluster_order, row_heatmaps, subplots

# Above this many tasks a scatter names no task: the heatmap carries the per-task story.
NAMED_TASKS_MAX = 40
# Tasks named on a scatter (when it names any): the most improved and the most worsened.
LABELLED_TASKS = 3
PALETTE = ("tab:gray", "tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive",
           "tab:pink", "tab:cyan")
COLORS = {fam: PALETTE[i % len(PALETTE)] for i, fam in enumerate(FAMILIES)}


@dataclass
class Figure:
    name: str           # file-like key (the image's alt text)
    png: str            # base64
    caption: str        # what the plot shows, in a sentence
    detail: str = ""    # optional HTML shown under it (a per-task table)
    wide: bool = False  # shown at its own size, on a line of its own


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def compared(rows: list[ComparisonRow]) -> list[ComparisonRow]:
    """The lines with a per-task comparison against a baseline (not the baselines themselves)."""
    return [r for r in rows if r.comparison is not None and r.role != Role.BASELINE]


def config_label(r: ComparisonRow) -> str:
    return f"{r.role}: {r.run}"


def _limits(*arrays: np.ndarray, pad: float = 0.02) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays]) if arrays else np.array([])
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return 0.0, 1.0
    return max(0.0, float(vals.min()) - pad), min(1.0, float(vals.max()) + pad)


def _sd_over(runs: list[RunRow], key: str, metric: Callable[[RunRow], dict]) -> float:
    vals = np.array([metric(r).get(key, math.nan) for r in runs], dtype=float)
    vals = vals[np.isfinite(vals)]
    return float(vals.std(ddof=1)) if len(vals) > 1 else math.nan


# ---- accuracy against cost ----------------------------------------------------------------------
def pareto(rows: list[ComparisonRow], runs: list[RunRow]):
    """Every run's best validation AUROC against its seconds per epoch, the Pareto front, and each
    repeated configuration's mean ± sd over its seeds."""
    fig, ax = subplots(figsize=(6, 4.2))
    for fam in FAMILIES:
        pts = [(r.m("cost/epoch_s"), r.m("best/val/auroc_mean")) for r in runs if r.family == fam]
        pts = [p for p in pts if all(map(math.isfinite, p))]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, label=fam, c=COLORS[fam], s=22)
    pts = sorted((r.m("cost/epoch_s"), r.m("best/val/auroc_mean")) for r in runs
                 if math.isfinite(r.m("cost/epoch_s")) and math.isfinite(r.m("best/val/auroc_mean")))
    front, best = [], -math.inf
    for x, y in pts:
        if y > best:
            front.append((x, y))
            best = y
    if front:
        ax.step(*zip(*front), where="post", c="k", lw=1, label="Pareto front")
    labelled = False
    for r in rows:
        if len(r.repeats) < 2:
            continue
        x = np.nanmean([s.m("cost/epoch_s") for s in r.repeats])
        y = np.array([s.m("best/val/auroc_mean") for s in r.repeats])
        if math.isfinite(x) and np.isfinite(y).sum() > 1:
            ax.errorbar(x, np.nanmean(y), yerr=np.nanstd(y, ddof=1), fmt="D", mfc="none", ms=8, capsize=4,
                        c=COLORS.get(r.family, "k"), label=None if labelled else "mean ± sd over seeds")
            labelled = True
    ax.set_ylim(*_limits(np.array([p[1] for p in pts], dtype=float)))
    ax.set_xlabel("epoch time (s)")
    ax.set_ylabel("best validation AUROC (mean over tasks)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_title("accuracy against cost")
    return fig


# ---- the Pareto front of a multi-objective sweep -------------------------------------------------
def front_plot(front: Front):
    """The first two objectives against each other, coloured by the third when there is one (else
    by family): the front's points ringed and joined, uncertified non-dominated runs as hollow
    diamonds, infeasible runs as crosses, the single-task baseline as a star. None with fewer than
    two objectives or no measured run."""
    objs = front.objectives.objectives
    if len(objs) < 2 or not front.points:
        return None
    fig, ax = subplots(figsize=(6.4, 4.6))
    xy = np.array([p.values[:2] for p in front.points], dtype=float)
    ok = np.array([p.feasible for p in front.points])
    if len(objs) > 2:
        c = np.array([p.values[2] for p in front.points], dtype=float)
        cmap = "viridis_r" if objs[2].mode == "min" else "viridis"     # better is always yellow
        sc = ax.scatter(xy[ok, 0], xy[ok, 1], c=c[ok], cmap=cmap, vmin=np.nanmin(c), vmax=np.nanmax(c), s=26,
                        zorder=2, label="completed run")
        fig.colorbar(sc, ax=ax, label=objs[2].label)
    else:
        for fam in FAMILIES:
            sel = ok & np.array([p.row.family == fam for p in front.points])
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], c=COLORS[fam], s=26, zorder=2, label=fam)
    if (~ok).any():
        ax.scatter(xy[~ok, 0], xy[~ok, 1], marker="x", c="0.45", s=30, zorder=2, label="infeasible (constraint)")
    on = front.front
    if on:
        pts = sorted((p.values[0], p.values[1]) for p in on)
        ax.plot(*zip(*pts), c="k", lw=1, zorder=1)
        ax.scatter(*zip(*pts), s=110, facecolors="none", edgecolors="k", lw=1.5, zorder=3,
                   label=f"Pareto front ({len(on)})")
    if front.uncertified:
        ax.scatter([p.values[0] for p in front.uncertified], [p.values[1] for p in front.uncertified], marker="D",
                   s=70, facecolors="none", edgecolors="tab:red", zorder=3, label="not certified, not dominated")
    base = _baseline_point(front)
    if base is not None:
        ax.scatter([base[0]], [base[1]], marker="*", s=160, c="k", zorder=4, label="single-task baseline")
    ax.set_xlabel(objs[0].label)
    ax.set_ylabel(objs[1].label)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(front_title(front), fontsize=10)
    return fig


def _baseline_point(front: Front):
    """The first two objectives of the runs' baseline (a delta is 0 against itself); None when
    the runs face several baselines or one objective is a cost the baseline did not log alike."""
    bases = {id(p.row.baseline): p.row.baseline for p in front.points if p.row.baseline is not None}
    if len(bases) != 1:
        return None
    b = next(iter(bases.values()))
    vals = [0.0 if o.name.startswith("delta_") else objective_value(b, o, front.objectives.worst, None)
            for o in front.objectives.objectives[:2]]
    return vals if all(map(math.isfinite, vals)) else None


def front_table(front: Front) -> str:
    columns, cells = front_cells(front, front.front + front.uncertified + front.infeasible)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="{"t" if j < 3 else ""}">{html.escape(v)}</td>'
                                    for j, v in enumerate(row)) + "</tr>" for row in cells)
    return f'<div class="scroll table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def front_html(front: Front) -> str:
    """The front's section: what it is, its points (and the uncertified and infeasible runs beside it)."""
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in front_caption(front))
    if not front.front:
        lines += '<p class="warn">No run is on the front: none completed certified' + (
            " and feasible" if front.objectives.constraint_delta is not None else "") + ".</p>"
    return f'<h2>{html.escape(front_title(front))}</h2><div class="caption">{lines}</div>{front_table(front)}'


# ---- the seeds ----------------------------------------------------------------------------------
def seed_deltas(r: ComparisonRow) -> np.ndarray:
    """Per seed of the configuration: its mean ΔAUROC against its own baseline (NaN without one)."""
    return np.array([c.delta_mean if c is not None else math.nan for c in map(compare_to_baseline, r.repeats)])


def seed_plot(rows: list[ComparisonRow]):
    """Each repeated configuration's per-seed ΔAUROC, their mean and its 95% t-interval, and the
    shown run's own delta; None when nothing was repeated."""
    from scipy.stats import t as student_t
    shown = [r for r in compared(rows) if math.isfinite(r.delta_seed_mean)]
    if not shown:
        return None
    fig, ax = subplots(figsize=(6, 1.2 + 0.45 * len(shown)))
    for i, r in enumerate(shown):
        d = seed_deltas(r)
        d = d[np.isfinite(d)]
        c = COLORS.get(r.family, "k")
        ax.scatter(d, np.full(len(d), i), s=18, c=c, alpha=0.6, label="one seed" if i == 0 else None)
        half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        ax.errorbar(d.mean(), i, xerr=half, fmt="o", ms=4, capsize=5, c="k",
                    label="mean, 95% interval" if i == 0 else None)
        ax.scatter([r.delta_auroc_mean], [i], marker="D", s=40, facecolors="none", edgecolors=c,
                   label="the run in the table" if i == 0 else None)
    ax.axvline(0, c="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(shown)), [config_label(r) for r in shown], fontsize=8)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlabel("ΔAUROC vs single-task baseline (mean over tasks)")
    ax.set_ylabel("configuration")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(shown) < 3 else -0.15), ncol=3)
    ax.set_title("delta over seeds")
    return fig


# ---- learning curves ----------------------------------------------------------------------------
def learning_curves(rows: list[ComparisonRow]):
    """Validation AUROC (mean over tasks) by epoch of each family's best run and of the baseline,
    with the band of mean ± sd over the configuration's seeds; None without curves."""
    drawn: set = set()
    fig, ax = subplots(figsize=(6, 4.2))
    for r in rows:
        if r.source is None or not r.curves.get(r.source.run_id) or not (r.role.startswith("best ") or
                                                                        r.role == Role.BASELINE):
            continue
        key = config_key(r.source)
        if key in drawn:            # a baseline per seed: one line and the band of its seeds
            continue
        drawn.add(key)
        c = COLORS.get(r.family, "k")
        own = [h for h in r.curves[r.source.run_id] if math.isfinite(h.get(CURVE_METRIC, math.nan))]
        name = "single-task baseline" if r.role == Role.BASELINE else r.family
        ax.plot([h["epoch"] for h in own], [h[CURVE_METRIC] for h in own], c=c, marker=".", ms=4,
                ls="--" if r.role == Role.BASELINE else "-", label=f"{name} ({r.run})")
        curves = [r.curves[s.run_id] for s in r.repeats if r.curves.get(s.run_id)]
        if len(curves) > 1:
            epochs = sorted({h["epoch"] for cur in curves for h in cur})
            by = np.array([[next((h.get(CURVE_METRIC, math.nan) for h in cur if h["epoch"] == e), math.nan)
                            for e in epochs] for cur in curves])
            n = np.isfinite(by).sum(0)
            ok = n > 1
            mean = np.nanmean(np.where(ok, by, 0.0), 0)
            sd = np.nanstd(np.where(ok, by, 0.0), 0, ddof=1)
            ax.fill_between(np.array(epochs)[ok], (mean - sd)[ok], (mean + sd)[ok], color=c, alpha=0.18, lw=0,
                            label=f"± sd over {len(curves)} seeds")
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUROC (mean over tasks)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("learning curves: each family's best")
    return fig


# ---- per task -----------------------------------------------------------------------------------
def _delta(run: RunRow, base: RunRow, keys: list[str], metric: str) -> np.ndarray:
    mine = run.per_task if metric == "auroc" else run.per_task_auprc
    theirs = base.per_task if metric == "auroc" else base.per_task_auprc
    return np.array([mine.get(k, math.nan) - theirs.get(k, math.nan) for k in keys], dtype=float)


def delta_matrix(rows: list[ComparisonRow], metric: str = "auroc") -> tuple[list[str], list[str], np.ndarray]:
    """(task keys, task names, tasks x configurations matrix of run - baseline) over the compared
    lines; NaN where a task was not measured."""
    shown = compared(rows)
    keys = list(dict.fromkeys(k for r in shown for k in r.comparison.keys))
    names: dict[str, str] = {}
    for r in shown:
        names.update({k: v for k, v in r.source.task_names.items() if k in keys and k not in names})
    mat = np.column_stack([_delta(r.source, r.source.baseline, keys, metric) for r in shown]) if shown else \
        np.zeros((0, 0))
    return keys, [names.get(k, k) for k in keys], mat


def delta_heatmap(rows: list[ComparisonRow]):
    """(figure, task order) of the tasks x configurations heatmap of ΔAUROC, and of ΔAUPRC beside it
    when runs log per-task AUPRC, tasks clustered by their ΔAUROC profiles; None without a
    comparison."""
    shown = compared(rows)
    if not shown:
        return None
    keys, names, auroc = delta_matrix(rows, "auroc")
    if not keys:
        return None
    order = cluster_order(auroc)
    panels = [("ΔAUROC (configuration − single-task)", auroc[order])]
    _, _, auprc = delta_matrix(rows, "auprc")
    if np.isfinite(auprc).any():
        panels.append(("ΔAUPRC (configuration − single-task)", auprc[order]))
    fig = row_heatmaps(panels, [names[i] for i in order], [config_label(r) for r in shown], "task", "configuration",
                       f"per-task deltas, {len(keys)} tasks (clustered)")
    return fig, [keys[i] for i in order]


def task_scatters(rows: list[ComparisonRow]):
    """One panel per compared line: per-task AUROC of the run against its baseline, every panel on
    the same axes; bars: sd over the configuration's seeds; tasks named only when few. None
    without a comparison."""
    shown = compared(rows)
    if not shown:
        return None
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(3.9 * ncols, 3.7 * nrows), sharex=True, sharey=True, squeeze=False,
                         layout="constrained")
    data = []
    for r in shown:
        row, keys = r.source, r.comparison.keys
        base = np.array([row.baseline.per_task[k] for k in keys])
        run = np.array([row.per_task[k] for k in keys])
        data.append((base, run))
    lo, hi = _limits(*(a for pair in data for a in pair))
    for ax, r, (base, run) in zip(axes.flat, shown, data):
        row, keys = r.source, r.comparison.keys
        if len(r.repeats) > 1:      # how far each task moves from seed to seed, both sides
            bases = list({id(s.baseline): s.baseline for s in r.repeats if s.baseline is not None}.values())
            xerr = np.array([_sd_over(bases, k, lambda x: x.per_task) for k in keys])
            yerr = np.array([_sd_over(r.repeats, k, lambda x: x.per_task) for k in keys])
            ax.errorbar(base, run, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt="none", ecolor="0.55",
                        elinewidth=0.6, alpha=0.7, zorder=1)
        better = run > base
        ax.scatter(base[~better], run[~better], c="tab:red", s=12, zorder=2)
        ax.scatter(base[better], run[better], c="tab:green", s=12, zorder=2)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        if len(keys) <= NAMED_TASKS_MAX:
            names = [row.task_names.get(k, k) for k in keys]
            d = run - base
            order = [i for i in np.argsort(d) if np.isfinite(d[i])]
            for i in {*order[:LABELLED_TASKS], *order[-LABELLED_TASKS:]}:
                ax.annotate(names[i], (base[i], run[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        seeds = f", {len(r.repeats)} seeds" if len(r.repeats) > 1 else ""
        ax.set_title(f"{config_label(r)}\n{r.comparison.improved}/{r.comparison.compared} tasks improved{seeds}",
                     fontsize=8)
        ax.set_xlabel("single-task baseline AUROC")
        ax.set_ylabel("configuration's AUROC")
        ax.label_outer()                                    # axis names once per row and column,
        ax.tick_params(labelbottom=True, labelleft=True)    # the numbers on every panel (some sit above a gap)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    first = axes.flat[0]
    first.set_xlim(lo, hi)
    first.set_ylim(lo, hi)
    return fig


def _task_table(rows: list[ComparisonRow], keys: list[str]) -> str:
    """Per task (in the heatmap's order) each compared line's baseline AUROC and delta."""
    shown = compared(rows)
    all_keys, names, mat = delta_matrix(rows, "auroc")
    index = {k: i for i, k in enumerate(all_keys)}
    head = "<tr><th>task</th>" + "".join(f"<th>{html.escape(config_label(r))}<br>Δ (baseline)</th>"
                                         for r in shown) + "</tr>"
    body = []
    for k in keys:
        i = index[k]
        cells = "".join(f"<td>{_fmt(float(mat[i, j]))} ({_fmt(r.source.baseline.per_task.get(k, math.nan))})</td>"
                        for j, r in enumerate(shown))
        body.append(f"<tr><td class=t>{html.escape(names[i])}</td>{cells}</tr>")
    return ("<details><summary>per-task ΔAUROC (baseline AUROC), in the heatmap's order</summary>"
            f"<div class=scroll><table>{head}{''.join(body)}</table></div></details>")


def figures(rows: list[ComparisonRow], runs: list[RunRow], front: "Front | None" = None) -> list[Figure]:
    out = []
    fig = front_plot(front) if front is not None else None
    if fig is not None:
        objs = front.objectives.objectives
        colour = f"colour: {objs[2].label} (the 3rd objective)" if len(objs) > 2 else "colour: family"
        out.append(Figure("front.png", _png_b64(fig),
                          f"The sweep's objectives: every completed run's {objs[0].name} against its {objs[1].name} "
                          f"({colour}). Ringed and joined: the Pareto front (certified runs that meet the "
                          "constraint and that no such run beats in every objective"
                          + (", over all objectives, so a point may look dominated in these two" if len(objs) > 2
                             else "") + "); hollow red diamonds: uncertified runs no feasible run dominates; "
                          "crosses: runs that break the constraint; star: the single-task baseline."))
    fig = seed_plot(rows)
    if fig is not None:
        out.append(Figure("seeds.png", _png_b64(fig),
                          "The delta over seeds: each repeated configuration's mean ΔAUROC against its own "
                          "single-task baseline, one dot per seed; the bar is the 95% t-interval of their mean, the "
                          "diamond the run the table shows. A delta whose interval crosses 0 is not told apart from "
                          "seed noise."))
    out.append(Figure("pareto.png", _png_b64(pareto(rows, runs)),
                      "Accuracy against cost: every run's best validation AUROC (mean over tasks) against its "
                      "seconds per epoch, coloured by family; the line is the Pareto front (no run is both faster "
                      "and better than a point on it); diamonds: a configuration's mean ± sd over its seeds."))
    fig = learning_curves(rows)
    if fig is not None:
        out.append(Figure("learning_curves.png", _png_b64(fig),
                          f"Learning curves: validation AUROC (mean over tasks, {CURVE_METRIC}) by epoch of each "
                          "family's best run and of the single-task baseline (dashed); the band is mean ± sd over "
                          "the configuration's seeds where it ran on several."))
    fig = task_scatters(rows)
    if fig is not None:
        n = max(len(r.comparison.keys) for r in compared(rows))
        named = (f"the {LABELLED_TASKS} most improved and most worsened tasks are named"
                 if n <= NAMED_TASKS_MAX else f"with {n} tasks none is named: the heatmap below shows each task")
        out.append(Figure("per_task_scatter.png", _png_b64(fig),
                          "Each configuration against its single-task baseline, one point per task (validation "
                          "AUROC at the best epoch), every panel on the same axes: above the diagonal (green) the "
                          f"task gained, below it (red) it did not; grey bars: sd over seeds where there are "
                          f"several; {named}.", wide=True))
    made = delta_heatmap(rows)
    if made is not None:
        fig, order = made
        out.append(Figure("delta_heatmap.png", _png_b64(fig),
                          "Per-task deltas: rows are tasks, clustered (average linkage on their ΔAUROC profiles) so "
                          "that tasks that gain or lose together sit together; columns are configurations; red: "
                          "better than single-task on that task, blue: worse, grey: not measured; the colour range "
                          "is symmetric, its ends the 98th percentile of |Δ| (arrows: beyond it).",
                          _task_table(rows, order), wide=True))
    return out


# ---- the table ----------------------------------------------------------------------------------
def _auroc(r: ComparisonRow) -> str:
    sd = f" ± {r.auroc_seed_sd:.4f}" if math.isfinite(r.auroc_seed_sd) else ""
    return _fmt(r.auroc_mean) + sd


def _seeds(r: ComparisonRow) -> str:
    if not math.isfinite(r.delta_seed_mean):
        return "-"
    return (f"{r.delta_seed_mean:+.4f} ± {r.delta_seed_sd:.4f} "
            f"({r.seeds}: {r.delta_seed_min:+.4f} … {r.delta_seed_max:+.4f})")


def _p(r: ComparisonRow) -> str:
    n = r.tasks_total if isinstance(r.tasks_total, int) else 0
    return _fmt(r.wilcoxon_p) + (f" (≥ {least_p(n):.3g})" if p_floor_note(n) else "")


def _better(r: ComparisonRow) -> str:
    return f"{r.tasks_improved}/{r.tasks_total}" if r.tasks_total != "" else ""


def _si(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return _fmt(v)
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.3g}{unit}"
    return f"{v:.0f}"


def _attr(name: str) -> Callable[[ComparisonRow], str]:
    return lambda r: _fmt(getattr(r, name))


# (header, full name for the tooltip: the CSV's columns it shows, what it is; cell)
HTML_COLUMNS: list[tuple[str, str, Callable[[ComparisonRow], str]]] = [
    ("run", "run: the run's name", _attr("run")),
    ("family", "family", _attr("family")),
    ("role", "role: baseline, best <family>, top", _attr("role")),
    ("trials", "trials: completed/all runs of the family", _attr("trials")),
    ("cert.", "certified: converged and every tuned value interior", _attr("certified")),
    ("AUROC", "auroc_mean ± auroc_seed_sd: mean validation AUROC over tasks at the best epoch, ± sd over the "
     "configuration's seeds", _auroc),
    ("median", "auroc_median: median validation AUROC over tasks", _attr("auroc_median")),
    ("AUPRC", "auprc_mean: mean validation AUPRC over tasks", _attr("auprc_mean")),
    ("ΔAUROC", "delta_auroc_mean: mean over tasks of this run's AUROC minus its baseline's", _attr("delta_auroc_mean")),
    ("worst", "auroc_worst: validation AUROC of the worst tasks (the sweep's --worst: the minimum or a low percentile "
     "over tasks, p10 unless said)", _attr("auroc_worst")),
    ("shortfall", "worst_shortfall: max over tasks of the baseline's AUROC minus this run's (> 0: a task lost that "
     "much)", _attr("worst_shortfall")),
    ("front", "front: on the sweep's Pareto front (yes), not dominated but not certified (uncertified), or breaking "
     "the per-task constraint (infeasible)", _attr("front")),
    ("Δ seeds", "delta_seed_mean ± delta_seed_sd (seeds: delta_seed_min … delta_seed_max): the configuration's "
     "ΔAUROC over its seeds, each against its own baseline", _seeds),
    ("p", "wilcoxon_p: Wilcoxon signed-rank p over tasks (≥ x: the least p possible with this few tasks)", _p),
    ("better", "tasks_improved/tasks_total: tasks this run improved, of those compared", _better),
    ("oracle", "oracle_auroc: the data's ceiling (true motifs and label rule)", _attr("oracle_auroc")),
    ("gap closed", "gap_closed: share of the baseline's gap to the oracle closed", _attr("gap_closed")),
    ("train−val", "train_val_gap: train minus validation AUROC at the best epoch", _attr("train_val_gap")),
    ("s/epoch", "epoch_s: seconds per epoch", _attr("epoch_s")),
    ("samples/s", "samples_per_s: training samples per second", _attr("samples_per_s")),
    ("s to target", "s_to_target: training seconds until the mean validation AUROC reached the baseline's best",
     _attr("s_to_target")),
    ("params", "n_params: parameters (tree nodes for motif_gbm)", lambda r: _si(r.n_params)),
    ("FLOPs", "flops_per_seq: FLOPs per sequence", lambda r: _si(r.flops_per_seq)),
    ("baseline", "baseline: the single-task run this one is compared with", _attr("baseline")),
    ("certificate", "certificate: why the run is (not) certified", _attr("certificate")),
]
LEFT = {"run", "family", "role", "trials", "baseline", "certificate"}


def table_html(rows: list[ComparisonRow]) -> str:
    """The table: columns with no value in any row left out (comparison.csv has them all)."""
    cells = [[cell(r) for _, _, cell in HTML_COLUMNS] for r in rows]
    keep = [j for j in range(len(HTML_COLUMNS)) if any(c[j] not in ("", "-") for c in cells)]
    cls = {j: ("t" if HTML_COLUMNS[j][0] in LEFT else "") + (" cert" if HTML_COLUMNS[j][0] == "certificate" else "")
           for j in keep}
    head = "".join(f'<th class="{cls[j]}" title="{html.escape(HTML_COLUMNS[j][1])}">{html.escape(HTML_COLUMNS[j][0])}'
                   "</th>" for j in keep)
    body = "".join("<tr>" + "".join(f'<td class="{cls[j]}">{html.escape(c[j])}</td>' for j in keep) + "</tr>"
                   for c in cells)
    return f'<div class="scroll table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


STYLE = """
body{font-family:sans-serif;margin:2em;max-width:100%}
.caption p{margin:.25em 0;font-size:13px}.caption ul{margin:.2em 0 .4em;font-size:13px}
.caption .warn{background:#fff4d6;border-left:4px solid #e0a800;padding:2px 6px}
.scroll{overflow-x:auto;max-width:100%}
.table{border:1px solid #ccc;margin:1em 0}
table{border-collapse:separate;border-spacing:0}
td,th{border-right:1px solid #ddd;border-bottom:1px solid #ddd;padding:3px 6px;font-size:12px;text-align:right;
white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom;max-width:7em;cursor:help}
th:first-child,td:first-child{position:sticky;left:0;z-index:1;background:#fff;text-align:left;
box-shadow:1px 0 0 #bbb}
th:first-child{background:#f3f3f3;z-index:2}
.t{text-align:left}.cert{white-space:normal;min-width:22em;max-width:40em}
figure{display:inline-block;vertical-align:top;margin:8px;max-width:620px}
figure.wide{display:block;max-width:none}
figure img{max-width:100%;height:auto}figcaption{font-size:12px;color:#333;max-width:900px}
details{font-size:12px;margin-top:.5em}details .scroll{max-height:40em;overflow-y:auto}
"""
# Caption lines that warn the reader: a delta within seed noise, no seeds at all, an empty p-value.
WARN = ("p ≥", "  within seed noise", "Seeds: no configuration")


def caption_html(rows: list[ComparisonRow]) -> str:
    """The caption: a paragraph per line, indented lines as a list, warnings marked."""
    out, items = [], []
    for line in caption(rows).splitlines() + [""]:
        if line.startswith("  "):
            cls = ' class="warn"' if line.startswith(WARN) else ""
            items.append(f"<li{cls}>{html.escape(line.strip())}</li>")
            continue
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line:
            cls = ' class="warn"' if line.startswith(WARN) else ""
            out.append(f"<p{cls}>{html.escape(line)}</p>")
    return '<div class="caption">' + "".join(out) + "</div>"


def write_html(rows: list[ComparisonRow], runs: list[RunRow], path: Path, title: str,
               front: "Front | None" = None) -> Path:
    figs = figures(rows, runs, front)
    imgs = "".join(f'<figure class="{"wide" if f.wide else ""}"><img src="data:image/png;base64,{f.png}" '
                   f'alt="{html.escape(f.name)}"><figcaption>{html.escape(f.caption)}</figcaption>{f.detail}</figure>'
                   for f in figs)
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>{caption_html(rows)}{table_html(rows)}
<p style="font-size:12px;color:#555">Hover a column's header for its full name; columns with no value here are left out
(comparison.csv has every column).</p>{front_html(front) if front is not None else ""}{imgs}</body></html>""")
    return path
