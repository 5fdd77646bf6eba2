"""Where a run meets MLflow, in one place.

    req = resolve(RunRequest(cfg, run_dir, data=store, threads=..., baseline=...))
    req, logger = attach(req, Tracking(uri, experiment, run_name=..., tags=...))
    execute(req.with_callbacks(*my_callbacks))

`mtlsweep train`, the Ray Tune trial, a sweep's baselines and references, and finishing a run all
attach this way: the gradient-flow monitor when ``train.grad_flow_every`` is set (its artifacts
go to the run) and the MLflow run (params, batched metrics, artifacts, and its end state:
FINISHED, stopped early, KILLED or FAILED, through the callbacks' on_train_abort). What a run is
compared with travels in the request (training computes the deltas); MLflow only records them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from mlflow.tracking import MlflowClient

from mtlsweep.analysis.grad_flow import maybe_grad_flow
from mtlsweep.config import tags as tag
from mtlsweep.config.identity import baseline_config, baseline_fingerprint, run_identity
from mtlsweep.config.run import RunConfig, load_config
from mtlsweep.config.tags import Role
from mtlsweep.mlflow_server.registry import find_identical, load_baseline
from mtlsweep.mlflow_server.run_logger import PLOTS, MlflowRunLogger, get_or_create_experiment
from mtlsweep.training.callbacks import Callback
from mtlsweep.training.engine import check_resume
from mtlsweep.training.request import RunRequest, resolve


@dataclass
class Tracking:
    """Where and as what a run is logged."""
    uri: str
    experiment: str
    run_name: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: Optional[str] = None
    run_id: Optional[str] = None                        # continue this run (a resumed trial)
    spool_dir: Optional[Path] = None
    async_: bool = True
    plots: Sequence[str] = PLOTS
    stop_is_pause: bool = False                         # a population's trial: a scheduler's stop is a pause


def run_callbacks(cfg: RunConfig, tracking: Optional[Tracking] = None) -> tuple[list[Callback], Optional[MlflowRunLogger]]:
    """(callbacks, the MLflow logger or None): gradient flow first, since it adds the grad/
    metrics the logger sends."""
    logger = None
    if tracking is not None:
        logger = MlflowRunLogger(tracking.uri, tracking.experiment, cfg, run_name=tracking.run_name,
                                 parent_run_id=tracking.parent_run_id, tags=tracking.tags, run_id=tracking.run_id,
                                 spool_dir=tracking.spool_dir, async_=tracking.async_, plots=tracking.plots,
                                 stop_is_pause=tracking.stop_is_pause)
    grad = maybe_grad_flow(cfg, publish=logger.log_artifacts if logger is not None else None)
    return [c for c in (grad, logger) if c is not None], logger


def attach(req: RunRequest, tracking: Optional[Tracking]) -> tuple[RunRequest, Optional[MlflowRunLogger]]:
    """The resolved request with its run's trackers as its first callbacks (the MLflow run is
    created or continued here), and the MLflow logger (None without tracking)."""
    req = resolve(req)
    callbacks, logger = run_callbacks(req.cfg, tracking)
    return dataclasses.replace(req, callbacks=(*callbacks, *req.callbacks)), logger


def train_tracking(req: RunRequest, uri: str) -> tuple[Tracking, Optional[dict[str, float]]]:
    """(tracking, baseline) of a `mtlsweep train` run: a single-task towers config is itself a
    baseline (others with its identity compare to it); any other run is compared with a finished
    baseline of exactly its counterpart's identity, when the experiment has one. A resumed run
    continues its own MLflow run (its id is kept in the run directory), with the role, sweep and
    baseline it had, so its curves stay in one run."""
    req = resolve(req)
    cfg, run_dir, data = req.cfg, req.run_dir, req.data
    tasks = list(data.task_names)
    client = MlflowClient(uri)
    if req.resume and (run_dir / tag.RUN_ID_FILE).is_file():
        run_id = (run_dir / tag.RUN_ID_FILE).read_text().strip()
        base_id = client.get_run(run_id).data.tags.get(tag.BASELINE_RUN)
        baseline = load_baseline(client, client.get_run(base_id)).auroc if base_id else None
        return Tracking(uri, cfg.tracking.experiment, run_name=run_dir.name, run_id=run_id), baseline
    fp = baseline_fingerprint(cfg, data.fingerprint, tasks)
    tags = {tag.ROLE: Role.TRAIN, tag.CHECKPOINT: str(run_dir / "best.pt")}
    baseline = None
    if run_identity(cfg, data.fingerprint, tasks) == run_identity(baseline_config(cfg), data.fingerprint, tasks):
        tags.update({tag.ROLE: Role.BASELINE, tag.BASELINE_FP: fp})
    else:
        run = find_identical(client, get_or_create_experiment(client, cfg.tracking.experiment), fp)
        if run is not None:
            baseline = load_baseline(client, run).auroc
            tags[tag.BASELINE_RUN] = run.info.run_id
    return Tracking(uri, cfg.tracking.experiment, run_name=run_dir.name, tags=tags), baseline


def continue_request(run_dir: Path, overrides: dict, uri: Optional[str], threads: Optional[int] = None) -> RunRequest:
    """The request that trains a finished or interrupted run longer (``overrides``: train.epochs,
    train.patience), as `mtlsweep train --config RUN/config.yaml --resume RUN --set ...` does: the
    same checks (its data, its config but for its budget), its own MLflow run continued."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", [f"{k}={v}" for k, v in overrides.items()])
    req = resolve(RunRequest(cfg, run_dir, resume=True, threads=threads, progress=False))
    check_resume(req.cfg, req.run_dir, req.data.fingerprint, list(req.data.task_names))
    if uri is None:
        return req
    tracking, baseline = train_tracking(req, uri)
    req, _ = attach(dataclasses.replace(req, baseline=baseline), tracking)
    return req
