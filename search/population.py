"""Population-based curriculum search: PBT and PB2 mutate a run's schedule as it trains.

A population of trials starts from values drawn from the space; every ``--perturbation-interval``
epochs the trials in the bottom quantile copy the checkpoint of one in the top quantile (its
model, optimizer moments, schedule state and early-stopping history) and go on with that trial's
schedule parameters perturbed (PBT: ×0.8 or ×1.2, or redrawn; PB2: chosen by a GP bandit over the
population's recent progress). The space's dimensions are what may change between epochs
without rebuilding the model:

- ``optim.lr`` and ``optim.weight_decay`` (the optimizer's moments carry over, its step size and
  decay are the new config's);
- ``schedule.task_weights``: one loss weight per task (``schedule.weighting: fixed``), each its own
  dimension ``schedule.task_weights@<task>`` drawn from the range given.

Every perturbation is synchronous (all trials at the same epoch), so a trial that copies another
continues from exactly the epoch it was at and its MLflow run holds one value per epoch. A trial
keeps its own MLflow run through every copy; its schedule is logged each epoch
(``schedule/<key>``), every copy as a ``pbt.exploit.<epoch>`` tag naming the trial copied and what
changed, and the population's schedules are plotted on the sweep's parent run.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search.basic_variant import BasicVariantGenerator

from mtlsweep.config.errors import ConfigError
from mtlsweep.search.space import SearchSpace
from mtlsweep.training.callbacks import Callback

SCHEDULERS = ("pbt", "pb2")
TASK_WEIGHTS = "schedule.task_weights"
TASK_SEP = "@"            # schedule.task_weights@<task>: not "/", which PB2 reads as nesting
MUTABLE = ("optim.lr", "optim.weight_decay", TASK_WEIGHTS)
# What the engine logs each epoch of the schedule it trained with (config key -> metric).
HISTORY = {"optim.lr": "optim/lr", "optim.weight_decay": "optim/weight_decay"}
TASK_WEIGHT_METRIC = "schedule/task_weight/"
EXPLOIT_TAG = "pbt.exploit."
PLOT = "population_schedules.png"


def task_key(task: str) -> str:
    return f"{TASK_WEIGHTS}{TASK_SEP}{task}"


def check_population_space(space, kind: str, base_weighting: str, epochs: int, interval: int) -> None:
    """Refuse, before any cluster work, a space a population cannot search: one that is not a
    plain space of schedule parameters the run can change between epochs."""
    where = f"{getattr(space, 'source', 'space')}: --scheduler {kind}"
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"{where}: a population evolves over a space of ranges, not a grid design")
    if space.families:
        raise ConfigError(f"{where}: a population evolves one family; remove families: and run one sweep per family")
    for d in space.dims:
        if d.key not in MUTABLE:
            raise ConfigError(f"{where}: {d.key} cannot change while a model trains; a population mutates only "
                              f"{', '.join(MUTABLE)} (fix the others in the base config or with --set)")
        if d.when:
            raise ConfigError(f"{where}: {d.key}: a population's dimensions apply to every trial (no when:)")
        if kind == "pb2" and d.type == "categorical":
            raise ConfigError(f"{where}: {d.key}: PB2 models continuous ranges only; give low/high, or use pbt")
        if d.key == TASK_WEIGHTS and (d.type == "categorical" or (d.low is not None and d.low <= 0)):
            raise ConfigError(f"{where}: {TASK_WEIGHTS}: give a range of positive weights "
                              "(e.g. {type: loguniform, low: 0.25, high: 4.0})")
    if not space.dims:
        raise ConfigError(f"{where}: the space has no dimension to mutate")
    if any(d.key == TASK_WEIGHTS for d in space.dims) and base_weighting not in ("equal", "fixed"):
        raise ConfigError(f"{where}: {TASK_WEIGHTS} is mutated, which is schedule.weighting fixed; the base config "
                          f"has schedule.weighting={base_weighting}")
    if interval < 1 or interval >= epochs:
        raise ConfigError(f"{where}: --perturbation-interval {interval} must be >= 1 and below train.epochs "
                          f"({epochs}), or no trial is ever perturbed")


def _expanded(space: SearchSpace, task_names: Sequence[str]) -> list[tuple[str, Any]]:
    """(Tune config key, dimension) of every mutated value: a task weight per task."""
    out = []
    for d in space.dims:
        if d.key == TASK_WEIGHTS:
            out += [(task_key(t), d) for t in task_names]
        else:
            out.append((d.key, d))
    return out


def _domain(d):
    if d.type == "categorical":
        return tune.choice(list(d.values))
    if d.type == "int":
        return tune.randint(int(d.low), int(d.high) + 1)
    if d.log or d.type == "loguniform":
        return tune.loguniform(d.low, d.high)
    return tune.uniform(d.low, d.high)


def initial_space(space: SearchSpace, task_names: Sequence[str]) -> dict[str, Any]:
    """Tune's param_space: where each member of the population starts."""
    return {k: _domain(d) for k, d in _expanded(space, task_names)}


