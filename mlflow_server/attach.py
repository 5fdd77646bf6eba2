"""Where a run meets MLflow, in one place: the callbacks a run gets from outside training/.

    callbacks, logger = run_callbacks(cfg, Tracking(uri, experiment, run_name=..., tags=...))
    mtlsweep.training.run.run(cfg, run_dir, callbacks=callbacks + [...])

`mtlsweep train`, the Ray Tune trial and the baselines all attach this way: the gradient-flow
monitor when ``train.grad_flow_every`` is set (its artifacts go to the run) and the MLflow run
(params, batched metrics, deltas against a baseline, artifacts, and its end state: FINISHED,
stopped early, KILLED or FAILED, through the callbacks' on_train_abort).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from mtlsweep.analysis.grad_flow import maybe_grad_flow
from mtlsweep.config.run import RunConfig
from mtlsweep.mlflow_server.run_logger import PLOTS, RUN_ID_FILE, MlflowRunLogger
from mtlsweep.training.callbacks import Callback


@dataclass
class Tracking:
    """Where and as what a run is logged."""
    uri: str
    experiment: str
    run_name: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: Optional[str] = None
    run_id: Optional[str] = None                        # continue this run (a resumed trial)
    baseline: Optional[dict[str, float]] = None         # task -> the baseline's validation AUROC
    spool_dir: Optional[Path] = None
    async_: bool = True
    plots: Sequence[str] = PLOTS


def run_callbacks(cfg: RunConfig, tracking: Optional[Tracking] = None) -> tuple[list[Callback], Optional[MlflowRunLogger]]:
    """(callbacks, the MLflow logger or None): gradient flow first, since it adds the grad/
    metrics the logger sends."""
    logger = None
    if tracking is not None:
        logger = MlflowRunLogger(tracking.uri, tracking.experiment, cfg, run_name=tracking.run_name,
                                 parent_run_id=tracking.parent_run_id, tags=tracking.tags, baseline=tracking.baseline,
                                 run_id=tracking.run_id, spool_dir=tracking.spool_dir, async_=tracking.async_,
                                 plots=tracking.plots)
    grad = maybe_grad_flow(cfg, publish=logger.log_artifacts if logger is not None else None)
    return [c for c in (grad, logger) if c is not None], logger


def train_tracking(cfg: RunConfig, uri: str, run_dir: Path, data_fingerprint: str, tasks: Sequence[str],
                   resume: bool = False) -> Tracking:
    """Tracking of a `mtlsweep train` run: a single-task towers config is itself a baseline
    (others with its identity compare to it); any other run is compared with a finished baseline
    of exactly its counterpart's identity, when the experiment has one. A resumed run continues
    its own MLflow run (its id is kept in the run directory), so its curves stay in one run."""
    from mlflow.tracking import MlflowClient

    from mtlsweep.config.identity import FP_TAG, RUN_TAG, baseline_config, baseline_fingerprint, run_identity
    from mtlsweep.mlflow_server.registry import find_identical, load_baseline
    from mtlsweep.mlflow_server.run_logger import get_or_create_experiment
    client = MlflowClient(uri)
    run_id = None
    if resume and (Path(run_dir) / RUN_ID_FILE).is_file():
        run_id = (Path(run_dir) / RUN_ID_FILE).read_text().strip()
        # Continued: its role, sweep and baseline stay what they were (a trial trained longer).
        base_id = client.get_run(run_id).data.tags.get(RUN_TAG)
        baseline = load_baseline(client, client.get_run(base_id)).auroc if base_id else None
        return Tracking(uri, cfg.tracking.experiment, run_name=Path(run_dir).name, baseline=baseline, run_id=run_id)
    fp = baseline_fingerprint(cfg, data_fingerprint, tasks)
    tags = {"role": "train", "checkpoint": str(Path(run_dir) / "best.pt")}
    baseline = None
    if run_identity(cfg, data_fingerprint, tasks) == run_identity(baseline_config(cfg), data_fingerprint, tasks):
        tags.update({"role": "baseline", FP_TAG: fp})
    else:
        run = find_identical(client, get_or_create_experiment(client, cfg.tracking.experiment), fp)
        if run is not None:
            baseline = load_baseline(client, run).auroc
            tags[RUN_TAG] = run.info.run_id
    return Tracking(uri, cfg.tracking.experiment, run_name=Path(run_dir).name, tags=tags, baseline=baseline)


def continue_run(run_dir: Path, overrides: dict, uri: Optional[str], progress: bool = False):
    """Train a finished or interrupted run longer (``overrides``: train.epochs, train.patience),
    as `mtlsweep train --config RUN/config.yaml --resume RUN --set ...` does: the same checks
    (its data, its config but for its budget), its own MLflow run continued. Returns the RunResult."""
    from mtlsweep.config.run import load_config
    from mtlsweep.data.store import open_dataset
    from mtlsweep.training.engine import check_resume
    from mtlsweep.training.run import run
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", [f"{k}={v}" for k, v in overrides.items()])
    store = open_dataset(cfg.data.path).select_tasks(cfg.data.tasks)
    tasks = list(store.task_names)
    check_resume(cfg, run_dir, store.fingerprint, tasks)
    tracking = train_tracking(cfg, uri, run_dir, store.fingerprint, tasks, resume=True) if uri else None
    callbacks, _ = run_callbacks(cfg, tracking)
    return run(cfg, run_dir, callbacks=callbacks, store=store, resume=True, progress=progress)
