"""`mtlsweep compare`: is a configuration better than single-task, on which tasks, at what cost?

Each run is matched to the single-task baseline with the same baseline fingerprint (data,
task set, tower shape, budget, seed), recomputed from the run's own params; a run with no
such baseline is shown without deltas rather than compared with the wrong one.

Where a configuration ran on several seeds (training or data), the table says how far its
delta moves from seed to seed, so that a gain can be told from seed noise.

The report's plots live in report_html (matplotlib is imported only when one is written); this
module imports neither torch nor matplotlib, so `mtlsweep compare` starts in about a second.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from mtlsweep.analysis.learning_curves import time_to_target
from mtlsweep.analysis.pareto import (
    SHORTFALL_METRIC,
    Objective,
    ObjectiveSet,
    pareto_front,
    parse_objectives,
    worst_text,
)
from mtlsweep.config import tags as tag
from mtlsweep.config.identity import (
    FAMILY_LABELS,
    NOT_IDENTITY,
    REFERENCE_FAMILIES,
    baseline_fingerprint,
    run_config,
)
from mtlsweep.config.tags import Role
from mtlsweep.data.task_keys import sanitize_names
from mtlsweep.training.certificates import RULE, TUNING_RULE, tuning_edges
from mtlsweep.training.metrics import DEFAULT_WORST, worst_stats

FAMILIES = FAMILY_LABELS
AUROC_PREFIX = "best/val/auroc/"
AUPRC_PREFIX = "best/val/auprc/"
# The per-epoch learning curve every run logs (training's val/auroc_mean, one step per epoch).
CURVE_METRIC = "val/auroc_mean"
# What a repeat of a configuration may differ in: its seeds. A data set drawn with another seed is
# another data.path and data.fingerprint; NOT_IDENTITY keys never change a result.
SEED_KEYS = ("train.seed", "data.path", "data.fingerprint")
# The level a p-value is read against, for the note on too few tasks.
SIGNIFICANCE = 0.05


@dataclass
class RunRow:
    run_id: str
    name: str
    family: str
    role: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    per_task: dict[str, float] = field(default_factory=dict)   # metric key -> best val AUROC
    baseline_fp: Optional[str] = None
    baseline: Optional["RunRow"] = None
    per_task_auprc: dict[str, float] = field(default_factory=dict)   # metric key -> best val AUPRC (if logged)

    def m(self, key: str) -> float:
        return float(self.metrics.get(key, math.nan))

    @property
    def task_names(self) -> dict[str, str]:
        """Metric key -> task name (keys are sanitized names; they differ only where a name had to)."""
        try:
            tasks = yaml.safe_load(self.params.get("data.task_names", "null")) or []
            return {v: k for k, v in sanitize_names(tasks).items()}
        except Exception:  # noqa: BLE001 - an old or odd run: show the keys themselves
            return {}

    @property
    def pruned(self) -> bool:
        """Stopped by the sweep's scheduler before its own end: never a family's best."""
        return "stopped_early" in self.tags

    @property
    def completed(self) -> bool:
        return self.status == "FINISHED" and not self.pruned and "orphaned" not in self.tags

    # ---- certificates (training.certificates) -------------------------------------------
    @property
    def converged(self) -> Optional[bool]:
        """None when the run carries no certificate (logged before runs had one, or never ended)."""
        v = self.tags.get(tag.CONVERGED)
        return None if v is None else v == "yes"

    def tuning_edges(self) -> list:
        """The tuned values of this run at the edge of the range they were searched in: the
        sweep's ranges (search_ranges) and what a reference family tuned in its own fit."""
        ranges = _json_tag(self.tags, tag.RANGES)
        chosen = {}
        for k in ranges:
            # What the run last trained with: the value it logged each epoch (optim.lr as metric
            # optim/lr; a population's schedule changes it as it trains), else its param.
            last = self.metrics.get(k.replace(".", "/"))
            if last is not None:
                chosen[k] = last
                continue
            try:
                chosen[k] = yaml.safe_load(self.params.get(k, "null"))
            except yaml.YAMLError:
                chosen[k] = None
        inner = _json_tag(self.tags, tag.INNER_TUNING)
        ranges.update({k: {"values": v["values"]} for k, v in inner.items()})
        chosen.update({k: v["chosen"] for k, v in inner.items()})
        return tuning_edges(chosen, ranges)

    def certificate(self) -> tuple[bool, str]:
        """(certified, why not): converged and tuned to an interior optimum."""
        why = []
        if self.converged is None:
            why.append("no convergence certificate")
        elif not self.converged:
            why.append(self.tags.get(tag.CONVERGENCE, "not converged"))
        why += [str(e) for e in self.tuning_edges()]
        return not why, "; ".join(why)

    @property
    def data_key(self) -> tuple[str, str]:
        """What a reference family's run shares with any baseline it can be compared with."""
        return self.params.get("data.fingerprint", ""), self.params.get("data.task_names", "")


