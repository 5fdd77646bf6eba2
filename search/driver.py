"""The sweep driver: baselines first, then Optuna-searched trials on Ray Tune, then a summary.

Runs the same whether the driver is on a laptop (embedded Ray), on a cluster head under
`ray submit`, or under `ray job submit`.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import ray
from mlflow.tracking import MlflowClient

from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError, catch_sigterm
from mtlsweep.config.identity import Protocol
from mtlsweep.config.run import RunConfig, load_config
from mtlsweep.config.tags import Role
from mtlsweep.data.label_checks import label_warnings
from mtlsweep.data.store import open_dataset
from mtlsweep.mlflow_server.registry import Baseline
from mtlsweep.mlflow_server.run_logger import get_or_create_experiment
from mtlsweep.mlflow_server.runs_view import end_run
from mtlsweep.mlflow_server.server import check_reachable, resolve_tracking_uri
from mtlsweep.models.arch import plan
from mtlsweep.search.baseline_search import Sweep, ensure_baselines, sweep_protocol
from mtlsweep.search.experiment import run_experiment
from mtlsweep.search.grid import GridSpace
from mtlsweep.search.library_logs import LibraryLogs
from mtlsweep.search.live_view import SweepView, stop_active
from mtlsweep.search.objectives import objective_set
from mtlsweep.search.population import SCHEDULERS, TASK_WEIGHTS, check_population_space, mutable_keys, plot_population
from mtlsweep.search.ray_leftovers import end_orphaned_agents
from mtlsweep.search.references import fit_references, parse_references, reference_config
from mtlsweep.search.space import SearchSpace, load_space
from mtlsweep.search.summary import summarize_results, summarize_sweep
from mtlsweep.search.trial import SweepContext
from mtlsweep.training.metrics import DEFAULT_WORST


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
    perturbation_interval: int = 2         # pbt/pb2: epochs between perturbations
    objective: str = "val/auroc_mean"
    objectives: Optional[str] = None       # several, comma-separated (analysis.pareto.OBJECTIVES); replaces objective
    worst: str = DEFAULT_WORST             # auroc_worst: min or a low percentile over tasks
    constraint_delta: Optional[float] = None   # every task's validation AUROC >= its baseline's - δ
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
    if args.objective not in ("val/auroc_mean", "val/auprc_mean", "val/delta_auroc_mean", "multi"):
        raise ConfigError(f"--objective {args.objective!r}: use val/auroc_mean, val/auprc_mean, "
                          "val/delta_auroc_mean or multi (AUROC up, epoch time down)")
    if len(objective_set(args).objectives) > 1 and args.scheduler in SCHEDULERS:
        raise ConfigError(f"--scheduler {args.scheduler}: a population is ranked on one objective; "
                          f"--objectives {args.objectives or args.objective} is for Optuna's search")
    if args.constraint_delta is not None and args.scheduler in SCHEDULERS:
        raise ConfigError(f"--constraint-delta with --scheduler {args.scheduler}: a population is ranked on one "
                          "objective and does not use the constraint; it is for Optuna's search (asha or none)")
    if args.scheduler not in ("asha", "none", *SCHEDULERS):
        raise ConfigError(f"--scheduler {args.scheduler!r}: use asha, none, pbt or pb2")
    if (args.num_samples is not None and args.num_samples < 1) or args.max_concurrent < 1:
        raise ConfigError("--num-samples and --max-concurrent must be >= 1")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise ConfigError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if args.baseline not in ("tuned", "fixed"):
        raise ConfigError(f"--baseline {args.baseline!r}: use tuned (its own search, as each family) or fixed")
    if args.baseline_trials is not None and args.baseline_trials < 1:
        raise ConfigError("--baseline-trials must be >= 1")
    if args.grace_period < 1:
        raise ConfigError(f"--grace-period {args.grace_period}: must be >= 1 (epochs before ASHA may stop a trial)")
    if args.max_failures < -1:
        raise ConfigError(f"--max-failures {args.max_failures}: must be >= 0, or -1 for no limit (as in Tune)")
    cfg = load_config(args.base, list(args.overrides))
    space = load_space(args.space)
    if args.scheduler in SCHEDULERS:
        check_population_space(space, args.scheduler, cfg.schedule.weighting, cfg.train.epochs,
                               args.perturbation_interval)
        # A task weight is one dimension per task, checked against the data once it is open.
        space.subspace(lambda k: k != TASK_WEIGHTS).check_against(cfg)
    else:
        space.check_against(cfg)   # "@baseline" checkpoints are resolved per trial
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


def init_ray(address: Optional[str], num_cpus: Optional[int] = None, log=print, log_to_driver: bool = True):
    """Connect to the cluster named (--address ADDR|auto, or RAY_ADDRESS), else start an embedded
    one on this machine's cores: never a cluster nobody named, which may be another sweep's and
    end under this one."""
    if ray.is_initialized():
        return
    named = address or os.environ.get("RAY_ADDRESS")
    if named:
        ray.init(address=named, log_to_driver=log_to_driver)
        log(f"Ray: the cluster at {ray.get_runtime_context().gcs_address} "
            f"({'--address' if address else 'RAY_ADDRESS'} {named}), {ray.cluster_resources().get('CPU', 0):g} CPUs")
    else:
        start_embedded(num_cpus, log_to_driver, log)
        log(f"Ray: an embedded cluster of this sweep, {ray.cluster_resources().get('CPU', 0):g} CPUs "
            "(--address names another)")
    catch_sigterm()


def start_embedded(num_cpus: Optional[int] = None, log_to_driver: bool = True, log=print) -> None:
    """A Ray cluster of this process, on this machine's cores."""
    ended = end_orphaned_agents()          # left by an earlier embedded cluster's killed driver
    if ended:
        log(f"ended {len(ended)} Ray agent(s) an earlier killed sweep left behind (pids {', '.join(map(str, ended))})")
    # address="local": without it Ray joins the last cluster `ray start` left on this machine
    # (/tmp/ray/ray_current_cluster), a cluster nobody named, and then refuses num_cpus.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             object_store_memory=min(2 * 1024**3, 512 * 1024**2 * max(1, (num_cpus or os.cpu_count() or 1))),
             log_to_driver=log_to_driver)


