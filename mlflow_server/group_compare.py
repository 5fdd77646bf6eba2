"""`mtlsweep compare --group-by TAG`: configurations repeated over seeds, against single-task.

Runs are grouped by a tag (a grid sweep tags each trial with its `variant`); each run is paired
with the baseline it was compared with (same seed and data), so the spread over seeds is the
spread of per-seed deltas. The paired test is Wilcoxon's signed-rank test over every (task,
seed) pair of the group: run AUROC minus its baseline's AUROC on the same task.

When a grid tunes keys (its ``tune:`` values), a group holds one run per value and seed: for
each seed (comparison key) the run best on *validation* is kept, whatever split is reported,
as was done for the baseline. Only completed runs count (never pruned or failed ones).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mtlsweep.config import tags as tag
from mtlsweep.config.tags import Role
from mtlsweep.mlflow_server.compare import RunRow, gap_closed, p_floor_note, rich_table, wilcoxon_p

SPLITS = {"val": "best/val/auroc/", "test": "test/auroc/"}
SUMMARY = {"val": "best/val/auroc_mean", "test": "test/auroc_mean"}
ORACLE = {"val": "oracle/val/auroc_mean", "test": "oracle/test/auroc_mean"}
SELECT_BY = "best/val/auroc_mean"
BASELINE_GROUP = "single-task towers (baseline)"
COLUMNS = ["group", "family", "runs", "certified", "auroc", "delta_auroc", "wilcoxon_p", "tasks_improved", "oracle",
           "gap_closed", "train_val_gap", "params", "flops", "epoch_s"]


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
    oracle: np.ndarray                # per run: the data's ceiling (NaN without one)
    gap_closed: np.ndarray            # per run: share of its baseline's gap to the ceiling closed
    train_val_gap: np.ndarray         # per run: train minus valid AUROC at the best epoch
    params: float = math.nan          # parameters (tree nodes for motif_gbm), mean over runs
    flops: float = math.nan           # FLOPs per sequence, mean over runs

    def certificate(self) -> tuple[bool, list[str]]:
        """(certified, why not): every run converged and every tuned value inside its range."""
        return certify(self.runs)

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
                "oracle": ms(self.oracle), "gap_closed": ms(self.gap_closed, True),
                "train_val_gap": ms(self.train_val_gap),
                "certified": "yes" if self.certificate()[0] else "no",
                "params": f"{self.params:,.0f}" if math.isfinite(self.params) else "-",
                "flops": _si(self.flops),
                "epoch_s": f"{self.epoch_s:.2f}" if math.isfinite(self.epoch_s) else "-"}


def _si(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= f:
            return f"{x / f:.3g}{unit}"
    return f"{x:.0f}"


def certify(runs: list[RunRow]) -> tuple[bool, list[str]]:
    """An arm over its runs (one per data set): certified when every run converged and no tuned
    value sits at the edge of its range; otherwise one line per failure, with how many runs."""
    why: dict[str, int] = {}
    for r in runs:
        if r.converged is None:
            why["no convergence certificate"] = why.get("no convergence certificate", 0) + 1
        elif not r.converged:
            why["not converged"] = why.get("not converged", 0) + 1
        for e in r.tuning_edges():
            key = f"{e.key} at the {e.side} edge of {e.range}"
            why[key] = why.get(key, 0) + 1
    return not why, [f"{k} ({n}/{len(runs)} runs)" for k, n in why.items()]


def _per_task(row: RunRow, prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in row.metrics.items() if k.startswith(prefix)}


def group_runs(rows: list[RunRow], by: str = "variant", split: str = "val") -> list[Group]:
    """One Group for the baselines, then one per value of tag ``by`` (finished runs only), in
    the order the values first appear among the runs sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use val or test")
    baselines = [r for r in rows if r.role == Role.BASELINE and r.status == "FINISHED"]
    named: dict[str, list[RunRow]] = {}
    for r in sorted(rows, key=lambda r: r.name):
        if r.role not in ("baseline", Role.CANDIDATE) and r.completed and r.tags.get(by):
            named.setdefault(r.tags[by], []).append(r)
    out = []
    trunks: dict[str, list[RunRow]] = {}
    for b in baselines:
        trunks.setdefault(trunk_name(b.params), []).append(b)
    for trunk, runs in trunks.items():
        # Towers of several trunks (model.arch.preset) are several baselines: each arm faces its own.
        out.append(_group(BASELINE_GROUP if len(trunks) == 1 else f"single-task towers, {trunk} trunk (baseline)",
                          runs, split, paired=False))
    for name, runs in named.items():
        out.append(_group(name, select_tuned(runs), split, paired=True))
    return out