def _json_tag(tags: dict, name: str) -> dict:
    try:
        v = json.loads(tags.get(name) or "{}")
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def run_fingerprint(params: dict[str, str]) -> Optional[str]:
    """The fingerprint of the baseline a run must be compared with, from its logged params
    (for runs logged before runs carried a compare_fp tag)."""
    cfg = run_config(params)
    try:
        tasks = yaml.safe_load(params.get("data.task_names", "null"))
    except yaml.YAMLError:
        return None
    if cfg is None or not isinstance(tasks, list):
        return None
    return baseline_fingerprint(cfg, str(params.get("data.fingerprint", "")), tasks)


def collect(client: MlflowClient, experiment: str, sweep: Optional[str] = None) -> list[RunRow]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"experiment {experiment!r} does not exist on this tracking server")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    rows = []
    for r in runs:
        tags = r.data.tags
        role = tags.get(tag.ROLE, "")
        if role in ("sweep", "analysis"):
            continue
        rows.append(RunRow(
            r.info.run_id, r.info.run_name or r.info.run_id[:8], tags.get(tag.FAMILY, "?"), role, r.info.status,
            dict(r.data.metrics), dict(r.data.params), dict(tags),
            per_task=_per_task(r.data.metrics, AUROC_PREFIX), per_task_auprc=_per_task(r.data.metrics, AUPRC_PREFIX)))
    by_id, by_fp = {}, {}
    for row in rows:
        if row.role == Role.BASELINE and row.status == "FINISHED":
            by_id[row.run_id] = row
            by_fp.setdefault(row.tags.get(tag.BASELINE_FP), row)
    by_data: dict[tuple, list[RunRow]] = {}
    for row in by_id.values():
        by_data.setdefault(row.data_key, []).append(row)
    for row in rows:
        row.baseline_fp = row.tags.get(tag.BASELINE_FP) if row.role == Role.BASELINE else \
            (row.tags.get(tag.COMPARE_FP) or run_fingerprint(row.params))
        if row.role != Role.BASELINE:
            # A sweep names each trial's baseline (tuned or fixed); a lone run matches by identity.
            row.baseline = by_id.get(row.tags.get(tag.BASELINE_RUN)) or by_fp.get(row.baseline_fp)
            if row.baseline is None and row.family in REFERENCE_FAMILIES:
                row.baseline = reference_baseline(row, by_data.get(row.data_key, []))
    if sweep:
        def in_sweep(x):
            return x.tags.get(tag.PARENT) == sweep or x.tags.get(tag.SWEEP) == sweep
        rows = [r for r in rows if in_sweep(r) or (r.role == Role.BASELINE and any(x.baseline is r for x in rows
                                                                                 if in_sweep(x)))]
    return rows


