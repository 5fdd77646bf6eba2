"""A sweep's objectives on Optuna through Ray Tune: one or several (--objectives), and the
per-task constraint (--constraint-delta).

The sampler is Optuna's TPESampler in every case. It is multi-objective itself (MOTPE: its
"good" trials are the best non-domination ranks), handles the define-by-run spaces with
conditional keys that sweeps use (``group=True`` models each set of keys that occur together),
keeps concurrent trials apart (``constant_liar``), and models from its first few trials, where
NSGA-II spends its whole first generation (50 trials by default) sampling at random and crosses
over only the keys every trial has. A sweep here runs tens of trials, not hundreds.

The constraint reaches Optuna as the trial's own constraint value (``Trial.set_constraint``,
Optuna 5's replacement of the samplers' ``constraints_func``), set by ObjectiveSearch just before
Ray's OptunaSearch tells the study the trial's values: feasible when <= 0, and the samplers rank
an infeasible trial below every feasible one.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import optuna
from ray.tune.search.optuna import OptunaSearch

from mtlsweep.analysis.pareto import SHORTFALL_METRIC, ObjectiveSet, meets_constraint, parse_objectives
from mtlsweep.config.errors import ConfigError
from mtlsweep.training.metrics import DEFAULT_WORST

DEFAULT_OBJECTIVE = "val/auroc_mean"
CONSTRAINT = "worst_shortfall"      # the Optuna constraint's name: worst shortfall below the baseline − δ


def objective_set(args) -> ObjectiveSet:
    """The sweep's objectives from its arguments (SweepArgs): --objectives, else --objective;
    refused in one line before any cluster work."""
    spec = getattr(args, "objectives", None)
    if spec and args.objective not in (DEFAULT_OBJECTIVE, spec):
        raise ConfigError(f"--objective {args.objective} and --objectives {spec}: give one (--objectives "
                          "auroc_mean,epoch_s is --objective multi)")
    flag = "--objectives" if spec else "--objective"
    return parse_objectives(spec or args.objective, getattr(args, "worst", None) or DEFAULT_WORST,
                            getattr(args, "constraint_delta", None), flag=flag)


def tune_objectives(args, has_baseline: bool) -> ObjectiveSet:
    """What one experiment of the sweep searches: the sweep's objectives, or, in a search
    without a baseline (the tuned baseline's own), their plain counterparts, unconstrained."""
    objs = objective_set(args)
    return objs if has_baseline else objs.without_baseline()


class ObjectiveSearch(OptunaSearch):
    """Ray's OptunaSearch that also gives Optuna each trial's constraint value: the trial's
    worst shortfall below its baseline (``val/worst_shortfall``) minus δ; a trial that reported
    none, or NaN, is infeasible (+inf), as the front counts it."""

    def __init__(self, *args, constraint_delta: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._constraint_delta = constraint_delta

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
        delta = getattr(self, "_constraint_delta", None)
        ot_trial = self._ot_trials.get(trial_id)
        if delta is not None and result and not error and ot_trial is not None \
                and trial_id not in self._completed_trials:
            shortfall = result.get(SHORTFALL_METRIC)
            if not meets_constraint(shortfall, delta):
                # NaN or missing: infeasible, as the front marks it.
                ot_trial.set_constraint(CONSTRAINT, float(shortfall) - delta if shortfall is not None
                                        and math.isfinite(float(shortfall)) else math.inf)
            else:       # <= 0 wherever the front counts it feasible (a shortfall of δ to within its tolerance)
                ot_trial.set_constraint(CONSTRAINT, min(float(shortfall) - delta, 0.0))
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(space, objectives: ObjectiveSet, seed: int, num_samples: int) -> ObjectiveSearch:
    """The searcher of a define-by-run ``space`` for ``objectives``, seeded."""
    with warnings.catch_warnings():     # group=True is "experimental" since Optuna 2.8: said once per sweep
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed,
                                             n_startup_trials=min(10, max(2, num_samples // 3)))
    metric, mode = objectives.metric_mode()
    # OptunaSearch with a define-by-run space ignores TuneConfig's metric, so the searcher and
    # the scheduler get theirs directly.
    return ObjectiveSearch(space=space, sampler=sampler, metric=metric, mode=mode,
                           constraint_delta=objectives.constraint_delta)
