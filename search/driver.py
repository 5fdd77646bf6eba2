"""The sweep driver: baselines first, then Optuna-searched trials on Ray Tune, then a summary.

Runs the same whether the driver is on a laptop (embedded Ray), on a cluster head under
`ray submit`, or under `ray job submit`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

# The new Tune output engine ignores a custom reporter; ours shows the metrics that matter here.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune snapshots the experiment at most every second (its "auto" waits >= 10 s): a killed
# driver then loses at most a second of what trials reported, not whole finished trials.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

from mtlsweep.config.identity import PROTOCOL_TAG, RUN_TAG, Protocol

from mtlsweep.mlflow_server.registry import Baseline
from mtlsweep.search.grid import GridSpace
from mtlsweep.search.space import SearchSpace, load_space
from mtlsweep.search.trial import SweepContext, run_trial
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import RunConfig, load_config

@dataclass
class SweepArgs:
    base: str
    space: str
    num_samples: Optional[int] = None      # Optuna: trials (default 12); grid: repeats of the grid (default 1)
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: str = "asha"
    grace_period: int = 1
    objective: str = "val/auroc_mean"
    name: Optional[str] = None
    storage: Optional[str] = None
    resume: bool = False
    address: Optional[str] = None
    tracking_uri: Optional[str] = None
    workspace: str = "workspace"
    seed: int = 0
    baseline_seeds: Sequence[int] = ()
    baseline: str = "tuned"                # tuned: its own search, as each family; fixed: the base config's
    baseline_trials: Optional[int] = None  # default: the trials of each family
    max_failures: int = 2
    references: Sequence[str] = ()         # reference families fitted once per data set beside the trials
    overrides: Sequence[str] = ()
    extra_callbacks: tuple = ()
    verbose: int = 1
    reuse_actors: bool = True


@dataclass
class SweepResult:
    name: str
    storage: str
    parent_run_id: Optional[str]
    baseline: Optional[Baseline]
    summary: list[dict] = field(default_factory=list)
    baselines: dict[str, Baseline] = field(default_factory=dict)
    protocol: Optional[Protocol] = None
    n_trials: int = 0
    n_errors: int = 0


def _validate(args: SweepArgs) -> tuple[RunConfig, "SearchSpace | GridSpace"]:
    cfg = load_config(args.base, list(args.overrides))
    space = load_space(args.space)
    space.check_against(cfg)   # "@baseline" checkpoints are resolved per trial
    if args.objective not in ("val/auroc_mean", "val/auprc_mean", "val/delta_auroc_mean", "multi"):
        raise ConfigError(f"--objective {args.objective!r}: use val/auroc_mean, val/auprc_mean, "
                          "val/delta_auroc_mean or multi (AUROC up, epoch time down)")
    if args.scheduler not in ("asha", "none"):
        raise ConfigError(f"--scheduler {args.scheduler!r}: use asha or none")
    if (args.num_samples is not None and args.num_samples < 1) or args.max_concurrent < 1:
        raise ConfigError("--num-samples and --max-concurrent must be >= 1")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise ConfigError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if args.baseline not in ("tuned", "fixed"):
        raise ConfigError(f"--baseline {args.baseline!r}: use tuned (its own search, as each family) or fixed")
    if args.baseline_trials is not None and args.baseline_trials < 1:
        raise ConfigError("--baseline-trials must be >= 1")
    from mtlsweep.search.references import parse_references, reference_config
    for name in parse_references(",".join(args.references)):
        reference_config(cfg, name, cfg.data.path, args.cpus_per_trial)
    return cfg, space


# Config keys whose value names one task, by index or by name.
TASK_KEYS = ("schedule.warm_start.task", "init.task")


def _check_task_choices(space: "SearchSpace | GridSpace", stores: dict) -> None:
    """Every task a space may choose (a warm-start task, an init task) exists in every data set
    of the sweep: refused here, before any trial, not as failed trials."""
    if isinstance(space, GridSpace):
        choices = {k: list(v) for k, v in space.grid.items() if k in TASK_KEYS}
        for over in space.variants.values():
            for k in TASK_KEYS:
                if k in over:
                    choices.setdefault(k, []).append(over[k])
    else:
        choices = {d.key: d.values if d.type == "categorical" else list(range(int(d.low), int(d.high) + 1))
                   for d in space.dims if d.key in TASK_KEYS}
    for key, values in choices.items():
        for path, store in stores.items():
            names = list(store.task_names)
            for v in values:
                if v is None:
                    continue
                ok = (0 <= v < len(names)) if isinstance(v, int) and not isinstance(v, bool) else v in names
                if not ok:
                    raise ConfigError(f"{space.source}: {key}: task {v!r} is not in {path} ({len(names)} tasks: "
                                      f"indices 0..{len(names) - 1} or names such as {', '.join(names[:3])})")


def _check_trunks(space: "SearchSpace | GridSpace", base: RunConfig, stores: dict) -> None:
    """Every trunk the design may build (each model.arch.preset it names, the base's own) fits
    the sequences of every data set: refused here, before any trial, not as failed trials."""
    from mtlsweep.models.arch import plan
    if isinstance(space, GridSpace):
        presets = [o["model.arch.preset"] for o in space.variants.values() if o.get("model.arch.preset")]
        presets += [v for k, vs in space.axes.items() if k == "model.arch.preset" for v in vs if v]
    else:
        presets = [v for d in space.dims if d.key == "model.arch.preset" for v in (d.values or []) if v]
    for preset in [None, *dict.fromkeys(presets)]:
        cfg = base.with_overrides({"model.arch.preset": preset}) if preset else base
        for path, store in stores.items():
            try:
                plan(cfg.model.model_copy(update={"sharing": cfg.model.sharing.model_copy(
                    update={"shared_layers": 0})}), store.n_tasks, 4, store.seq_len)
            except ValueError as exc:
                where = f"model.arch.preset={preset}" if preset else "the base config's trunk"
                raise ConfigError(f"{space.source}: {where} does not fit {path} ({store.seq_len} bp): "
                                  f"{str(exc).splitlines()[0]}") from None


def init_ray(address: Optional[str], num_cpus: Optional[int] = None):
    """Connect to the cluster named (--address ADDR|auto, or RAY_ADDRESS), else start an embedded
    one on this machine's cores: never a cluster nobody named, which may be another sweep's and
    end under this one."""
    import ray
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    start_embedded(num_cpus)


def start_embedded(num_cpus: Optional[int] = None) -> None:
    """A Ray cluster of this process, on this machine's cores."""
    import ray
    from mtlsweep.search.ray_leftovers import end_orphaned_agents
    ended = end_orphaned_agents()          # left by an earlier embedded cluster's killed driver
    if ended:
        print(f"ended {len(ended)} Ray agent(s) an earlier killed sweep left behind (pids {', '.join(map(str, ended))})")
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             object_store_memory=min(2 * 1024**3, 512 * 1024**2 * max(1, (num_cpus or os.cpu_count() or 1))),
             log_to_driver=True)