def _per_task(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def latest_sweep(tracking_uri: str, experiment: str) -> Optional[tuple[str, str]]:
    """(parent run id, name) of the sweep started last in ``experiment``; None if it has none."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.{tag.ROLE} = '{Role.SWEEP}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return (runs[0].info.run_id, runs[0].info.run_name or runs[0].info.run_id) if runs else None


def reference_baseline(row: RunRow, baselines: list[RunRow]) -> Optional[RunRow]:
    """A reference family (motif_gbm, kmer_linear) trains no CNN, so no CNN key of its config says
    which towers it faces: any finished baseline on the same data and tasks will do; the one of
    its seed if there is one, then the best on validation."""
    if not baselines:
        return None
    same_seed = [b for b in baselines if b.params.get("train.seed") == row.params.get("train.seed")] or baselines
    return max(same_seed, key=lambda b: b.m("best/val/auroc_mean") if math.isfinite(b.m("best/val/auroc_mean"))
               else -math.inf)


@dataclass
class Comparison:
    row: RunRow
    delta: np.ndarray            # per task (run - baseline), NaN where undefined
    keys: list[str]
    p_value: float
    improved: int
    compared: int

    @property
    def delta_mean(self) -> float:
        ok = np.isfinite(self.delta)
        return float(self.delta[ok].mean()) if ok.any() else math.nan


def task_deltas(row: RunRow) -> Optional[tuple[list[str], np.ndarray]]:
    """(task keys, the run's per-task AUROC minus its baseline's) over the tasks both have; None
    without a baseline."""
    if row.baseline is None:
        return None
    keys = sorted(set(row.per_task) & set(row.baseline.per_task))
    return keys, np.array([row.per_task[k] - row.baseline.per_task[k] for k in keys], dtype=np.float64)


def compare_to_baseline(row: RunRow) -> Optional[Comparison]:
    paired = task_deltas(row)
    if paired is None:
        return None
    keys, d = paired
    ok = np.isfinite(d)
    return Comparison(row, d, keys, wilcoxon_p(d), int((d[ok] > 0).sum()), int(ok.sum()))


def wilcoxon_p(d: np.ndarray) -> float:
    """Wilcoxon signed-rank p of paired differences (NaN ignored); NaN when it is undefined."""
    from scipy.stats import wilcoxon  # half a second of import, paid only when a p-value is computed
    d = d[np.isfinite(d)]
    if len(d) < 2 or not np.any(d != 0):
        return math.nan
    return float(wilcoxon(d).pvalue)


def least_p(n: int) -> float:
    """The smallest two-sided p Wilcoxon's signed-rank test can give with n paired differences:
    all of one sign, 2 / 2^n (2 tasks: 0.5, 5 tasks: 0.0625)."""
    return 2.0 / 2.0 ** n


def p_floor_note(n: int, what: str = "tasks") -> str:
    """A sentence when n pairs are too few for the test to ever reach SIGNIFICANCE, else ''."""
    if n < 1 or least_p(n) <= SIGNIFICANCE:
        return ""
    need = math.ceil(math.log2(2 / SIGNIFICANCE))
    return (f"p ≥ {least_p(n):.3g} is the least possible with {n} {what}: too few for the Wilcoxon test to reach "
            f"p < {SIGNIFICANCE} (that takes at least {need}), so its p says nothing here")


# ---- repeats of a configuration over seeds ----------------------------------------------------
def config_key(row: RunRow) -> tuple:
    """A run's configuration without its seeds: runs with equal keys are repeats of one configuration."""
    params = ((k, v) for k, v in row.params.items() if k not in SEED_KEYS and not k.startswith(NOT_IDENTITY))
    return row.family, row.role == Role.BASELINE, tuple(sorted(params))


def seed_of(row: RunRow) -> tuple:
    return tuple(row.params.get(k, "") for k in SEED_KEYS)


def repeats(row: RunRow, runs: Sequence[RunRow], keys: Optional[dict[str, tuple]] = None) -> list[RunRow]:
    """``row`` first, then the completed runs of its configuration on other seeds: one per seed,
    the best on validation where a seed ran more than once. ``keys``: config_key by run id, to
    reuse."""
    def key(r):
        return keys[r.run_id] if keys is not None else config_key(r)
    mine = key(row)
    done = [r for r in runs if r is not row and key(r) == mine and r.role != Role.CANDIDATE
            and (r.status == "FINISHED" if row.role == Role.BASELINE else r.completed)]
    out = {seed_of(row): row}
    for r in sorted(done, key=lambda r: -_finite_or(r.m("best/val/auroc_mean"), -math.inf)):
        out.setdefault(seed_of(r), r)
    return list(out.values())


def _finite_or(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


@dataclass
class ComparisonRow:
    """One line of the comparison: a run (or a family with no completed run) against its baseline.
    The fields up to ``certificate`` are the CSV's and HTML's columns, in order."""
    run: str
    family: str
    role: str                          # baseline, best <family>, no completed <family>, top
    trials: str = ""                   # completed/all of the family (pruned, failed)
    certified: str = ""                # yes / no (why: certificate)
    auroc_mean: float = math.nan
    auroc_median: float = math.nan
    auprc_mean: float = math.nan
    delta_auroc_mean: float = math.nan
    wilcoxon_p: float = math.nan
    tasks_improved: object = ""
    tasks_total: object = ""
    auroc_worst: float = math.nan      # the worst tasks' AUROC (the sweep's --worst, else p10)
    worst_shortfall: float = math.nan  # max over tasks of baseline − run AUROC (> 0: a task lost that much)
    front: str = ""                    # on the sweep's Pareto front: yes, uncertified, infeasible or ""
    oracle_auroc: float = math.nan
    gap_closed: float = math.nan
    train_val_gap: float = math.nan
    epoch_s: float = math.nan
    samples_per_s: float = math.nan
    s_to_target: float = math.nan
    n_params: object = ""
    flops_per_seq: object = ""
    # The same configuration over its seeds (``repeats``; empty when it ran on one): how many, the
    # sd of their mean AUROC, and their per-seed mean delta, each seed against its own baseline.
    seeds: object = ""
    auroc_seed_sd: float = math.nan
    delta_seed_mean: float = math.nan
    delta_seed_sd: float = math.nan
    delta_seed_min: float = math.nan
    delta_seed_max: float = math.nan
    baseline: str = ""
    certificate: str = ""
    source: Optional[RunRow] = field(default=None, repr=False)          # the run the line is about
    comparison: Optional["Comparison"] = field(default=None, repr=False)
    repeats: list[RunRow] = field(default_factory=list, repr=False)     # source first, then its other seeds
    curves: dict[str, list[dict]] = field(default_factory=dict, repr=False)   # run id -> per-epoch metrics

    def values(self) -> dict[str, object]:
        return {c: getattr(self, c) for c in COLUMNS}

    @property
    def delta_seeds(self) -> str:
        """The delta over seeds in a few characters: mean ± sd (seeds), or '-' without repeats."""
        if not math.isfinite(self.delta_seed_mean):
            return "-"
        return f"{self.delta_seed_mean:+.3f} ± {self.delta_seed_sd:.3f} ({self.seeds})"

    @property
    def within_seed_noise(self) -> bool:
        """The per-seed deltas do not agree in sign: this run's delta may be seed luck."""
        return math.isfinite(self.delta_seed_min) and self.delta_seed_min <= 0 <= self.delta_seed_max


_NAMES = [f.name for f in fields(ComparisonRow)]
COLUMNS = _NAMES[:_NAMES.index("certificate") + 1]
TEXT_COLUMNS = ["run", "family", "role", "trials", "certified", "auroc_mean", "auprc_mean", "delta_auroc_mean",
                "delta_seeds", "wilcoxon_p", "tasks_improved", "oracle_auroc", "gap_closed", "train_val_gap",
                "n_params", "epoch_s", "baseline"]


def gap_closed(run: float, baseline: float, oracle: float) -> float:
    """The share of the baseline's distance to the ceiling that a run closes (1 = reaches it,
    < 0 = worse than the baseline); NaN without a ceiling above the baseline."""
    if not all(map(math.isfinite, (run, baseline, oracle))) or oracle <= baseline:
        return math.nan
    return (run - baseline) / (oracle - baseline)


def metric_history(client: MlflowClient, run_id: str,
                   keys: Sequence[str] = (CURVE_METRIC, "cost/epoch_s")) -> list[dict]:
    """A run's per-epoch metrics ``keys``, merged by step: [{"epoch": e, key: value, ...}, ...]."""
    hist: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            hist.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [hist[k] for k in sorted(hist)]


def seconds_to_target(client: MlflowClient, row: RunRow, target: float,
                      history: Optional[list[dict]] = None) -> float:
    """Training seconds until the run's mean validation AUROC first reached ``target`` (the
    matched baseline's best), from its learning curve (``history``, else read); NaN if it never did."""
    if not math.isfinite(target):
        return math.nan
    curve = history if history is not None else metric_history(client, row.run_id)
    return time_to_target(curve, target, CURVE_METRIC).seconds


def seed_spread(runs: list[RunRow]) -> dict[str, object]:
    """The ComparisonRow fields of a configuration's repeats (nothing for a single seed)."""
    if len(runs) < 2:
        return {}
    auroc = np.array([r.m("best/val/auroc_mean") for r in runs])
    deltas = [c.delta_mean for c in map(compare_to_baseline, runs) if c is not None]
    d = np.array([x for x in deltas if math.isfinite(x)])
    out: dict[str, object] = {"seeds": len(runs), "auroc_seed_sd": _sd(auroc)}
    if len(d) >= 2:
        out.update(delta_seed_mean=float(d.mean()), delta_seed_sd=_sd(d), delta_seed_min=float(d.min()),
                   delta_seed_max=float(d.max()))
    return out


def _sd(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


def _trials(runs: list[RunRow]) -> str:
    done = sum(r.completed for r in runs)
    pruned = sum(r.pruned for r in runs)
    failed = sum(r.status in ("FAILED", "KILLED") for r in runs)
    return f"{done}/{len(runs)}" + (f" ({pruned} pruned)" if pruned else "") + (f" ({failed} failed)" if failed else "")


# ---- the Pareto front of a multi-objective sweep (analysis.pareto) ---------------------------------
def shortfall(row: RunRow, delta: Optional[np.ndarray]) -> float:
    """Max over tasks of the baseline's AUROC minus the run's, from ``delta`` (compare's own
    match), else as the run logged it against its sweep's baseline; NaN without a baseline."""
    if delta is not None and np.isfinite(delta).any():
        return float(-np.nanmin(delta))
    return row.m(f"best/{SHORTFALL_METRIC}")


def worst_auroc(row: RunRow, worst: str) -> float:
    """The run's ``worst`` statistic of per-task validation AUROC at its best epoch."""
    v = row.m(f"best/val/auroc_{worst}")
    if math.isfinite(v) or not row.per_task:
        return v
    return worst_stats(np.array(list(row.per_task.values())), "a")[f"a_{worst}"]


def objective_value(row: RunRow, o: Objective, worst: str, delta: Optional[np.ndarray]) -> float:
    """The run's value of objective ``o``: deltas against compare's own baseline where it has one
    (``delta``, the table's), the rest as the run logged them at its best epoch (cost: its last epoch)."""
    if delta is not None and np.isfinite(delta).any() and o.name == "delta_auroc_mean":
        return float(np.nanmean(delta))
    if delta is not None and o.name == "delta_auroc_worst":
        return worst_stats(delta, "d")[f"d_{worst}"]
    if o.name == "auroc_worst":
        return worst_auroc(row, worst)
    return row.m(o.run_metric)


@dataclass
class FrontPoint:
    row: RunRow
    values: tuple[float, ...]          # one per objective, in the ObjectiveSet's order
    certified: bool
    why: str                           # why not certified
    shortfall: float
    feasible: bool                     # meets the constraint (always, without one)
    on_front: bool = False             # certified, feasible, dominated by no other such run
    open_front: bool = False           # feasible, dominated by no feasible run, certified or not


@dataclass
class Front:
    """The Pareto front of a sweep's completed runs over its objectives. Only certified runs that
    meet the constraint can be on it; an uncertified run that no feasible run dominates is shown
    beside it, never on it."""
    objectives: ObjectiveSet
    points: list[FrontPoint]           # every completed run with all its objectives measured
    unmeasured: list[RunRow] = field(default_factory=list)     # completed, an objective missing (NaN)
    source: str = ""                   # where the objectives came from

    def _sorted(self, pts: list[FrontPoint]) -> list[FrontPoint]:
        first = self.objectives.objectives[0]
        return sorted(pts, key=lambda p: -p.values[0] if first.mode == "max" else p.values[0])

    @property
    def front(self) -> list[FrontPoint]:
        return self._sorted([p for p in self.points if p.on_front])

    @property
    def uncertified(self) -> list[FrontPoint]:
        return self._sorted([p for p in self.points if p.open_front and not p.on_front])

    @property
    def infeasible(self) -> list[FrontPoint]:
        return self._sorted([p for p in self.points if not p.feasible])

    def status(self, row: RunRow) -> str:
        for p in self.points:
            if p.row is row:
                return "yes" if p.on_front else "uncertified" if p.open_front else \
                    "infeasible" if not p.feasible else ""
        return ""


def find_front(runs: list[RunRow], objectives: ObjectiveSet, source: str = "") -> Front:
    """The front of ``runs``' completed trials (and references) over ``objectives``; runs with
    an objective unmeasured are left off it and listed."""
    objs, worst = objectives.objectives, objectives.worst
    modes = [o.mode for o in objs]
    points, unmeasured = [], []
    for r in runs:
        if r.role in (Role.BASELINE, Role.CANDIDATE) or not r.completed:
            continue
        paired = task_deltas(r)
        d = paired[1] if paired is not None else None
        values = tuple(objective_value(r, o, worst, d) for o in objs)
        if not all(map(math.isfinite, values)):
            unmeasured.append(r)
            continue
        ok, why = r.certificate()
        short = shortfall(r, d)
        points.append(FrontPoint(r, values, ok, why, short, objectives.feasible(short)))
    feasible = [p for p in points if p.feasible]
    for i in pareto_front([p.values for p in feasible], modes):
        feasible[i].open_front = True
    eligible = [p for p in feasible if p.certified]
    for i in pareto_front([p.values for p in eligible], modes):
        eligible[i].on_front = True
    return Front(objectives, points, unmeasured, source)


def sweep_objectives(client: MlflowClient, experiment: str, sweep: Optional[str]) -> Optional[ObjectiveSet]:
    """The objectives a sweep (its name or parent run id) recorded on its parent run; None for
    no sweep, or a sweep that recorded none."""
    if not sweep:
        return None
    try:
        run = client.get_run(sweep)
    except MlflowException:
        exp = client.get_experiment_by_name(experiment)
        named = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
            f"tags.{tag.ROLE} = '{Role.SWEEP}' and tags.{tag.SWEEP} = '{sweep}'")) if exp else []
        if not named:
            return None
        run = named[0]
    return ObjectiveSet.from_params(run.data.params)


def resolve_objectives(client: MlflowClient, experiment: str, sweep: Optional[str], names: Optional[str] = None,
                       worst: Optional[str] = None, constraint_delta: Optional[float] = None
                       ) -> tuple[Optional[ObjectiveSet], str]:
    """(objectives, where from): ``names`` (--objectives) when given, else the sweep's own;
    ``worst`` and ``constraint_delta`` override the sweep's."""
    recorded = sweep_objectives(client, experiment, sweep)
    if not names and recorded is None:
        if worst is not None or constraint_delta is not None:
            raise LookupError("--worst and --constraint-delta need the objectives: give --objectives (no sweep "
                              "recorded any here)")
        return None, ""
    base = recorded or ObjectiveSet(())
    spec = names or ",".join(base.names)
    source = "--objectives" if names else "the sweep's parent run"
    return parse_objectives(spec, worst or base.worst or DEFAULT_WORST,
                            constraint_delta if constraint_delta is not None else base.constraint_delta), source


def table_rows(rows: list[RunRow], metric: str = "val/auroc_mean", top: int = 5,
               client: Optional[MlflowClient] = None, front: Optional[Front] = None) -> list[ComparisonRow]:
    """The baseline(s), the best *certified* run of each family (converged, tuned to an interior
    optimum; without one its best completed run, labelled uncertified, or a line saying none
    completed), then the top certified runs overall. Pruned, failed and orphaned runs are never
    chosen; an uncertified run is shown, never ranked."""
    key = f"best/{metric}" if not metric.startswith(("best/", "test/")) else metric
    contenders = [r for r in rows if r.role not in ("baseline", Role.CANDIDATE)]
    ranked = sorted([r for r in contenders if r.completed and math.isfinite(r.m(key))], key=lambda r: -r.m(key))
    certified = [r for r in ranked if r.certificate()[0]]
    chosen: list[tuple[str, Optional[RunRow], str]] = []      # (role label, run or None, trials)
    for fam in FAMILIES:
        members = [r for r in contenders if r.family == fam]
        if not members:
            continue
        best = next((r for r in certified if r.family == fam), None)
        label = f"best {fam}"
        if best is None:        # shown with its certificate's "no": never ranked above a certified run
            best = next((r for r in ranked if r.family == fam), None)
            label = label if best else f"no completed {fam}"
        chosen.append((label, best, _trials(members)))
    if not contenders:
        best = max((r for r in rows if r.role == Role.BASELINE and math.isfinite(r.m(key))), key=lambda r: r.m(key),
                   default=None)
        if best is not None:
            chosen.append(("baseline", best, ""))
    keys = {r.run_id: config_key(r) for r in rows}
    # A top run that repeats a chosen configuration on another seed is counted in its seeds instead.
    shown = {keys[c.run_id] for _, c, _ in chosen if c is not None}
    for r in [r for r in certified if keys[r.run_id] not in shown][:top]:
        chosen.append(("top", r, ""))
        shown.add(keys[r.run_id])
    if front is not None:       # the front's points, each on a line of its own
        for p in front.front:
            if all(p.row is not c for _, c, _ in chosen):
                chosen.append(("front", p.row, ""))
    for _, r, _ in list(chosen):
        if r is not None and r.baseline is not None and all(r.baseline is not c for _, c, _ in chosen):
            chosen.insert(0, ("baseline", r.baseline, ""))
    chosen.sort(key=lambda x: x[0] != "baseline")
    out = []
    for label, r, trials in chosen:
        if r is None:
            out.append(ComparisonRow(f"({label})", label.split()[-1], label, trials))
            continue
        c = compare_to_baseline(r)
        ok, why = r.certificate()
        base = r.baseline
        oracle = r.m("oracle/val/auroc_mean")
        reps = repeats(r, rows, keys)
        curves = {}
        if client is not None:     # the learning curves of the run and its seeds, for the report
            curves = {x.run_id: metric_history(client, x.run_id, (CURVE_METRIC,) if x is not r else
                                               (CURVE_METRIC, "cost/epoch_s")) for x in reps}
        target = base.m("best/val/auroc_mean") if base else \
            (r.m("best/val/auroc_mean") if r.role == Role.BASELINE else math.nan)
        out.append(ComparisonRow(
            run=r.name.rsplit("/", 1)[-1], family=r.family, role=label, trials=trials,
            certified="yes" if ok else "no",
            auroc_mean=r.m("best/val/auroc_mean"), auroc_median=r.m("best/val/auroc_median"),
            auprc_mean=r.m("best/val/auprc_mean"),
            delta_auroc_mean=c.delta_mean if c else math.nan, wilcoxon_p=c.p_value if c else math.nan,
            tasks_improved=c.improved if c else "", tasks_total=c.compared if c else "",
            auroc_worst=worst_auroc(r, front.objectives.worst if front else DEFAULT_WORST),
            worst_shortfall=shortfall(r, c.delta if c else None) if r.role != Role.BASELINE else math.nan,
            front=front.status(r) if front else "", oracle_auroc=oracle,
            gap_closed=gap_closed(r.m("best/val/auroc_mean"), base.m("best/val/auroc_mean"), oracle)
            if base is not None else math.nan,
            train_val_gap=r.m("best/gap/auroc"), epoch_s=r.m("cost/epoch_s"), samples_per_s=r.m("cost/samples_per_s"),
            s_to_target=seconds_to_target(client, r, target, curves[r.run_id]) if client is not None else math.nan,
            n_params=_int(r.params.get("model.n_params")), flops_per_seq=_int(r.params.get("model.flops_per_sample")),
            baseline=base.name if base else ("-" if r.role == Role.BASELINE else "no matching baseline"),
            certificate=why or "converged; every tuned value interior", source=r, comparison=c,
            repeats=reps, curves=curves, **seed_spread(reps)))
    return out


def _int(v) -> object:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return ""


def caption(rows: list[ComparisonRow]) -> str:
    """What the table's numbers are: the baseline protocol, the ceiling, and what is never 'best'."""
    protocols = sorted({r.source.tags.get(tag.PROTOCOL, "") for r in rows
                        if r.source is not None and r.role == Role.BASELINE} - {""})
    lines = ["Validation AUROC at each run's best epoch; delta against the single-task baseline each run was "
             "compared with; p: Wilcoxon signed-rank over tasks; better: tasks improved.",
             "Best of a family: its best certified trial, else its best completed one marked uncertified (trials: "
             "completed/all); pruned trials are never best; top: the best other configurations."]
    lines += seed_lines(rows)
    lines += sorted({f"{p_floor_note(n)}." for n in {r.tasks_total for r in rows if isinstance(r.tasks_total, int)}
                     if p_floor_note(n)})
    if protocols:
        lines.append("Baseline: " + "; ".join(protocols) + ".")
    lines.append(f"Certified (cert.): {RULE}, and {TUNING_RULE}. An uncertified run is shown, never ranked; "
                 "params: parameters (tree nodes for motif_gbm).")
    lines += [f"  not certified, {r.role} {r.run}: {r.certificate}" for r in rows if r.certified == "no"]
    if any(r.role != Role.BASELINE and math.isfinite(r.oracle_auroc) for r in rows):
        lines.append("oracle (oracle_auroc): the data's ceiling (true motifs and label rule); gap closed (gap_closed): "
                     "share of the baseline's gap to it that a run closes; train-val (train_val_gap): train minus "
                     "valid AUROC (overfitting).")
    return "\n".join(lines)


def seed_lines(rows: list[ComparisonRow]) -> list[str]:
    """What the seed columns are, which deltas the seeds do not confirm, or that no seed was repeated."""
    compared = [r for r in rows if r.comparison is not None and r.role != Role.BASELINE]
    if not compared:
        return []
    if not any(math.isfinite(r.delta_seed_mean) for r in compared):
        return ["Seeds: no configuration here ran on more than one seed, so how much its delta moves from seed to "
                "seed is unknown; a small delta may be seed noise (repeat a configuration over train.seed to see)."]
    out = ["Δ seeds (delta_seed_*): the same configuration (params equal but for train.seed and the data's seed) over "
           "its seeds, each against its own baseline: mean ± sd of the per-seed ΔAUROC (seeds)."]
    out += [f"  within seed noise, {r.role} {r.run}: ΔAUROC {r.delta_auroc_mean:+.4f}, but over {r.seeds} seeds it "
            f"ranges {r.delta_seed_min:+.4f} to {r.delta_seed_max:+.4f}" for r in compared if r.within_seed_noise]
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:+.4f}" if abs(v) < 1 and v < 0 else f"{v:.4g}" if abs(v) >= 100 else f"{v:.4f}"
    return str(v)


