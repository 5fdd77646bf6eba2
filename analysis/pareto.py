"""Multi-objective sweeps: the objectives a sweep may search, what its "worst" task is, the
per-task constraint, and the Pareto front.

Torch- and Ray-free: `compare`, the report, the sweep's summary and `export-best` read a sweep's
objectives from its parent run's params and compute its front here; the sweep's searcher
(search/objectives.py) takes the same objectives to Optuna.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from mtlsweep.config.errors import ConfigError
from mtlsweep.training.metrics import DEFAULT_WORST, WORST_STATS

# name -> (the per-epoch metric trials report, {worst} filled in; direction; what it is)
OBJECTIVES: dict[str, tuple[str, str, str]] = {
    "auroc_mean": ("val/auroc_mean", "max", "mean validation AUROC over tasks"),
    "auroc_median": ("val/auroc_median", "max", "median validation AUROC over tasks"),
    "auroc_worst": ("val/auroc_{worst}", "max", "validation AUROC of the worst tasks ({worst_text})"),
    "auprc_mean": ("val/auprc_mean", "max", "mean validation AUPRC over tasks"),
    "delta_auroc_mean": ("val/delta_auroc_mean", "max", "mean over tasks of AUROC minus the single-task baseline's"),
    "delta_auroc_worst": ("val/delta_auroc_{worst}", "max",
                          "AUROC minus the baseline's on the tasks sharing hurts most ({worst_text})"),
    "epoch_s": ("cost/epoch_s", "min", "seconds per epoch"),
}
# --objective's values, kept: one objective each, and `multi`.
ALIASES = {"multi": ("auroc_mean", "epoch_s"), "val/auroc_mean": ("auroc_mean",),
           "val/auprc_mean": ("auprc_mean",), "val/delta_auroc_mean": ("delta_auroc_mean",)}
# In a search with no baseline (the tuned baseline's own), a delta objective is its plain counterpart.
WITHOUT_BASELINE = {"delta_auroc_mean": "auroc_mean", "delta_auroc_worst": "auroc_worst"}
SHORTFALL_METRIC = "val/worst_shortfall"        # max over tasks of baseline − AUROC (training.metrics)
# Two floats this close are one value: a shortfall of exactly δ meets the constraint.
_TOL = 1e-12


def meets_constraint(shortfall: Optional[float], constraint_delta: Optional[float]) -> bool:
    """Whether a run whose worst shortfall below its baseline is ``shortfall`` meets the constraint
    (every task's AUROC >= its baseline's − δ): always without one; never with one and a missing
    or NaN shortfall; a shortfall of exactly δ meets it."""
    if constraint_delta is None:
        return True
    return shortfall is not None and math.isfinite(float(shortfall)) and float(shortfall) <= constraint_delta + _TOL


def worst_text(worst: str) -> str:
    """What ``--worst`` names, in words."""
    if worst == "min":
        return "min: the minimum over tasks"
    return f"{worst}: the {int(WORST_STATS[worst])}th percentile over tasks, linearly interpolated"


@dataclass(frozen=True)
class Objective:
    name: str
    metric: str     # what trials report each epoch (a Tune key)
    mode: str       # max | min
    about: str

    @property
    def run_metric(self) -> str:
        """The MLflow metric of a run that compare reads: its best epoch's for validation
        metrics, the last epoch's for cost."""
        return f"best/{self.metric}" if self.metric.startswith("val/") else self.metric

    @property
    def label(self) -> str:
        return f"{self.name} ({self.mode})"


def objective(name: str, worst: str = DEFAULT_WORST) -> Objective:
    metric, mode, about = OBJECTIVES[name]
    return Objective(name, metric.format(worst=worst), mode, about.format(worst_text=worst_text(worst)))