def run_sweep(args: SweepArgs, log=print) -> SweepResult:
    from mlflow.tracking import MlflowClient

    from mtlsweep.data.store import open_dataset
    from mtlsweep.mlflow_server.run_logger import get_or_create_experiment
    from mtlsweep.mlflow_server.server import check_reachable, resolve_tracking_uri
    from mtlsweep.search.baseline_search import Sweep, ensure_baselines, sweep_protocol

    cfg, space = _validate(args)                       # before any cluster work
    grid = isinstance(space, GridSpace)
    # Trials chdir into their own directories: every path they read must be absolute.
    absolute = {"data.path": cfg.data.path, "train.out_dir": cfg.train.out_dir, "gbm.cache_dir": cfg.gbm.cache_dir,
                "gbm.motif_file": cfg.gbm.motif_file}
    cfg = cfg.with_overrides({k: str(Path(v).resolve()) for k, v in absolute.items() if v and "://" not in v})
    if grid:      # a design may cross data sets: every path absolute, every store opened once
        space.resolve_paths()
    paths = [cfg.data.path] + (space.data_paths() if grid else [])
    # The data, and what the design asks of it, are checked before anything is written.
    stores = {p: open_dataset(p).select_tasks(cfg.data.tasks) for p in dict.fromkeys(paths)}
    _check_task_choices(space, stores)
    _check_trunks(space, cfg, stores)
    num_samples = args.num_samples or (1 if grid else 12)
    workspace = Path(args.workspace).resolve()
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, args.tracking_uri, default_dir=str(workspace))
    check_reachable(tracking_uri)
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    storage = args.storage or str(workspace / "ray_results")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    state_file = workspace / "sweeps" / f"{name}.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    restoring = bool(state)
    if args.resume and not restoring:
        raise ConfigError(f"--resume: no sweep named {name!r} in {state_file.parent}")

    if args.gpus_per_trial > 0 and cfg.train.device == "cpu":
        cfg = cfg.with_overrides({"train.device": "auto"})
    protocol, baseline_space = sweep_protocol(args, space, cfg, num_samples)

    init_ray(args.address, None)
    client = MlflowClient(tracking_uri)
    exp_id = get_or_create_experiment(client, cfg.tracking.experiment)

    if restoring:
        parent_id = state["parent_run_id"]
        log(f"sweep {name}: resuming (MLflow parent run {parent_id})")
    else:
        parent = client.create_run(exp_id, run_name=name, tags={"role": "sweep", "sweep": name,
                                                                PROTOCOL_TAG: protocol.describe()})
        parent_id = parent.info.run_id
        client.log_param(parent_id, "sweep.num_samples", num_samples)
        client.log_param(parent_id, "sweep.search", "grid" if grid else "optuna")
        client.log_param(parent_id, "sweep.objective", args.objective)
        client.log_param(parent_id, "sweep.scheduler", args.scheduler)
        client.log_param(parent_id, "sweep.baseline", protocol.describe()[:500])
        client.log_artifact(parent_id, str(Path(args.space).resolve()))
        client.log_artifact(parent_id, str(Path(args.base).resolve()))
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(
            {"parent_run_id": parent_id, "base": str(Path(args.base).resolve()),
             "space": str(Path(args.space).resolve()), "tracking_uri": tracking_uri, "storage": storage},
            indent=1))

    sweep = Sweep(args=args, cfg=cfg, stores=stores, client=client, experiment_id=exp_id, tracking_uri=tracking_uri,
                  parent_id=parent_id, name=name, storage=storage, workspace=workspace, restoring=restoring, log=log)
    baselines = ensure_baselines(sweep, space, protocol, baseline_space)
    first = next(iter(baselines.values()))
    client.set_tag(parent_id, RUN_TAG, first.run_id)
    references = {"@baseline": first.checkpoint} if first.checkpoint else {}

    ctx = SweepContext(base=cfg.flatten(), tracking_uri=tracking_uri, experiment=cfg.tracking.experiment,
                       parent_run_id=parent_id, sweep_name=name, references=references,
                       extra_callbacks=tuple(args.extra_callbacks), cpus_per_trial=args.cpus_per_trial,
                       variants=space.variants if grid else {}, families={} if grid else space.families,
                       baselines={k: (b.run_id, b.auroc) for k, b in baselines.items()}, tuned_keys=protocol.free,
                       ray_logs=args.verbose >= 2, ranges=space.ranges())
    results = fit(sweep, ctx, space, num_samples, name)
    n_errors = sum(1 for r in results if r.error is not None)
    if args.references:
        from mtlsweep.search.references import fit_references
        fit_references(sweep, list(args.references), (space.data_paths() if grid else []) or [cfg.data.path],
                       baselines, protocol.free)
    from mtlsweep.search.summary import summarize_sweep
    summary = summarize_sweep(tracking_uri, cfg.tracking.experiment, parent_id, workspace / "compare" / name, log=log)
    client.set_terminated(parent_id, "FINISHED" if n_errors == 0 else "FAILED")
    return SweepResult(name, f"{storage.rstrip('/')}/{name}", parent_id, first, summary, n_trials=len(results),
                       n_errors=n_errors, baselines=baselines, protocol=protocol)