def terminal_width() -> int:
    """The width tables are fitted to: ``COLUMNS`` when set, else the terminal's own width when
    stdout is one, else 100."""
    try:
        if os.environ.get("COLUMNS"):
            return max(40, int(os.environ["COLUMNS"]))
    except ValueError:
        return 100
    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((100, 24)).columns)
    return 100


def rich_table(title: str, columns: list[str], cells: list[list[str]], left: tuple[str, ...],
               width: Optional[int] = None, optional: Sequence[str] = (), labels: Optional[dict] = None) -> str:
    """A rich table rendered to text (left-justified columns ``left``, the rest right), fitted to
    ``width`` (default: the terminal's) by leaving out ``optional`` columns, first named first."""
    width = width or terminal_width()
    keep = list(columns)
    empty = [c for i, c in enumerate(columns) if c in optional and all(row[i] in ("", "-") for row in cells)]
    drop = empty + [c for c in optional if c in columns and c not in empty]     # what says nothing goes first
    while True:
        t = Table(title=title)
        for c in keep:
            t.add_column((labels or {}).get(c, c), justify="left" if c in left else "right", overflow="fold")
        for row in cells:
            t.add_row(*(v for c, v in zip(columns, row) if c in keep))
        need = Console(width=10_000).measure(t).maximum       # its natural width, unconstrained
        if need <= width or not drop:
            break
        keep.remove(drop.pop(0))
    console = Console(width=width)
    with console.capture() as cap:
        console.print(t)
    hidden = [c for c in columns if c not in keep]
    note = (f"(left out to fit {width} columns: {', '.join(hidden)}; widen the terminal or set COLUMNS, "
            "or read comparison.csv)\n") if hidden else ""
    return cap.get() + note