@dataclass(frozen=True)
class ObjectiveSet:
    """A sweep's objectives, its worst statistic and its constraint (every task's validation
    AUROC >= its baseline's − δ), as the sweep's parent run records them."""
    objectives: tuple[Objective, ...]
    worst: str = DEFAULT_WORST
    constraint_delta: Optional[float] = None

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def multi(self) -> bool:
        """Worth a front: two objectives or more, or one under a constraint."""
        return len(self.objectives) > 1 or self.constraint_delta is not None

    @property
    def uses_worst(self) -> bool:
        return any("{worst}" in OBJECTIVES[o.name][0] for o in self.objectives)

    def metric_mode(self) -> tuple[object, object]:
        """(metric, mode) as Ray Tune's searchers take them: lists for several objectives."""
        if len(self.objectives) == 1:
            return self.objectives[0].metric, self.objectives[0].mode
        return [o.metric for o in self.objectives], [o.mode for o in self.objectives]

    def without_baseline(self) -> "ObjectiveSet":
        """The objectives of a search that has no baseline to compare with: deltas become the
        plain metrics, and no constraint."""
        names = list(dict.fromkeys(WITHOUT_BASELINE.get(n, n) for n in self.names))
        return ObjectiveSet(tuple(objective(n, self.worst) for n in names), self.worst, None)

    def feasible(self, shortfall: Optional[float]) -> bool:
        """Whether a run with this worst shortfall meets the constraint (meets_constraint)."""
        return meets_constraint(shortfall, self.constraint_delta)

    def constraint_text(self) -> str:
        if self.constraint_delta is None:
            return "no constraint"
        return f"every task's validation AUROC >= its single-task baseline's − {self.constraint_delta:g}"

    def describe(self) -> str:
        parts = ", ".join(o.label for o in self.objectives)
        worst = f"; worst = {worst_text(self.worst)}" if self.uses_worst else ""
        cons = f"; constraint: {self.constraint_text()}" if self.constraint_delta is not None else ""
        return parts + worst + cons

    def params(self) -> dict[str, str]:
        """The sweep parent run's params that name them."""
        return {"sweep.objectives": ",".join(self.names), "sweep.worst": self.worst,
                "sweep.constraint_delta": "none" if self.constraint_delta is None else f"{self.constraint_delta:g}"}

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Optional["ObjectiveSet"]:
        """What a sweep's parent run recorded (sweeps before sweep.objectives: their --objective);
        None when it recorded neither."""
        spec = params.get("sweep.objectives") or params.get("sweep.objective")
        if not spec:
            return None
        delta = params.get("sweep.constraint_delta", "none")
        return parse_objectives(spec, params.get("sweep.worst") or DEFAULT_WORST,
                                None if delta in ("", "none") else float(delta))


def parse_objectives(spec: str, worst: str = DEFAULT_WORST, constraint_delta: Optional[float] = None,
                     flag: str = "--objectives") -> ObjectiveSet:
    """``auroc_mean,auroc_worst,epoch_s`` (or an --objective value) as an ObjectiveSet; a bad name,
    worst or δ is a one-line ConfigError naming what is allowed."""
    if worst not in WORST_STATS:
        raise ConfigError(f"--worst {worst!r}: use {', '.join(WORST_STATS)} (the minimum or a low percentile of "
                          "per-task validation AUROC)")
    if constraint_delta is not None and not (math.isfinite(constraint_delta) and constraint_delta >= 0):
        raise ConfigError(f"--constraint-delta {constraint_delta}: must be a finite AUROC margin >= 0 (every task "
                          "must keep its validation AUROC >= its baseline's − δ)")
    spec = (spec or "").strip()
    names: list[str] = []
    for part in ([spec] if spec in ALIASES else spec.split(",")):
        part = part.strip()
        if part in ALIASES:
            names += ALIASES[part]
        elif part in OBJECTIVES:
            names.append(part)
        else:
            raise ConfigError(f"{flag} {spec!r}: unknown objective {part!r}; use one or more of "
                              f"{', '.join(OBJECTIVES)}, comma-separated (or multi = auroc_mean,epoch_s)")
    if len(set(names)) != len(names):
        raise ConfigError(f"{flag} {spec!r}: an objective is named twice")
    return ObjectiveSet(tuple(objective(n, worst) for n in names), worst, constraint_delta)


# ---- the Pareto front ---------------------------------------------------------------------------
def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    s = [1.0 if m == "max" else -1.0 for m in modes]
    at_least = all(x * k >= y * k - _TOL for x, y, k in zip(a, b, s))
    return at_least and any(x * k > y * k + _TOL for x, y, k in zip(a, b, s))


def pareto_front(values: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated rows of ``values`` (rows: points, columns:
    objectives, each maximized or minimized as ``modes`` says). A row with a NaN or infinite
    value is never on the front and dominates nothing; equal rows do not dominate each other,
    so ties are all on it."""
    v = np.asarray(values, dtype=np.float64).reshape(len(values), len(modes))
    if not len(v):
        return []
    if any(m not in ("max", "min") for m in modes):
        raise ValueError(f"modes must be max or min, got {list(modes)}")
    up = v * np.array([1.0 if m == "max" else -1.0 for m in modes])     # every objective maximized
    idx = np.flatnonzero(np.isfinite(up).all(1))
    u = up[idx]
    # j dominates i: u[j] >= u[i] everywhere and > somewhere.
    ge = (u[:, None, :] >= u[None, :, :] - _TOL).all(2)
    gt = (u[:, None, :] > u[None, :, :] + _TOL).any(2)
    dominated = (ge & gt).any(0)
    return [int(i) for i in idx[~dominated]]