def trunk_name(params: dict) -> str:
    """A run's trunk: its model.arch.preset, or custom (the lists as given)."""
    v = params.get("model.arch.preset")
    return "custom" if v in (None, "", "null", "None") else str(v)


def select_tuned(runs: list[RunRow]) -> list[RunRow]:
    """One run per comparison key (seed, data): the best on validation among its tuned values."""
    best: dict[str, RunRow] = {}
    for r in runs:
        key = r.tags.get(tag.COMPARE_KEY) or r.baseline_fp or r.run_id
        if key not in best or r.m(SELECT_BY) > best[key].m(SELECT_BY):
            best[key] = r
    return sorted(best.values(), key=lambda r: r.name)


def _group(name: str, runs: list[RunRow], split: str, paired: bool) -> Group:
    prefix, summary = SPLITS[split], SUMMARY[split]
    auroc, delta, improved, pairs, n_tasks = [], [], [], [], 0
    oracle, closed, fit_gap = [], [], []
    for r in runs:
        auroc.append(r.m(summary))
        oracle.append(r.m(ORACLE[split]))
        fit_gap.append(r.m("best/gap/auroc"))
        if not paired:
            continue
        closed.append(gap_closed(r.m(summary), r.baseline.m(summary), r.m(ORACLE[split]))
                      if r.baseline is not None else math.nan)
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
    pairs_a = np.array(pairs, dtype=np.float64)
    return Group(name, "/".join(families), runs, np.array(auroc, dtype=np.float64), np.array(delta),
                 pairs_a, np.array(improved, dtype=np.float64), n_tasks, wilcoxon_p(pairs_a),
                 _mean(r.m("cost/epoch_s") for r in runs), np.array(oracle, dtype=np.float64),
                 np.array(closed, dtype=np.float64), np.array(fit_gap, dtype=np.float64),
                 _mean(_num(r.params.get("model.n_params")) for r in runs),
                 _mean(_num(r.params.get("model.flops_per_sample")) for r in runs))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _mean(values) -> float:
    xs = [x for x in values if math.isfinite(x)]
    return float(np.mean(xs)) if xs else math.nan


def render_markdown(groups: list[Group], split: str = "val") -> str:
    head = ["configuration", "family", "runs (seeds)", "certified", f"{split} AUROC (mean ± sd)",
            "ΔAUROC vs single-task (mean ± sd over seeds)", "paired Wilcoxon p (tasks × seeds)",
            "tasks improved (mean per seed)", "oracle AUROC", "share of the gap to the oracle closed",
            "train − valid AUROC", "parameters", "FLOPs per sequence", "epoch time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        r = g.row()
        lines.append("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def render_text(groups: list[Group], title: str, width: Optional[int] = None) -> str:
    rows = [g.row() for g in groups]
    text = rich_table(title, COLUMNS, [[str(r[c]) for c in COLUMNS] for r in rows], ("group", "family", "certified"),
                      width, ("epoch_s", "flops", "runs", "train_val_gap", "gap_closed", "oracle", "params"))
    return text + "".join(f"  not certified, {g.name}: {'; '.join(g.certificate()[1])}\n" for g in groups
                          if not g.certificate()[0]) \
        + "".join(f"  {g.name}: {p_floor_note(g.pairs.size, '(task, seed) pairs')}.\n" for g in groups
                  if p_floor_note(g.pairs.size))


def write_csv(groups: list[Group], path: Path) -> Path:
    def mean(x: np.ndarray):
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else ""

    def sd(x: np.ndarray):
        x = x[np.isfinite(x)]
        return float(x.std(ddof=1)) if x.size > 1 else (0.0 if x.size else "")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "family", "runs", "certified", "certificate", "auroc_mean", "auroc_sd", "delta_auroc_mean",
                    "delta_auroc_sd", "wilcoxon_p", "tasks_improved_mean", "tasks", "oracle_auroc", "gap_closed_mean",
                    "gap_closed_sd", "train_val_gap_mean", "n_params", "flops_per_seq", "epoch_s"])
        for g in groups:
            ok, why = g.certificate()
            w.writerow([g.name, g.family, len(g.runs), "yes" if ok else "no", "; ".join(why), mean(g.auroc),
                        sd(g.auroc), mean(g.delta), sd(g.delta), g.p_value, mean(g.improved), g.n_tasks,
                        mean(g.oracle), mean(g.gap_closed), sd(g.gap_closed), mean(g.train_val_gap), g.params,
                        g.flops, g.epoch_s])
    return path