# Short headers for the terminal (the CSV and HTML keep the column names); the caption says what they are.
TEXT_LABELS = {"auroc_mean": "AUROC", "auprc_mean": "AUPRC", "delta_auroc_mean": "ΔAUROC", "wilcoxon_p": "p",
               "delta_seeds": "Δ seeds",
               "tasks_improved": "better", "n_params": "params", "certified": "cert.",
               "oracle_auroc": "oracle", "gap_closed": "gap closed", "train_val_gap": "train-val", "epoch_s": "s/epoch",
               "auroc_worst": "worst"}
# Columns the text table leaves out first when the terminal is narrow (all are in comparison.csv).
OPTIONAL_TEXT = ("epoch_s", "trials", "train_val_gap", "gap_closed", "oracle_auroc", "auprc_mean", "baseline",
                 "family", "n_params", "role", "delta_seeds")     # a best run's role names its family


def render_text(rows: list[ComparisonRow], width: Optional[int] = None, front: Optional[Front] = None) -> str:
    columns = TEXT_COLUMNS
    if front is not None:       # beside AUROC: the worst tasks' AUROC, and whether the run is on the front
        i = columns.index("auprc_mean")
        columns = columns[:i] + ["auroc_worst"] + columns[i:] + ["front"]
    return rich_table("configurations vs single-task baseline (validation, best epoch)", columns,
                      [[_fmt(getattr(r, c)) for c in columns] for r in rows],
                      ("run", "family", "role", "trials", "baseline", "front"), width, OPTIONAL_TEXT, TEXT_LABELS) \
        + caption(rows) + "\n" + (front_text(front, width) if front is not None else "")