def fit(sweep, ctx: SweepContext, space: "SearchSpace | GridSpace", num_samples: int, name: str):
    """One Tune experiment over ``space`` (restored when its state exists); then every child
    run left RUNNING is closed. Returns Tune's ResultGrid."""
    import optuna
    from ray import tune
    from ray.tune import CLIReporter
    from ray.tune.search.optuna import OptunaSearch

    from mtlsweep.search.scheduler import FamilyASHA, FamilyOf

    args, cfg = sweep.args, sweep.cfg
    grid = isinstance(space, GridSpace)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx, stores=sweep.stores),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    multi = args.objective == "multi"
    objective = args.objective if ctx.baselines or args.objective in ("val/auroc_mean", "val/auprc_mean", "multi") \
        else "val/auroc_mean"                        # a baseline's search has no delta to maximize
    metric = ["val/auroc_mean", "cost/epoch_s"] if multi else objective
    mode = ["max", "min"] if multi else "max"
    searcher = None
    if not grid:
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=args.seed,
                                             n_startup_trials=min(10, max(2, num_samples // 3)))
        # OptunaSearch with a define-by-run space ignores TuneConfig's metric, so the searcher and
        # the scheduler get theirs directly; with two objectives ASHA prunes on the first.
        searcher = OptunaSearch(space=space.define_by_run(), sampler=sampler, metric=metric, mode=mode)
    scheduler = None
    if args.scheduler == "asha":
        scheduler = FamilyASHA(FamilyOf(ctx), sweep.store_of(cfg).n_tasks, metric=metric[0] if multi else metric, mode="max",
                               max_t=cfg.train.epochs, grace_period=args.grace_period, reduction_factor=2)
    reporter = CLIReporter(
        metric_columns={"epoch": "epoch", "val/auroc_mean": "auroc", "val/delta_auroc_mean": "dAUROC",
                        "val/tasks_improved": "improved", "cost/epoch_s": "epoch_s"},
        parameter_columns=space.keys[:6], max_report_frequency=15, metric="val/auroc_mean", mode="max",
        sort_by_metric=True)
    run_config = tune.RunConfig(
        name=name, storage_path=sweep.storage, verbose=args.verbose, progress_reporter=reporter,
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        # Keep a few: a driver killed between checkpoints must find the one its last experiment
        # snapshot names (num_to_keep=1 lost that race in a test); checkpoints are one epoch each.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3))
    path = f"{sweep.storage.rstrip('/')}/{name}"
    if sweep.restoring and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, run_config=run_config, param_space=space.param_space() if grid else None,
                           tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=args.max_concurrent, reuse_actors=args.reuse_actors))
    results = tuner.fit()
    # Every result Tune records carries its trial's id; a trial that never reported ran no epoch.
    known = {(r.metrics or {}).get("trial_id") for r in results} - {None}
    _close_stopped_runs(sweep.client, sweep.experiment_id, sweep.parent_id, known, ctx.role)
    return results


def _close_stopped_runs(client, exp_id: str, parent_id: str, known_trials: set, role: str = "trial") -> None:
    """Close the child runs still RUNNING after the sweep. A trial Tune knows was stopped by
    its scheduler (its best/ metrics were logged as it went): FINISHED. A trial a killed
    driver had started after its last experiment snapshot is unknown to the restored sweep:
    its run is KILLED and tagged, never counted as a result. A FINISHED run is never touched:
    finished work stays finished (a restored trial of its configuration adopts it)."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.role = '{role}' "
                              "and attributes.status = 'RUNNING'", max_results=5000)
    from mlflow.exceptions import MlflowException
    for r in runs:
        stopped = r.data.tags.get("trial_id") in known_trials
        tag = ("stopped_early", "scheduler") if stopped else ("orphaned", "driver killed before the trial was recorded")
        try:
            client.set_tag(r.info.run_id, *tag)
        except MlflowException:
            # The trial's own stopped_early() may be closing it at this very moment (SQLite
            # refuses the second insert of the same tag): its close wins.
            if client.get_run(r.info.run_id).info.status != "RUNNING":
                continue
        client.set_terminated(r.info.run_id, "FINISHED" if stopped else "KILLED")
