"""One Ray Tune experiment over a space or a fixed design: what a sweep's trials and a tuned
baseline's own search both run (Optuna or the grid, the per-family ASHA, retries, resume)."""
from __future__ import annotations

import logging
import os
from typing import Optional

from mlflow.exceptions import MlflowException
from ray import tune
from ray.tune import CLIReporter

from mtlsweep.config import tags as tag
from mtlsweep.config.tags import Role
from mtlsweep.mlflow_server.runs_view import end_run
from mtlsweep.search.grid import GridSpace
from mtlsweep.search.live_view import LiveTrials
from mtlsweep.search.lost_checkpoints import restore_lost_checkpoints
from mtlsweep.search.objectives import make_searcher, tune_objectives
from mtlsweep.search.population import SCHEDULERS, PopulationGenerator, initial_space, population_scheduler
from mtlsweep.search.scheduler import FamilyASHA, FamilyOf
from mtlsweep.search.space import SearchSpace
from mtlsweep.search.trial import SweepContext, run_trial

# Read when Tune runs (tune.run reads both): the new Tune output engine ignores a custom
# reporter, ours shows the metrics that matter here; Tune snapshots the experiment at most every
# second (its "auto" waits >= 10 s), so a killed driver loses at most a second of what trials reported.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
# Ctrl-C and SIGTERM end a sweep alike: a KeyboardInterrupt in the driver, which closes the
# sweep's runs as KILLED (Tune's own handler would return normally, as if the sweep had ended);
# --resume restores from the last experiment snapshot.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def planned_trials(space: "SearchSpace | GridSpace", num_samples: int, arm: Optional[str] = None) -> dict[str, int]:
    """How many trials each arm of the experiment gets: a grid's variants all its points, a
    space's families their turns (trial i goes to family i mod n)."""
    if arm:
        return {arm: space.size * num_samples if isinstance(space, GridSpace) else num_samples}
    if isinstance(space, GridSpace):
        return {v: space.size // max(1, len(space.variants)) * num_samples for v in space.variants}
    names = list(space.families)
    if not names:
        return {"trials": num_samples}
    return {f: len(range(i, num_samples, len(names))) for i, f in enumerate(names)}


def run_experiment(sweep, ctx: SweepContext, space: "SearchSpace | GridSpace", num_samples: int, name: str,
                   stage: str = "trials", arm: Optional[str] = None):
    """One Tune experiment over ``space`` (restored when its state exists), counted into the
    sweep's live view as ``stage`` (every trial as ``arm`` when given); then every child run
    left RUNNING is closed. Returns Tune's ResultGrid."""
    args, cfg = sweep.args, sweep.cfg
    grid = isinstance(space, GridSpace)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx, stores=sweep.datasets),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    objectives = tune_objectives(args, bool(ctx.baselines))   # a baseline's own search has no delta, no constraint
    multi = len(objectives.objectives) > 1
    metric, mode = objectives.metric_mode()         # lists with several objectives: ASHA prunes on the first
    searcher, scheduler, param_space = None, None, space.param_space() if grid else None
    # A population evolves the sweep's trials; a tuned baseline's own search trains each candidate to its end.
    population = args.scheduler in SCHEDULERS and ctx.role == Role.TRIAL
    if not grid and not population:
        searcher = make_searcher(space.define_by_run(), objectives, args.seed, num_samples)
    if population:
        tasks = list(sweep.store_of(cfg).task_names)
        scheduler = population_scheduler(args.scheduler, space, tasks, metric=metric, mode=mode,
                                          interval=args.perturbation_interval, seed=args.seed)
        param_space = initial_space(space, tasks)
        # Every member live at once (a synchronous population waits for all at each boundary), their
        # first values drawn by Tune, seeded; the cluster's resources decide how many train at a time.
        searcher = PopulationGenerator(random_state=args.seed)
    elif args.scheduler == "asha":
        scheduler = FamilyASHA(FamilyOf(ctx), sweep.store_of(cfg).n_tasks, metric=metric[0] if multi else metric,
                               mode=mode[0] if multi else mode,
                               max_t=cfg.train.epochs, grace_period=args.grace_period, reduction_factor=2)
    reporter = CLIReporter(
        metric_columns={"epoch": "epoch", "val/auroc_mean": "auroc", "val/delta_auroc_mean": "dAUROC",
                        "val/tasks_improved": "improved", "cost/epoch_s": "epoch_s"},
        parameter_columns=space.keys[:6], max_report_frequency=15, metric="val/auroc_mean", mode="max",
        sort_by_metric=True)
    # Below --verbose 2 the live view (LiveTrials) is the sweep's only output; Tune's tables come back above it.
    run_config = tune.RunConfig(
        name=name, storage_path=sweep.storage, verbose=max(0, args.verbose - 1), progress_reporter=reporter,
        callbacks=[LiveTrials(stage, planned_trials(space, num_samples, arm), cfg.train.epochs, arm)],
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_kept(args.perturbation_interval, population)))
    path = f"{sweep.storage.rstrip('/')}/{name}"
    if sweep.restoring and tune.Tuner.can_restore(path):
        for lost in restore_lost_checkpoints(path):
            logging.getLogger("mtlsweep").info("restored %s: Tune had deleted it after the last snapshot", lost)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, run_config=run_config, param_space=param_space,
                           tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=None if population else args.max_concurrent, reuse_actors=args.reuse_actors))
    results = tuner.fit()
    # Every result Tune records carries its trial's id; a trial that never reported ran no epoch.
    known = {(r.metrics or {}).get("trial_id") for r in results} - {None}
    if sweep.client is not None:
        _close_stopped_runs(sweep.client, sweep.experiment_id, sweep.parent_id, known, ctx.role)
    return results


def _close_stopped_runs(client, exp_id: str, parent_id: str, known_trials: set, role: str = Role.TRIAL) -> None:
    """Close the child runs still RUNNING after the sweep. A trial Tune knows was stopped by
    its scheduler (its best/ metrics were logged as it went): FINISHED. A trial a killed
    driver had started after its last experiment snapshot is unknown to the restored sweep:
    its run is KILLED and tagged, never counted as a result. A FINISHED run is never touched:
    finished work stays finished (a restored trial of its configuration adopts it)."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`{tag.PARENT}` = '{parent_id}' and tags.{tag.ROLE} = '{role}' "
                              "and attributes.status = 'RUNNING'", max_results=5000)
    for r in runs:
        stopped = r.data.tags.get(tag.TRIAL_ID) in known_trials
        mark = (tag.STOPPED_EARLY, "scheduler") if stopped else (tag.ORPHANED, "driver killed before the trial was recorded")
        try:
            client.set_tag(r.info.run_id, *mark)
        except MlflowException:
            # The trial's own stopped_early() may be closing it at this very moment (SQLite
            # refuses the second insert of the same tag): its close wins.
            if client.get_run(r.info.run_id).info.status != "RUNNING":
                continue
        end_run(client, r.info.run_id, "FINISHED" if stopped else "KILLED",
                echo=logging.getLogger("mtlsweep").info)


def checkpoints_kept(interval: int, population: bool) -> int:
    """How many of a trial's checkpoints Tune keeps (one per epoch).

    A few: a driver killed between checkpoints must find the one its last experiment snapshot
    names (keeping 1 lost that race in a test). In a population, a member that copies another
    restores the donor's checkpoint of the barrier epoch, possibly only after the donor has
    trained on to the next barrier (fewer slots than members): the donor's checkpoints of a whole
    interval more are kept, or that restore finds its checkpoint deleted and the member fails."""
    return 3 + (interval if population else 0)