def front_title(front: Front) -> str:
    return "Pareto front over " + ", ".join(o.label for o in front.objectives.objectives)


def front_caption(front: Front) -> list[str]:
    """What the front is, in lines: its objectives, the worst statistic, the constraint, who can be on it."""
    objs = front.objectives
    lines = [f"{front_title(front)}" + (f" (from {front.source})" if front.source else "") + ": no run on it is "
             "beaten by another in every objective. " + "; ".join(f"{o.name}: {o.about}" for o in objs.objectives)
             + "."]
    if not objs.uses_worst:
        lines.append(f"auroc_worst (a column): {worst_text(objs.worst)}.")
    lines.append(f"Constraint: {objs.constraint_text()}" + (
        " (shortfall: max over tasks of the baseline's AUROC minus the run's); an infeasible run is never on the "
        "front." if objs.constraint_delta is not None else "."))
    lines.append("Only completed, certified runs are on the front; an uncertified run that no feasible run "
                 "dominates is listed apart, never on it.")
    return lines


FRONT_COLUMNS = ["run", "family", "status"]


def front_cells(front: Front, points: list[FrontPoint]) -> tuple[list[str], list[list[str]]]:
    names = [o.name for o in front.objectives.objectives]
    columns = FRONT_COLUMNS + names + ["worst_shortfall"]
    cells = [[p.row.name.rsplit("/", 1)[-1], p.row.family,
              "front" if p.on_front else "not certified" if p.feasible else "infeasible",
              *(_fmt(v) for v in p.values), _fmt(p.shortfall)] for p in points]
    return columns, cells


