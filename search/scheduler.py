"""Early stopping that judges a trial only against its own family, and only once it trains every task.

Plain ASHA compares every trial with every other at the same epoch. Two things make that unfair
in a comparison of model families:

- a warm start (one task alone for E epochs) or a curriculum (tasks entering one by one) leaves
  most output heads untrained at first, so such a trial looks like chance at epoch 1 and is
  stopped before it ever trained its tasks;
- families learn at different speeds (a hard model's epoch-1 AUROC says little about its end
  point next to towers'), so a global cutoff spends the budget on whichever family starts fast.

``FamilyASHA`` keeps one ASHA bracket set per family and passes a trial's results to its
family's scheduler only from the first epoch at which every task has had a nonzero loss weight
(the trainer reports ``schedule/tasks_entered``): a trial is first judged at the first rung at or
after that epoch, against what its family reached at that rung.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from mtlsweep.config.identity import model_family
from mtlsweep.search.trial import trial_config

ENTERED = "schedule/tasks_entered"


class FamilyOf:
    """config -> family name: a stratified space's ``family``, else the model family of the
    trial's config. A class, so that Tune can pickle the scheduler into its experiment state."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __call__(self, config: dict[str, Any]) -> str:
        if "family" in config:
            return str(config["family"])
        return model_family(trial_config(config, self.ctx))


class FamilyASHA(FIFOScheduler):
    def __init__(self, family_of: Callable[[dict], str], n_tasks: int, *, metric: str, mode: str = "max",
                 max_t: int, grace_period: int = 1, reduction_factor: float = 2, time_attr: str = "training_iteration"):
        super().__init__()
        self.family_of = family_of
        self.n_tasks = n_tasks
        self._kw = dict(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                        grace_period=min(grace_period, max_t), reduction_factor=reduction_factor)
        self._metric, self._mode = metric, mode
        self._schedulers: dict[str, ASHAScheduler] = {}
        self._family: dict[str, str] = {}
        self._deferred: dict[str, int] = {}          # trial id -> results not judged (tasks still entering)

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        return not (metric and metric != self._metric) and not (mode and mode != self._mode)

    def _scheduler(self, trial) -> ASHAScheduler:
        fam = self._family.get(trial.trial_id)
        if fam is None:
            fam = self._family[trial.trial_id] = self.family_of(trial.config)
        if fam not in self._schedulers:
            self._schedulers[fam] = ASHAScheduler(**self._kw)
        return self._schedulers[fam]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def _entered(self, result: dict) -> bool:
        return result.get(ENTERED, self.n_tasks) >= self.n_tasks

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._entered(result):
            self._deferred[trial.trial_id] = self._deferred.get(trial.trial_id, 0) + 1
            return TrialScheduler.CONTINUE
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        inner = self._scheduler(trial)
        if result and self._entered(result):
            inner.on_trial_complete(tune_controller, trial, result)
        else:
            inner.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def family_of_trial(self, trial_id: str) -> Optional[str]:
        return self._family.get(trial_id)

    def deferred(self, trial_id: str) -> int:
        """How many of the trial's results came before all its tasks had entered (not judged)."""
        return self._deferred.get(trial_id, 0)

    def debug_string(self) -> str:
        return "FamilyASHA: " + "; ".join(f"{fam}: {s.debug_string()}" for fam, s in sorted(self._schedulers.items()))