def run_sweep(args: SweepArgs, log: Optional[Callable[[str], None]] = None) -> SweepResult:
    """Run (or resume) one sweep. Without ``log`` the terminal shows its live view, and the
    libraries write to ``<workspace>/logs/<sweep>.log`` (``args.verbose`` 2 and up: as they would)."""
    with ExitStack() as stack:
        return _run_sweep(args, log, stack)


def _quiet_terminal(stack: ExitStack, args: SweepArgs, workspace: Path, name: str, log):
    if log is not None:
        return log
    if args.verbose >= 2:
        return print
    log_path = workspace / "logs" / f"{name}.log"
    log = print
    if args.verbose == 1:
        log = stack.enter_context(SweepView(f"sweep {name}", footer=f"log: {log_path}")).log
    stack.enter_context(LibraryLogs(log_path, say=log))
    log(f"sweep {name}: Ray, Tune, Optuna and MLflow write to {log_path} (--verbose 2 shows them here)")
    return log


def _run_sweep(args: SweepArgs, log, stack: ExitStack) -> SweepResult:
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
    datasets = {p: open_dataset(p) for p in dict.fromkeys(paths)}
    stores = {p: d.select_tasks(cfg.data.tasks) for p, d in datasets.items()}
    _check_task_choices(space, stores)
    _check_trunks(space, cfg, stores)
    num_samples = args.num_samples or (1 if grid else 12)
    workspace = Path(args.workspace).resolve()
    # A sweep tracks unless its config says tracking.enabled: false (and no --tracking-uri overrides it).
    tracked = cfg.tracking.enabled is not False or bool(args.tracking_uri)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri, args.tracking_uri, default_dir=str(workspace)) \
        if tracked else None
    if tracked:
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
    log = _quiet_terminal(stack, args, workspace, name, log)
    for path, store in stores.items():
        for line in label_warnings(store, path):        # said once here, not by every trial
            warnings.warn(line, stacklevel=1)
    init_ray(args.address, None, log, log_to_driver=args.verbose >= 2)
    client = MlflowClient(tracking_uri) if tracked else None
    exp_id = get_or_create_experiment(client, cfg.tracking.experiment) if tracked else None

    if restoring:
        parent_id = state.get("parent_run_id")
        if tracked and parent_id and client.get_run(parent_id).info.status != "RUNNING":
            client.update_run(parent_id, status="RUNNING")      # interrupted or killed: running again
        log(f"sweep {name}: resuming" + (f" (MLflow parent run {parent_id})" if parent_id else ""))
    elif not tracked:
        parent_id = None
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"parent_run_id": None, "base": str(Path(args.base).resolve()),
                                          "space": str(Path(args.space).resolve()), "storage": storage}, indent=1))
    else:
        parent = client.create_run(exp_id, run_name=name, tags={tag.ROLE: Role.SWEEP, tag.SWEEP: name,
                                                                tag.PROTOCOL: protocol.describe()})
        parent_id = parent.info.run_id
        client.log_param(parent_id, "sweep.num_samples", num_samples)
        client.log_param(parent_id, "sweep.search", "grid" if grid else "optuna")
        client.log_param(parent_id, "sweep.objective", args.objective)
        for k, v in objective_set(args).params().items():        # what compare and export-best read
            client.log_param(parent_id, k, v)
        client.log_param(parent_id, "sweep.scheduler", args.scheduler)
        if args.scheduler in SCHEDULERS:
            client.log_param(parent_id, "sweep.perturbation_interval", args.perturbation_interval)
        client.log_param(parent_id, "sweep.baseline", protocol.describe()[:500])
        client.log_artifact(parent_id, str(Path(args.space).resolve()))
        client.log_artifact(parent_id, str(Path(args.base).resolve()))
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(
            {"parent_run_id": parent_id, "base": str(Path(args.base).resolve()),
             "space": str(Path(args.space).resolve()), "tracking_uri": tracking_uri, "storage": storage},
            indent=1))

    sweep = Sweep(args=args, cfg=cfg, stores=stores, datasets=datasets, client=client, experiment_id=exp_id, tracking_uri=tracking_uri,
                  parent_id=parent_id, name=name, storage=storage, workspace=workspace, restoring=restoring, log=log)
    resume = f"mtlsweep sweep --base {args.base} --space {args.space} --name {name} --resume"
    try:
        return _run(sweep, space, protocol, baseline_space, num_samples)
    except KeyboardInterrupt:
        ray.shutdown()                        # its trials end first: none can log after being closed
        if tracked:
            closed = close_interrupted_sweep(client, exp_id, parent_id, name)
            log(f"sweep {name}: interrupted; {closed} run(s) marked KILLED in MLflow")
        log(f"resume it with: {resume}")
        raise
    except Exception:
        # A sweep that failed is not left RUNNING among the runs a person compares.
        ray.shutdown()
        if tracked and parent_id:
            close_interrupted_sweep(client, exp_id, parent_id, name, status="FAILED")
        log(f"sweep {name}: failed; once the cause is fixed, resume it with: {resume}")
        raise