class ClipToRange:
    """PBT perturbs by factors with no bound: keep every value inside the range searched, so
    the tuning certificate's edges mean what they say. A class, so Tune can pickle it."""

    def __init__(self, bounds: dict[str, tuple[float, float, bool]]):
        self.bounds = bounds

    def __call__(self, config: dict) -> dict:
        for k, (low, high, is_int) in self.bounds.items():
            if k in config and isinstance(config[k], (int, float)):
                v = min(max(config[k], low), high)
                config[k] = int(round(v)) if is_int else float(v)
        return config


class ResumableSync:
    """Ray's synchronous PBT (2.60), kept in step after a restore and moving after a member ends early.

    After a restore: Tune does not save the scheduler's state, and its snapshot catches the members
    between two barriers, each at the last checkpoint it had reported (one paused at epoch 2, another
    still at 1). A fresh scheduler's first barrier lies behind them all, so it would perturb them at
    once: a member at epoch 1 copying one at epoch 2 goes on at epoch 3, and its run never holds an
    epoch 2. The first barrier is therefore put past the latest epoch any restored member reached
    (the perturbation the kill interrupted is not made; every member trains up to the next one).
    Once perturbed, the next barrier would become max(barrier + interval, latest epoch), the epoch
    every trial is already paused at, and no trial would ever run again: it is kept one interval
    past the latest epoch any trial reached (in an uninterrupted run that is what it already is).
    Relies on PBT's private fields, pinned with Ray."""

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        if self._synch and not trial.is_finished():
            reached = restored_time(trial, self._time_attr)
            if reached >= self._next_perturbation_sync:
                k = self._perturbation_interval
                self._next_perturbation_sync = (reached // k + 1) * k

    def on_trial_result(self, tune_controller, trial, result):
        before = self._next_perturbation_sync
        decision = super().on_trial_result(tune_controller, trial, result)
        if self._synch and self._next_perturbation_sync != before:
            latest = max(s.last_train_time for s in self._trial_state.values())
            if self._next_perturbation_sync <= latest:
                self._next_perturbation_sync = latest + self._perturbation_interval
        return decision

    # A member that ends (early stopping: its last result says done, which Tune does not show the
    # scheduler; or an error) while every other live member waits at the barrier: Ray perturbs only
    # when a result reaches the barrier, so none would ever come and the population would wait
    # forever. Once the ended member is no longer live (it still is in its own end callbacks), the
    # last result of a waiting member is given again, which performs the perturbation.
    def choose_trial_to_run(self, tune_controller):
        trial = super().choose_trial_to_run(tune_controller)
        if trial is None and self._synch and self._release_barrier(tune_controller):
            trial = super().choose_trial_to_run(tune_controller)
        return trial

    def _release_barrier(self, tune_controller) -> bool:
        from ray.tune.experiment import Trial
        barrier = self._next_perturbation_sync
        live = [t for t in tune_controller.get_live_trials() if t in self._trial_state and not t.is_finished()]
        waiting = [t for t in live if t.status == Trial.PAUSED and self._trial_state[t].last_result
                   and self._trial_state[t].last_train_time >= barrier]
        if not live or len(waiting) < len(live):
            return False
        # Tune counts a failed trial among the live ones, and PBT waits for every live one to reach
        # the barrier: an ended member is taken as there (it is in no quantile, being finished).
        for t, state in self._trial_state.items():
            if t.is_finished() and state.last_train_time < barrier:
                state.last_train_time = barrier
        first = min(waiting, key=lambda t: self._trial_state[t].last_train_time)
        self.on_trial_result(tune_controller, first, self._trial_state[first].last_result)
        return True


def restored_time(trial, time_attr: str) -> int:
    """How far a trial added to the scheduler had trained: 0 for a new one; for one restored from an
    experiment snapshot, the time of its last result or of the checkpoint it resumes from (a copied
    one's, when the kill came between a copy and the restart), whichever is later."""
    meta = trial.run_metadata          # not trial.last_result, which may wait for a new trial's actor
    times = [(meta.last_result or {}).get(time_attr)]
    latest = meta.checkpoint_manager.latest_checkpoint_result
    if latest is not None:
        times.append((latest.metrics or {}).get(time_attr))
    return max((int(t) for t in times if isinstance(t, (int, float))), default=0)


class PopulationGenerator(BasicVariantGenerator):
    """The population's members, drawn once, seeded, with their workers kept between barriers.

    Tune (2.60) keeps a stopped trial's actor for the next trial only while its search algorithm
    is not finished, and a population's is finished once its members are drawn. A synchronous
    population pauses every member at every barrier, so most restarts started a new worker process
    (Python, torch and MLflow imported again). The search counts as finished here only once every
    member has ended, so a paused member's worker is reused by the next member to train:
    bench/population_restart.py measures a population then costing what a plain sweep of the same
    trials does, where Ray's own generator cost 1.37x."""

    def is_finished(self) -> bool:
        return super().is_finished() and not self._live_trials


class SyncedPBT(ResumableSync, PopulationBasedTraining):
    pass


class SyncedPB2(ResumableSync, PB2):
    """PB2 with its GP over log values for the ranges searched on a log scale.

    Ray's PB2 normalizes each bound linearly, so over a learning rate in [1e-3, 3e-2] the GP could
    hardly tell 1e-3 from 3e-3 (7 % of the range). The bounds, the population's recorded values and
    the clone's config it explores from are given to PB2 as logarithms for ``log_keys``; the values
    it picks are exponentiated back and clipped to the range before a trial sees them."""

    def __init__(self, *, log_keys: Sequence[str] = (), clip: Optional["ClipToRange"] = None, **kwargs):
        super().__init__(**kwargs)
        self._log_keys = tuple(log_keys)
        self._clip = clip
        for k in self._log_keys:
            low, high = self._hyperparam_bounds_flat[k]
            self._hyperparam_bounds_flat[k] = [math.log(low), math.log(high)]

    def _save_trial_state(self, state, time, result, trial):
        score = super()._save_trial_state(state, time, result, trial)
        if self._log_keys and len(self.data):      # the row PB2 just recorded, in the GP's space
            row = self.data.index[-1]
            for k in self._log_keys:
                self.data.at[row, k] = math.log(self.data.at[row, k])
        return score

    def _get_new_config(self, trial, trial_to_clone):
        raw = trial_to_clone.config
        # PB2 explores from the clone's values (and returns them as they are when it has no data yet).
        trial_to_clone.config = {**raw, **{k: math.log(raw[k]) for k in self._log_keys if k in raw}}
        try:
            config, operations = super()._get_new_config(trial, trial_to_clone)
        finally:
            trial_to_clone.config = raw
        config = {**config, **{k: math.exp(config[k]) for k in self._log_keys if k in config}}
        return (self._clip(config) if self._clip else config), operations


def population_scheduler(kind: str, space: SearchSpace, task_names: Sequence[str], *, metric: str, mode: str,
                         interval: int, seed: int):
    """A synchronous PBT or PB2 over the space's schedule parameters, its explorations seeded."""
    random.seed(seed)          # PBT draws donors, factors and resamples from the driver's random module
    dims = _expanded(space, task_names)
    bounds = {k: (d.low, d.high, d.type == "int") for k, d in dims if d.type != "categorical"}
    common = dict(time_attr="training_iteration", metric=metric, mode=mode, perturbation_interval=interval,
                  quantile_fraction=0.25, synch=True, custom_explore_fn=ClipToRange(bounds))
    if kind == "pb2":
        # Clipped after its values are back from log space, not inside PB2's exploration.
        return SyncedPB2(hyperparam_bounds={k: [lo, hi] for k, (lo, hi, _) in bounds.items()},
                         log_keys=[k for k, d in dims if d.log or d.type == "loguniform"],
                         clip=common.pop("custom_explore_fn"), **common)
    # A list, not a Domain, for a categorical: PBT then steps to a neighbouring value instead of
    # multiplying the value by 0.8 or 1.2 off its grid.
    mutations = {k: list(d.values) if d.type == "categorical" else _domain(d) for k, d in dims}
    return SyncedPBT(hyperparam_mutations=mutations, resample_probability=0.25, **common)


def fold_task_weights(sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's config with its per-task weights gathered into ``schedule.task_weights``."""
    prefix = TASK_WEIGHTS + TASK_SEP
    weights = {k[len(prefix):]: float(v) for k, v in sampled.items() if k.startswith(prefix)}
    if not weights:
        return sampled
    out = {k: v for k, v in sampled.items() if not k.startswith(prefix)}
    out[TASK_WEIGHTS] = weights
    out["schedule.weighting"] = "fixed"
    return out


def mutable_keys(space: SearchSpace) -> tuple[str, ...]:
    """The config keys a resumed trial of this population may find changed (check_resume reads
    them; a mapping of task weights flattens under its key)."""
    keys = tuple(d.key for d in space.dims)
    if TASK_WEIGHTS in keys:
        keys += (TASK_WEIGHTS + ".", "schedule.weighting")
    return keys


@dataclass
class CopiedCheckpoint:
    """What a trial's copy of a better trial's checkpoint holds, read once."""
    epoch: int                      # the last epoch it trained
    best_epoch: int
    history: list[dict]
    schedule: dict[str, Any]        # the mutated keys, as that trial had them


def copied_checkpoint(path: Path, mutable: Sequence[str]) -> CopiedCheckpoint:
    from mtlsweep.config.run import RunConfig
    from mtlsweep.training.checkpoint import load_checkpoint
    from mtlsweep.training.engine import is_mutable
    ck = load_checkpoint(path, map_location="cpu", mmap=True)
    flat = RunConfig.model_validate(ck["config"]).flatten() if "config" in ck else {}
    return CopiedCheckpoint(int(ck.get("epoch", 0)), int(ck.get("best_epoch", 0)), list(ck.get("history", [])),
                            {k: v for k, v in flat.items() if is_mutable(k, mutable)})


class CopiedLineage(Callback):
    """Once the trial's own run is open: the copy tagged, and the best/ metrics of the lineage it
    now continues logged, since the model it will be tested with is that lineage's best."""

    def __init__(self, logger, copy: CopiedCheckpoint, donor: str, donor_run: Optional[str], config: dict):
        self.logger, self.copy, self.donor, self.donor_run, self.config = logger, copy, donor, donor_run, config

    def on_train_start(self, info) -> None:
        c = self.copy
        record_exploit(self.logger.client, self.logger.run_id, c.epoch + 1, self.donor, self.donor_run, c.schedule,
                       {k: self.config.get(k) for k in c.schedule})
        self.logger.adopt_best(c.history, c.best_epoch, c.epoch)


def record_exploit(client, run_id: str, epoch: int, donor: str, donor_run: Optional[str], before: dict,
                   after: dict) -> None:
    """Tag the copy a trial made: from which trial, at which epoch, what its schedule became. The
    task weights are counted, not listed (a tag holds 5,000 characters; 164 of them would not
    fit): each is in the run's ``schedule/task_weight/<task>`` metrics by epoch."""
    changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
    weights = [k for k in changed if k.startswith(TASK_WEIGHTS)]
    record = {"from_trial": donor, "from_run": donor_run,
              "changed": {k: v for k, v in changed.items() if k not in weights},
              "task_weights_changed": len(weights)}
    client.set_tag(run_id, f"{EXPLOIT_TAG}{epoch:04d}", json.dumps(record, default=str))


def exploits(tags: dict[str, str]) -> list[tuple[int, dict]]:
    """(epoch, record) of every copy a trial's run made, in order."""
    out = []
    for k, v in tags.items():
        if k.startswith(EXPLOIT_TAG):
            try:
                out.append((int(k[len(EXPLOIT_TAG):]), json.loads(v)))
            except ValueError:
                continue
    return sorted(out, key=lambda e: e[0])


def plot_population(client, experiment_id: str, parent_id: str, out_dir: Path) -> Optional[Path]:
    """One panel per schedule parameter: each trial's value by epoch, its copies marked, the best
    trial's line drawn thick; logged to the sweep's parent run. None when no trial logged one."""
    from mtlsweep.config import tags as tag
    runs = client.search_runs([experiment_id], max_results=1000, filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.{tag.ROLE} = 'trial'"))
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    best, best_score = None, -math.inf
    for r in runs:
        name = r.info.run_name or r.info.run_id[:8]
        for key in r.data.metrics:
            if key in HISTORY.values() or key.startswith(TASK_WEIGHT_METRIC):
                hist = client.get_metric_history(r.info.run_id, key)
                series.setdefault(key, {})[name] = sorted((m.step, m.value) for m in hist)
        score = r.data.metrics.get("best/val/auroc_mean", math.nan)
        if math.isfinite(score) and score > best_score:
            best, best_score = name, score
    # A value no trial ever changed (a decay the space does not search) is not part of the schedule.
    series = {k: v for k, v in series.items() if len({y for pts in v.values() for _, y in pts}) > 1}
    if not series:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted(series)
    shown = keys if len(keys) <= 12 else [k for k in keys if not k.startswith(TASK_WEIGHT_METRIC)][:6] \
        + [k for k in keys if k.startswith(TASK_WEIGHT_METRIC)][:6]
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.2 * len(shown)), sharex=True, squeeze=False)
    exploit_epochs = {r.info.run_name or r.info.run_id[:8]: [e for e, _ in exploits(r.data.tags)] for r in runs}
    for ax, key in zip(axes[:, 0], shown):
        for name, points in sorted(series[key].items()):
            xs, ys = zip(*points)
            ax.step(xs, ys, where="post", lw=2.5 if name == best else 1.0, alpha=1.0 if name == best else 0.6,
                    label=name if name == best else None)
            marks = [(x, y) for x, y in points if x in exploit_epochs.get(name, [])]
            if marks:
                ax.scatter(*zip(*marks), marker="v", s=18, color="k", zorder=3)
        if all(y > 0 for pts in series[key].values() for _, y in pts):
            ax.set_yscale("log")      # learning rates, decays and loss weights are searched on a log scale
        ax.set_ylabel(key, fontsize=8)
    axes[0, 0].set_title(f"schedules of the population ({len(runs)} trials; ▼ a copy of a better trial; "
                         f"thick: the best, {best})", fontsize=9)
    axes[-1, 0].set_xlabel("epoch")
    if len(keys) > len(shown):
        fig.text(0.01, 0.005, f"{len(keys) - len(shown)} more task weights in each trial's metrics", fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    client.log_artifact(parent_id, str(path))
    logging.getLogger("mtlsweep").info("population schedules plotted: %s", path)
    return path
