"""A run's convergence certificate: did it stop because it had stopped improving?

A verdict on an arm whose best validation epoch is the last one it ran says more about the epoch
cap than about the arm. The rule, for epoch-trained models:

    converged  <=>  after the best validation epoch the run trained at least
                    max(MIN_AFTER, ceil(FRACTION * epochs run)) more epochs without a gain

(early stopping with ``train.patience`` >= that many epochs ends a run converged; a run that
reaches ``train.epochs`` still improving is not). Fitted references state their own stop: a
boosted model converged when early stopping ended every task before the round cap, a logistic
regression when its solver converged for every task. The certificate travels with the run
(metrics.json, and through the callbacks to MLflow); how to finish an unconverged run is part of it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

MIN_AFTER = 3
FRACTION = 0.1
RULE = (f"converged: after its best validation epoch the run trained at least max({MIN_AFTER}, "
        f"{FRACTION:.0%} of its epochs) more epochs without a gain")


@dataclass
class Convergence:
    converged: bool
    detail: str                  # one line: why (not), and how to finish it
    best_epoch: int = 0
    epochs_run: int = 0
    rule: str = RULE

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["Convergence"]:
        return cls(**d) if d else None


def epochs_needed(epochs_run: int) -> int:
    return max(MIN_AFTER, math.ceil(FRACTION * epochs_run))


def finish_overrides(best_epoch: int, epochs_run: int, epoch_cap: int, patience: int) -> dict[str, int]:
    """What a resume needs to finish a run that is not converged: still improving at the cap,
    twice the epochs; stopped by a patience shorter than the rule asks, more patience."""
    epochs = max(2 * epoch_cap, best_epoch + 2 * epochs_needed(epochs_run)) if epochs_run >= epoch_cap else epoch_cap
    out = {"train.epochs": epochs}
    if patience < epochs_needed(epochs):
        out["train.patience"] = epochs_needed(epochs)
    return out


def finish_command(run_dir: Path, overrides: dict) -> str:
    """The command that continues a run with ``overrides``, in its own MLflow run."""
    sets = " ".join(f"--set {k}={v}" for k, v in overrides.items())
    return f"mtlsweep train --config {run_dir}/config.yaml --resume {run_dir} {sets}"


def epoch_convergence(best_epoch: int, epochs_run: int, run_dir: Path, epoch_cap: int,
                      patience: int) -> Convergence:
    need = epochs_needed(epochs_run)
    after = epochs_run - best_epoch
    if after >= need:
        return Convergence(True, f"converged: best epoch {best_epoch} of {epochs_run}, then {after} epochs without "
                                 "a gain", best_epoch, epochs_run)
    more = finish_overrides(best_epoch, epochs_run, epoch_cap, patience)
    return Convergence(False, f"not converged: best epoch {best_epoch} of {epochs_run} (needs {need} epochs after it "
                              f"without a gain); finish it: {finish_command(run_dir, more)}", best_epoch, epochs_run)


def fitted_convergence(stopped: dict[str, bool], what: str, remedy: str) -> Convergence:
    """A fitted reference: ``stopped`` maps each fitted task to whether its fit ended on its own
    (early stopping before the cap, a converged solver)."""
    if not stopped:
        return Convergence(False, "not converged: no task was fitted")
    open_ = [t for t, ok in stopped.items() if not ok]
    if not open_:
        return Convergence(True, f"converged: {what} for all {len(stopped)} tasks")
    names = ", ".join(open_[:3]) + ("…" if len(open_) > 3 else "")
    return Convergence(False, f"not converged: {len(open_)}/{len(stopped)} tasks did not ({names}); {remedy}")


# ---- tuning: is a chosen value at the edge of what was searched? --------------------------
# A continuous value within this share of its range (log scale for log ranges) from a bound is
# at the edge; a value from a list is at the edge when it is the list's smallest or largest. A
# value at 0 is at a natural bound (no decay, no dropout, no coupling), where there is nothing
# to widen: not flagged.
EDGE_SHARE = 0.1
TUNING_RULE = (f"interior: every tuned value lies inside its range (not within {EDGE_SHARE:.0%} of a bound of a "
               "continuous range, not the smallest or largest of a list; 0 counts as inside)")


def _number(v) -> Optional[float]:
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def edge(value, spec: dict) -> Optional[str]:
    """'low' or 'high' when ``value`` sits at that edge of ``spec`` ({"low", "high", "log"} for a
    continuous range, {"values": [...]} for a list); None inside, at 0, or for a non-numeric choice."""
    x = _number(value)
    if x is None or x == 0.0:
        return None
    if "values" in spec:
        nums = [n for n in (_number(v) for v in spec["values"]) if n is not None]
        if len(nums) != len(spec["values"]) or len(nums) < 2:
            return None
        return "low" if x <= min(nums) else "high" if x >= max(nums) else None
    lo, hi = _number(spec.get("low")), _number(spec.get("high"))
    if lo is None or hi is None or hi <= lo:
        return None
    if spec.get("int"):
        return "low" if x <= lo else "high" if x >= hi else None
    if spec.get("log") and lo > 0 and x > 0:
        x, lo, hi = math.log(x), math.log(lo), math.log(hi)
    pos = (x - lo) / (hi - lo)
    return "low" if pos < EDGE_SHARE else "high" if pos > 1 - EDGE_SHARE else None


def describe_range(spec: dict) -> str:
    if "values" in spec:
        return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in spec["values"]) + "}"
    return f"[{spec.get('low'):g}, {spec.get('high'):g}]" + (" (log)" if spec.get("log") else "")


@dataclass(frozen=True)
class Edge:
    """A tuned value at the edge of its range: which key, which side, and what to do."""
    key: str
    value: object
    side: str                   # "low" or "high"
    range: str                  # the range searched, as text
    tasks: str = ""             # for per-task choices: "3/16"

    def __str__(self) -> str:
        share = f" for {self.tasks} tasks" if self.tasks else ""
        return f"{self.key}={self.value} at the {self.side} edge of {self.range}{share}: widen"


def tuning_edges(chosen: dict, ranges: dict) -> list[Edge]:
    """The tuned keys whose chosen value (or, for a list of per-task choices, any of them) is at
    an edge of the range it was searched in."""
    out = []
    for key, spec in ranges.items():
        values = chosen.get(key)
        values = values if isinstance(values, list) else [values]
        hits = [(v, side) for v, side in ((v, edge(v, spec)) for v in values) if side]
        if hits:
            v, side = hits[0]
            out.append(Edge(key, v, side, describe_range(spec), f"{len(hits)}/{len(values)}" if len(values) > 1 else ""))
    return out