def _to_log_file(line: str) -> None:
    logging.getLogger("mtlsweep").info(line)


def close_interrupted_sweep(client, experiment_id: str, parent_id: str, name: str, status: str = "KILLED") -> int:
    """Mark an interrupted sweep's parent ``status`` and every run of it still RUNNING (trials,
    baselines, their candidates) KILLED, all tagged; a run a resumed sweep continues runs again.
    Returns how many."""
    runs = {}
    for where in (f"tags.`mlflow.parentRunId` = '{parent_id}'", f"tags.{tag.SWEEP} = '{name}'",
                  f"tags.{tag.STARTED_BY} = '{name}'"):
        for r in client.search_runs([experiment_id], max_results=5000,
                                    filter_string=f"{where} and attributes.status = 'RUNNING'"):
            runs[r.info.run_id] = r
    runs.pop(parent_id, None)
    for run_id in [*runs, parent_id]:
        client.set_tag(run_id, tag.INTERRUPTED, time.strftime("%Y-%m-%d %H:%M:%S"))
        end_run(client, run_id, status if run_id == parent_id else "KILLED", echo=_to_log_file)
    return len(runs) + 1


def _run(sweep: Sweep, space, protocol, baseline_space, num_samples: int) -> SweepResult:
    args, cfg, client, name, parent_id = sweep.args, sweep.cfg, sweep.client, sweep.name, sweep.parent_id
    tracked, grid, workspace = client is not None, isinstance(space, GridSpace), sweep.workspace
    tracking_uri, storage, log = sweep.tracking_uri, sweep.storage, sweep.log
    baselines = ensure_baselines(sweep, space, protocol, baseline_space)
    first = next(iter(baselines.values()))
    if tracked:
        client.set_tag(parent_id, tag.BASELINE_RUN, first.run_id)
    references = {"@baseline": first.checkpoint} if first.checkpoint else {}

    ctx = SweepContext(base=cfg.flatten(), tracking_uri=tracking_uri, experiment=cfg.tracking.experiment,
                       parent_run_id=parent_id, sweep_name=name, references=references,
                       extra_callbacks=tuple(args.extra_callbacks), cpus_per_trial=args.cpus_per_trial,
                       variants=space.variants if grid else {}, families={} if grid else space.families,
                       baselines={k: (b.run_id, b.auroc) for k, b in baselines.items()}, tuned_keys=protocol.free,
                       ray_logs=args.verbose >= 3, ranges=space.ranges(),
                       mutable=mutable_keys(space) if args.scheduler in SCHEDULERS else ())
    results = run_experiment(sweep, ctx, space, num_samples, name)
    if tracked and ctx.mutable:
        plot_population(client, sweep.experiment_id, parent_id, workspace / "compare" / name)
    n_errors = sum(1 for r in results if r.error is not None)
    if args.references:
        fit_references(sweep, list(args.references), (space.data_paths() if grid else []) or [cfg.data.path],
                       baselines, protocol.free)
    stop_active()           # the live view stays in its final state; the comparison prints once, below it
    if tracked:
        summary = summarize_sweep(tracking_uri, cfg.tracking.experiment, parent_id, workspace / "compare" / name,
                                  log=log)
        end_run(client, parent_id, "FINISHED" if n_errors == 0 else "FAILED", echo=log)   # its page holds the report
    else:       # Tune's own results: every trial's objective was computed in training
        summary = summarize_results(results, objective_set(args), workspace / "compare" / name, log=log)
    return SweepResult(name, f"{storage.rstrip('/')}/{name}", parent_id, first, summary, n_trials=len(results),
                       n_errors=n_errors, baselines=baselines, protocol=protocol)