def front_text(front: Front, width: Optional[int] = None) -> str:
    """The front's section of `compare`: its points, the uncertified runs beside it, the infeasible ones."""
    lines = front_caption(front)
    shown = front.front + front.uncertified
    if not front.front:
        lines.append("No run is on the front: none completed certified" + (
            " and feasible" if front.objectives.constraint_delta is not None else "") + " with every objective "
            "measured.")
    text = ""
    if shown:
        columns, cells = front_cells(front, shown)
        text = rich_table(f"{front_title(front)} ({len(front.front)} point(s))", columns, cells,
                          ("run", "family", "status"), width, ("family",))
    lines += [f"  not certified, {p.row.name}: {p.why}" for p in front.uncertified]
    if front.infeasible:
        lines.append(f"Infeasible (a task more than {front.objectives.constraint_delta:g} below its baseline): "
                     + ", ".join(f"{p.row.name} (shortfall {p.shortfall:.4f})" for p in front.infeasible) + ".")
    if front.unmeasured:
        lines.append("Left off (an objective not measured): " + ", ".join(r.name for r in front.unmeasured) + ".")
    return text + "\n".join(lines) + "\n"


def write_front_csv(front: Front, path: Path) -> Path:
    """Every completed run with its objectives: on the front or not, and why not."""
    names = [o.name for o in front.objectives.objectives]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "run_id", "family", *names, "worst_shortfall", "feasible", "certified", "front",
                    "certificate"])
        for p in front._sorted(front.points):
            w.writerow([p.row.name, p.row.run_id, p.row.family, *p.values, p.shortfall, "yes" if p.feasible else "no",
                        "yes" if p.certified else "no", front.status(p.row) or "dominated", p.why])
    return path


