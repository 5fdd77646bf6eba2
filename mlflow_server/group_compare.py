"""`mtlsweep compare --group-by TAG`: configurations repeated over seeds, against single-task.

Runs are grouped by a tag (a grid sweep tags each trial with its `variant`); each run is paired
with the baseline of its own fingerprint (same seed), so the spread over seeds is the spread
of per-seed deltas. The paired test is Wilcoxon's signed-rank test over every (task, seed) pair
of the group: run AUROC minus its baseline's AUROC on the same task.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlflow_server.compare import RunRow, rich_table, wilcoxon_p

SPLITS = {"val": "best/val/auroc/", "test": "test/auroc/"}
SUMMARY = {"val": "best/val/auroc_mean", "test": "test/auroc_mean"}
BASELINE_GROUP = "single-task towers (baseline)"
COLUMNS = ["group", "family", "runs", "auroc", "delta_auroc", "wilcoxon_p", "tasks_improved", "epoch_s"]


@dataclass
class Group:
    name: str
    family: str
    runs: list[RunRow]
    auroc: np.ndarray                 # per run: mean AUROC over tasks
    delta: np.ndarray                 # per run: mean over tasks of (run - its baseline)
    pairs: np.ndarray                 # every (task, run) delta, for the paired test
    improved: np.ndarray              # per run: tasks with a positive delta
    n_tasks: int
    p_value: float
    epoch_s: float

    def row(self) -> dict:
        def ms(x: np.ndarray, signed: bool = False) -> str:
            x = x[np.isfinite(x)]
            if not len(x):
                return "-"
            f = "{:+.4f}" if signed else "{:.4f}"
            sd = x.std(ddof=1) if len(x) > 1 else 0.0
            return f"{f.format(x.mean())} ± {sd:.4f}"
        return {"group": self.name, "family": self.family, "runs": len(self.runs), "auroc": ms(self.auroc),
                "delta_auroc": ms(self.delta, True) if self.pairs.size else "-",
                "wilcoxon_p": f"{self.p_value:.2g}" if math.isfinite(self.p_value) else "-",
                "tasks_improved": (f"{self.improved.mean():.1f}/{self.n_tasks}" if self.pairs.size else "-"),
                "epoch_s": f"{self.epoch_s:.2f}" if math.isfinite(self.epoch_s) else "-"}


def _per_task(row: RunRow, prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in row.metrics.items() if k.startswith(prefix)}


def group_runs(rows: list[RunRow], by: str = "variant", split: str = "val") -> list[Group]:
    """One Group for the baselines, then one per value of tag ``by`` (finished runs only), in
    the order the values first appear among the runs sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use val or test")
    prefix, summary = SPLITS[split], SUMMARY[split]
    baselines = [r for r in rows if r.role == "baseline" and r.status == "FINISHED"]
    named: dict[str, list[RunRow]] = {}
    for r in sorted(rows, key=lambda r: r.name):
        if r.role != "baseline" and r.status == "FINISHED" and r.tags.get(by):
            named.setdefault(r.tags[by], []).append(r)
    out = []
    if baselines:
        out.append(_group(BASELINE_GROUP, baselines, prefix, summary, paired=False))
    for name, runs in named.items():
        out.append(_group(name, runs, prefix, summary, paired=True))
    return out


def _group(name: str, runs: list[RunRow], prefix: str, summary: str, paired: bool) -> Group:
    auroc, delta, improved, pairs, n_tasks = [], [], [], [], 0
    for r in runs:
        auroc.append(r.m(summary))
        if not paired:
            continue
        mine = _per_task(r, prefix)
        base = _per_task(r.baseline, prefix) if r.baseline is not None else {}
        keys = sorted(set(mine) & set(base))
        d = np.array([mine[k] - base[k] for k in keys], dtype=np.float64)
        ok = np.isfinite(d)
        n_tasks = max(n_tasks, int(ok.sum()))
        if ok.any():
            delta.append(float(d[ok].mean()))
            improved.append(int((d[ok] > 0).sum()))
            pairs.extend(d[ok].tolist())
    families = sorted({r.family for r in runs})
    epoch_s = [r.m("cost/epoch_s") for r in runs]
    epoch_s = [x for x in epoch_s if math.isfinite(x)]
    pairs_a = np.array(pairs, dtype=np.float64)
    return Group(name, "/".join(families), runs, np.array(auroc, dtype=np.float64), np.array(delta),
                 pairs_a, np.array(improved, dtype=np.float64), n_tasks, wilcoxon_p(pairs_a),
                 float(np.mean(epoch_s)) if epoch_s else math.nan)


def render_markdown(groups: list[Group], split: str = "val") -> str:
    head = ["configuration", "family", "runs (seeds)", f"{split} AUROC (mean ± sd)", "ΔAUROC vs single-task (mean ± sd over seeds)",
            "paired Wilcoxon p (tasks × seeds)", "tasks improved (mean per seed)", "epoch time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        r = g.row()
        lines.append("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def render_text(groups: list[Group], title: str) -> str:
    rows = [g.row() for g in groups]
    return rich_table(title, COLUMNS, [[str(r[c]) for c in COLUMNS] for r in rows], ("group", "family"), 200)


def write_csv(groups: list[Group], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "family", "runs", "auroc_mean", "auroc_sd", "delta_auroc_mean", "delta_auroc_sd",
                    "wilcoxon_p", "tasks_improved_mean", "tasks", "epoch_s"])
        for g in groups:
            sd = (lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0)
            w.writerow([g.name, g.family, len(g.runs), float(np.nanmean(g.auroc)), sd(g.auroc),
                        float(g.delta.mean()) if g.delta.size else "", sd(g.delta) if g.delta.size else "",
                        g.p_value, float(g.improved.mean()) if g.improved.size else "", g.n_tasks, g.epoch_s])
    return path
