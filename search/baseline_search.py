"""A sweep's single-task baselines, set before any trial: reused, trained, or searched.

The protocol (mtlsweep.config.identity) decides how:

- ``fixed``: one towers run per comparison key, with the base config's optimizer and
  regularization;
- ``tuned``, Optuna sweep: the towers get their own Optuna search (and the same scheduler) over
  the optimizer/regularization dimensions of the space, with as many trials as each family;
  the completed trial best on validation becomes the baseline; other seeds train that setting;
- ``tuned``, grid sweep: the towers are trained at every combination of the grid's ``tune:``
  values, and the best on validation is kept for each comparison key.

Finished baselines are found again by (comparison key, protocol), finished candidates by their
identity, so a rerun or a resumed sweep trains nothing twice.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import ray

from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import (
    Protocol,
    baseline_config,
    baseline_fingerprint,
    comparison_key,
    is_regularization,
    is_tuned_alike,
    run_config,
)
from mtlsweep.config.run import RunConfig, load_config
from mtlsweep.config.tags import Role
from mtlsweep.mlflow_server.attach import Tracking, attach
from mtlsweep.mlflow_server.registry import Baseline, best_on_validation, find_baseline, find_identical, load_baseline
from mtlsweep.mlflow_server.runs_view import end_run
from mtlsweep.search.experiment import run_experiment
from mtlsweep.search.grid import GridSpace
from mtlsweep.search.live_view import mlflow_scores, wait_tasks
from mtlsweep.search.space import SearchSpace
from mtlsweep.search.trial import SweepContext
from mtlsweep.training.callbacks import ConsoleReporter
from mtlsweep.training.request import RunRequest
from mtlsweep.training.run import execute


@dataclass
class Sweep:
    """What the phases of one sweep share."""
    args: object                 # SweepArgs
    cfg: RunConfig               # the base config, paths absolute
    stores: dict                 # data.path -> its data with the sweep's tasks selected (keys, fingerprints)
    datasets: dict               # data.path -> its data as opened, shipped to the runs (they select the tasks)
    client: object               # MlflowClient
    experiment_id: str
    tracking_uri: str
    parent_id: str
    name: str
    storage: str
    workspace: Path
    restoring: bool
    log: Callable = print

    def store_of(self, cfg: RunConfig):
        return self.stores[cfg.data.path]

    def key(self, cfg: RunConfig, tuned_keys) -> str:
        store = self.store_of(cfg)
        return comparison_key(cfg, store.fingerprint, list(store.task_names), tuned_keys)

    def fingerprint(self, cfg: RunConfig) -> str:
        store = self.store_of(cfg)
        return baseline_fingerprint(cfg, store.fingerprint, list(store.task_names))


def sweep_protocol(args, space, cfg: RunConfig, num_samples: int) -> tuple[Protocol, Optional[SearchSpace]]:
    """The sweep's protocol and, for a tuned Optuna sweep, the baseline's own search space."""
    if isinstance(space, GridSpace):
        keys = tuple(space.tune)
        own = tuple(dict.fromkeys(k for o in space.variants.values() for k in o if is_regularization(k)
                                  and k not in keys))
        if args.baseline == "fixed" or not keys:
            return Protocol("fixed", keys, 1, json.dumps({k: cfg.flatten()[k] for k in keys}, default=str),
                            own), None
        n = math.prod(len(v) for v in space.tune.values())
        return Protocol("tuned", keys, n, json.dumps(space.tune, sort_keys=True, default=str), own), None
    sub = space.subspace(is_tuned_alike)
    keys = tuple(d.key for d in sub.dims)
    flat = cfg.flatten()
    if args.baseline == "fixed" or not keys:
        return Protocol("fixed", keys, 1, json.dumps({k: flat[k] for k in keys}, default=str)), None
    per_family = math.ceil(num_samples / len(space.family_names(cfg)))
    trials = args.baseline_trials or per_family
    # A population's baseline search trains each candidate to its end (search/experiment.py), as "none" does.
    scheduler = "none" if args.scheduler in ("pbt", "pb2") else args.scheduler
    spec = json.dumps({"dims": [repr(d) for d in sub.dims], "scheduler": scheduler, "grace": args.grace_period,
                       "seed": args.seed, "objective": args.objective,
                       # what else steered the search, only when set: older baselines keep their identity
                       **({"objectives": args.objectives, "worst": args.worst} if args.objectives else {})},
                      sort_keys=True)
    return Protocol("tuned", keys, trials, spec), sub


def needed_keys(sweep: Sweep, space, protocol: Protocol) -> dict[str, RunConfig]:
    """comparison key -> the baseline config (tuned keys at base values) of every point or seed."""
    out: dict[str, RunConfig] = {}
    if isinstance(space, GridSpace):
        configs = [sweep.cfg.with_overrides(space.overrides(p), source=f"{space.source}: {p}")
                   for p in space.points(with_tune=False)]
    else:
        seeds = list(sweep.args.baseline_seeds) or [sweep.cfg.train.seed]
        configs = [sweep.cfg.with_overrides({"train.seed": s}) for s in seeds]
    base = sweep.cfg.flatten()
    for c in configs:
        # Keys a variant sets for itself are the base config's for the towers it is compared with.
        out.setdefault(sweep.key(c, protocol.free),
                       baseline_config(c).with_overrides({k: base[k] for k in protocol.own}, source="baseline"))
    return out


def ensure_baselines(sweep: Sweep, space, protocol: Protocol, baseline_space: Optional[SearchSpace]) -> dict[str, Baseline]:
    if sweep.client is None:
        return local_baselines(sweep, space, protocol, baseline_space)
    client, log = sweep.client, sweep.log
    found: dict[str, Baseline] = {}
    todo: dict[str, RunConfig] = {}
    for key, bcfg in needed_keys(sweep, space, protocol).items():
        run = find_baseline(client, sweep.experiment_id, key, protocol.fingerprint)
        if run is not None:
            log(f"baseline (seed {bcfg.train.seed}, key {key}): reusing MLflow run {run.info.run_id} "
                f"({protocol.describe()})")
            found[key] = load_baseline(client, run)
        else:
            todo[key] = bcfg
    if not todo:
        return found
    candidates: dict[str, list[RunConfig]] = {}
    if baseline_space is not None:
        # The search runs on the first key (the base seed); the other keys train its choice.
        first_key, first_cfg = next(iter(todo.items()))
        chosen = search_baseline(sweep, first_cfg, baseline_space, protocol)
        mark_baseline(sweep, chosen, first_key, protocol)
        found[first_key] = load_baseline(client, client.get_run(chosen.info.run_id))
        chosen_flat = run_config(chosen.data.params).flatten()
        for key, bcfg in list(todo.items())[1:]:
            candidates[key] = [bcfg.with_overrides({k: chosen_flat[k] for k in protocol.keys}, source="baseline")]
    elif isinstance(space, GridSpace) and space.tune and protocol.kind == "tuned":
        for key, bcfg in todo.items():
            candidates[key] = [bcfg.with_overrides(point, source=f"{space.source}: tune {point}")
                               for point in space.tune_points()]
    else:
        candidates = {key: [bcfg] for key, bcfg in todo.items()}
    found.update(train_and_choose(sweep, candidates, protocol,
                                  space.ranges() if isinstance(space, GridSpace) else None))
    return found


def local_baselines(sweep: Sweep, space, protocol: Protocol, baseline_space: Optional[SearchSpace]) -> dict[str, Baseline]:
    """The same protocol without tracking: the baselines' run directories are their registry
    (``<workspace>/baselines/<fingerprint>/metrics.json``, found again by a rerun)."""
    needed = needed_keys(sweep, space, protocol)
    found: dict[str, Baseline] = {}
    candidates: dict[str, list[RunConfig]] = {}
    if baseline_space is not None:
        first_key, first_cfg = next(iter(needed.items()))
        chosen = local_search(sweep, first_cfg, baseline_space, protocol)
        found[first_key] = baseline_from_dir(chosen, first_key, protocol)
        chosen_flat = load_config(chosen / tag.CONFIG_FILE).flatten()
        for key, bcfg in list(needed.items())[1:]:
            candidates[key] = [bcfg.with_overrides({k: chosen_flat[k] for k in protocol.keys}, source="baseline")]
    elif isinstance(space, GridSpace) and space.tune and protocol.kind == "tuned":
        candidates = {key: [bcfg.with_overrides(p, source=f"{space.source}: tune {p}") for p in space.tune_points()]
                      for key, bcfg in needed.items()}
    else:
        candidates = {key: [bcfg] for key, bcfg in needed.items()}
    dirs = {key: [(sweep.workspace / "baselines" / sweep.fingerprint(c)).resolve() for c in cands]
            for key, cands in candidates.items()}
    pending = []
    for key, cands in candidates.items():
        for c, run_dir in zip(cands, dirs[key]):
            if (run_dir / tag.METRICS_FILE).is_file():
                continue
            sweep.log(f"baseline (seed {c.train.seed}, key {key}): training single-task towers, untracked")
            run_dir.mkdir(parents=True, exist_ok=True)
            pending.append(train_reference(c, sweep.datasets[c.data.path], run_dir, None, c.tracking.experiment, {},
                                           sweep.args.cpus_per_trial, sweep.args.gpus_per_trial))
    wait_tasks(pending, "baselines", ["towers"] * len(pending))
    for key, ds in dirs.items():
        found[key] = baseline_from_dir(max(ds, key=_best_val), key, protocol)
    return found


def _best_val(run_dir: Path) -> float:
    return float(json.loads((run_dir / tag.METRICS_FILE).read_text()).get("best_val_auroc") or -math.inf)


def baseline_from_dir(run_dir: Path, key: str, protocol: Protocol) -> Baseline:
    """A finished run directory as a baseline: its per-task validation AUROC at its best epoch."""
    payload = json.loads((Path(run_dir) / tag.METRICS_FILE).read_text())
    final = payload["final"]
    tasks = payload["info"]["task_names"]
    cfg = load_config(Path(run_dir) / tag.CONFIG_FILE)
    best = Path(run_dir) / "best.pt"
    return Baseline(str(run_dir), "", cfg.train.seed, {t: float(final.get(f"val/auroc/{t}", math.nan)) for t in tasks},
                    str(best) if best.is_file() else None, key, protocol.describe())


def local_search(sweep: Sweep, bcfg: RunConfig, space: SearchSpace, protocol: Protocol) -> Path:
    """search_baseline without tracking: the run directory of the completed trial best on validation."""
    name = f"{sweep.name}-baseline"
    sweep.log(f"baseline (seed {bcfg.train.seed}): searching {', '.join(protocol.keys)} for single-task towers, "
              f"{protocol.trials} trial(s), untracked")
    ctx = SweepContext(base=bcfg.flatten(), sweep_name=name, cpus_per_trial=sweep.args.cpus_per_trial,
                       role=Role.CANDIDATE, extra_callbacks=tuple(sweep.args.extra_callbacks),
                       ray_logs=sweep.args.verbose >= 3, ranges=space.ranges())
    run_experiment(sweep, ctx, space, protocol.trials, name, stage="baseline search", arm="towers")
    done = [d for d in (Path(bcfg.train.out_dir) / name).glob(f"*/{tag.METRICS_FILE}")]
    if not done:
        raise ConfigError("the single-task baseline's search completed none of its trial(s) (each was pruned or "
                          "failed); raise --baseline-trials or --grace-period, or pass --baseline fixed")
    return max((d.parent for d in done), key=_best_val)


def _tags(protocol: Protocol, key: str, fp: str, role: str, seed: int, ranges: Optional[dict] = None) -> dict[str, str]:
    return {tag.ROLE: role, tag.BASELINE_FP: fp, tag.COMPARE_KEY: key, tag.PROTOCOL: protocol.describe(),
            tag.PROTOCOL_FP: protocol.fingerprint, tag.FAMILY: "single",
            tag.RUN_NAME: f"{fp[:8]}-s{seed}", **({tag.RANGES: json.dumps(ranges)} if ranges else {})}


def train_and_choose(sweep: Sweep, candidates: dict[str, list[RunConfig]], protocol: Protocol,
                     ranges: Optional[dict] = None) -> dict[str, Baseline]:
    """Train every candidate not already finished (at once, as the cluster allows), then keep
    the best on validation for each key: it becomes role=baseline, the others candidates.
    ``ranges``: what the candidates of a key were tuned over (a grid's tune: lists)."""
    client, log = sweep.client, sweep.log
    pending = []
    for key, cands in candidates.items():
        for c in cands:
            fp = sweep.fingerprint(c)
            if find_identical(client, sweep.experiment_id, fp, roles=("baseline", Role.CANDIDATE)) is not None:
                continue
            close_interrupted(client, sweep.experiment_id, fp)
            what = f"{len(cands)} candidates, " if len(cands) > 1 else ""
            log(f"baseline (seed {c.train.seed}, key {key}, {what}fingerprint {fp}): training single-task towers "
                f"for {sweep.store_of(c).n_tasks} tasks")
            run_dir = (sweep.workspace / "baselines" / fp).resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
            role = "baseline" if len(cands) == 1 else Role.CANDIDATE
            pending.append(train_reference(c, sweep.datasets[c.data.path], run_dir, sweep.tracking_uri,
                                           c.tracking.experiment,
                                           {**_tags(protocol, key, fp, role, c.train.seed,
                                                    ranges if len(cands) > 1 else None), tag.STARTED_BY: sweep.name},
                                           sweep.args.cpus_per_trial, sweep.args.gpus_per_trial))
    wait_tasks(pending, "baselines", ["towers"] * len(pending), mlflow_scores(client))
    out = {}
    for key, cands in candidates.items():
        runs = [find_identical(client, sweep.experiment_id, sweep.fingerprint(c), roles=("baseline", Role.CANDIDATE))
                for c in cands]
        best = best_on_validation([r for r in runs if r is not None])
        if best is None:
            raise RuntimeError(f"baseline {key}: no candidate finished in MLflow")
        mark_baseline(sweep, best, key, protocol)
        out[key] = load_baseline(client, client.get_run(best.info.run_id))
        if len(cands) > 1:
            log(f"baseline (key {key}): kept {best.info.run_name} of {len(cands)} candidates "
                f"(val AUROC {best.data.metrics['best/val/auroc_mean']:.4f})")
    return out


def close_interrupted(client, experiment_id: str, fp: str) -> None:
    """A baseline (or candidate) of this identity still RUNNING when it is about to be trained was
    interrupted with the driver that started it (a Ray task dies with it): KILLED and tagged, so
    the rerun that trains it again leaves one finished run, not a second one beside a ghost."""
    for r in client.search_runs([experiment_id], max_results=100, filter_string=(
            f"tags.{tag.BASELINE_FP} = '{fp}' and attributes.status = 'RUNNING'")):
        if r.data.tags.get(tag.ROLE) in ("baseline", Role.CANDIDATE):
            client.set_tag(r.info.run_id, tag.ORPHANED, "driver stopped before the run ended")
            end_run(client, r.info.run_id, "KILLED", echo=logging.getLogger("mtlsweep").info)


def mark_baseline(sweep: Sweep, run, key: str, protocol: Protocol) -> None:
    """Make a finished run the baseline of ``key`` under ``protocol``."""
    cfg = run_config(run.data.params)
    fp = sweep.fingerprint(cfg)
    tags = _tags(protocol, key, fp, "baseline", cfg.train.seed)
    tags.pop("mlflow.runName")
    run_dir = run.data.tags.get(tag.RUN_DIR)
    if run_dir and "checkpoint" not in run.data.tags:
        tags[tag.CHECKPOINT] = str(Path(run_dir) / "best.pt")
    for k, v in tags.items():
        if run.data.tags.get(k) != v:
            sweep.client.set_tag(run.info.run_id, k, v)


def search_baseline(sweep: Sweep, bcfg: RunConfig, space: SearchSpace, protocol: Protocol):
    """The towers' own Optuna search over ``space``: ``protocol.trials`` trials, the sweep's
    scheduler; returns the completed run best on validation."""
    name = f"{sweep.name}-baseline"
    sweep.log(f"baseline (seed {bcfg.train.seed}): searching {', '.join(protocol.keys)} for single-task towers, "
              f"{protocol.trials} trial(s)")
    ctx = SweepContext(base=bcfg.flatten(), tracking_uri=sweep.tracking_uri, experiment=bcfg.tracking.experiment,
                       parent_run_id=sweep.parent_id, sweep_name=name, cpus_per_trial=sweep.args.cpus_per_trial,
                       role=Role.CANDIDATE, extra_callbacks=tuple(sweep.args.extra_callbacks),
                       ray_logs=sweep.args.verbose >= 3, ranges=space.ranges())
    run_experiment(sweep, ctx, space, protocol.trials, name, stage="baseline search", arm="towers")
    runs = sweep.client.search_runs(
        [sweep.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_id}' "
                                             f"and tags.{tag.ROLE} = '{Role.CANDIDATE}'", max_results=5000)
    best = best_on_validation(runs)
    if best is None:
        raise ConfigError(f"the single-task baseline's search completed none of its {len(runs)} trial(s) "
                          "(each was pruned or failed); raise --baseline-trials or --grace-period, "
                          "or pass --baseline fixed")
    sweep.log(f"baseline: kept {best.info.run_name} of {len(runs)} (val AUROC {best.data.metrics['best/val/auroc_mean']:.4f}; "
              + ", ".join(f"{k}={best.data.params.get(k)}" for k in protocol.keys) + ")")
    return best


def train_reference(cfg: RunConfig, store, run_dir: Path, tracking_uri: str, experiment: str,
                    tags: dict[str, str], cpus: float, gpus: float, baseline: Optional[dict] = None):
    """Start one run outside Tune's trials (a baseline, a reference family) as a Ray task, so on a
    cluster it lands on a worker; returns its object ref (the MLflow run id), so that several train
    at once (untracked without ``tracking_uri``: then the ref holds the run directory).
    ``store``: the data as opened; ``baseline``: task -> validation AUROC of the baseline it is
    compared with."""

    @ray.remote(num_cpus=cpus, num_gpus=gpus)
    def _remote(cfg_flat, store, run_dir, tracking_uri, experiment, tags, baseline):
        req = RunRequest(RunConfig.from_flat(cfg_flat), Path(run_dir), data=store, threads=max(1, int(cpus)),
                         baseline=baseline, progress=False)
        tags = {**tags, tag.CHECKPOINT: str(Path(run_dir) / "best.pt")}
        tracking = Tracking(tracking_uri, experiment, run_name=tags.get(tag.RUN_NAME), tags=tags, async_=False) \
            if tracking_uri else None
        req, logger = attach(req, tracking)
        execute(req.with_callbacks(ConsoleReporter(sys.stdout)))
        return logger.run_id if logger is not None else str(run_dir)

    return _remote.remote(cfg.flatten(), store, str(run_dir), tracking_uri, experiment, tags, baseline)