def write_csv(rows: list[ComparisonRow], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(r.values() for r in rows)
    return path


def report_title(client: MlflowClient, experiment: str, sweep: Optional[str]) -> str:
    """The report's title: the sweep's name when it is one sweep's, else the experiment's."""
    if sweep:
        try:
            return f"sweep {client.get_run(sweep).info.run_name} (experiment {experiment})"
        except MlflowException:
            return f"sweep {sweep} (experiment {experiment})"
    return f"experiment {experiment}"


def write_report(rows: list[ComparisonRow], runs: list[RunRow], out_dir: Path, title: str,
                 front: Optional[Front] = None) -> tuple[Path, ...]:
    """comparison.csv and comparison.html (table, captioned plots) in ``out_dir``; with a front,
    front.csv too (every completed run's objectives)."""
    from mtlsweep.mlflow_server.report_html import write_html  # matplotlib: only when a report is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = (write_csv(rows, out_dir / "comparison.csv"),
               write_html(rows, runs, out_dir / "comparison.html", title, front=front))
    return written + ((write_front_csv(front, out_dir / "front.csv"),) if front is not None else ())


def runs_front(client: MlflowClient, experiment: str, sweep: Optional[str], runs: list[RunRow],
               objectives: Optional[str] = None, worst: Optional[str] = None,
               constraint_delta: Optional[float] = None) -> Optional[Front]:
    """The Pareto front of ``runs`` (collect's) over the sweep's objectives or those given; None
    when there is a single objective and no constraint, or none is known."""
    objs, source = resolve_objectives(client, experiment, sweep, objectives, worst, constraint_delta)
    return find_front(runs, objs, source) if objs is not None and objs.multi else None


def sweep_front(tracking_uri: str, experiment: str, sweep: Optional[str], objectives: Optional[str] = None,
                worst: Optional[str] = None, constraint_delta: Optional[float] = None) -> Optional[Front]:
    """The Pareto front that `compare` shows for ``sweep`` (its name or parent run id)."""
    client = MlflowClient(tracking_uri)
    return runs_front(client, experiment, sweep, collect(client, experiment, sweep), objectives, worst,
                      constraint_delta)


def compare(tracking_uri: str, experiment: str, sweep: Optional[str] = None, metric: str = "val/auroc_mean",
            out_dir: Optional[Path] = None, top: int = 5, objectives: Optional[str] = None,
            worst: Optional[str] = None, constraint_delta: Optional[float] = None) -> tuple[str, list[ComparisonRow]]:
    """The comparison's text and rows (and report in ``out_dir``). A sweep of several objectives
    (or a constraint) also gets its Pareto front; ``objectives``/``worst``/``constraint_delta``
    override what the sweep recorded, or give a front to runs of no such sweep."""
    client = MlflowClient(tracking_uri)
    runs = collect(client, experiment, sweep)
    if not runs:
        raise LookupError(f"experiment {experiment!r} has no runs" + (f" under sweep {sweep}" if sweep else ""))
    front = runs_front(client, experiment, sweep, runs, objectives, worst, constraint_delta)
    rows = table_rows(runs, metric, top, client, front=front)
    text = render_text(rows, front=front)
    if out_dir is not None:
        write_report(rows, runs, out_dir, report_title(client, experiment, sweep), front=front)
    return text, rows
