"""One Ray Tune trial: the training/ engine inside a Tune function trainable.

Each epoch reports summary metrics with a checkpoint (last.pt, best.pt and the MLflow run
id), so a retried or paused trial resumes where it stopped and keeps logging into the same
MLflow run. Per-task metrics go to MLflow, not to Tune, to keep Tune's results small.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlflow.tracking import MlflowClient
from ray import tune

from mtlsweep.config import tags as tag
from mtlsweep.config.identity import comparison_key, config_fingerprint
from mtlsweep.config.run import RunConfig
from mtlsweep.mlflow_server.attach import Tracking, attach
from mtlsweep.mlflow_server.run_logger import TRIAL_PLOTS
from mtlsweep.search.grid import VARIANT_KEY
from mtlsweep.search.population import CopiedLineage, copied_checkpoint, fold_task_weights
from mtlsweep.search.space import FAMILY_KEY, FAMILY_SEP, NOT_APPLICABLE
from mtlsweep.training.callbacks import Callback
from mtlsweep.training.request import RunRequest, resolve
from mtlsweep.training.run import execute

TUNE_KEYS = ("epoch", "train/loss", "val/loss", "val/auroc_mean", "val/auroc_median", "val/auprc_mean",
             "val/delta_auroc_mean", "val/tasks_improved", "cost/epoch_s", "cost/train_s",
             "cost/samples_per_s", "cost/peak_mem_mb", "train/auroc_mean", "gap/auroc", "schedule/tasks_entered",
             # the worst tasks (training.metrics.WORST_STATS) and the shortfall a --constraint-delta bounds
             "val/auroc_min", "val/auroc_p5", "val/auroc_p10", "val/auroc_p25", "val/delta_auroc_min",
             "val/delta_auroc_p5", "val/delta_auroc_p10", "val/delta_auroc_p25", "val/worst_shortfall")
REFERENCES = ("@baseline", "@hard")
TRIAL_ID_FILE = "trial_id.txt"     # whose checkpoint: a population's trial may continue another's


@dataclass
class SweepContext:
    """What every trial of a sweep shares; passed once through tune.with_parameters."""
    base: dict[str, Any]                           # flattened base config
    tracking_uri: Optional[str] = None
    experiment: str = "mtlsweep"
    parent_run_id: Optional[str] = None
    sweep_name: str = ""
    references: dict[str, str] = field(default_factory=dict)   # "@baseline" -> checkpoint path
    extra_callbacks: tuple = ()                    # test hooks (e.g. a fault injected once)
    cpus_per_trial: float = 1.0
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)   # grid sweeps: name -> overrides
    families: dict[str, dict[str, Any]] = field(default_factory=dict)   # stratified spaces: name -> overrides
    # comparison key -> (baseline run id, task -> validation AUROC); a trial takes the one of its key
    baselines: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)
    tuned_keys: tuple[str, ...] = ()               # what the baselines were tuned over
    role: str = "trial"                            # "baseline_candidate" in a tuned baseline's search
    ranges: dict[str, dict] = field(default_factory=dict)       # key -> its searched range (certificates)
    ray_logs: bool = False                         # Ray Train's per-checkpoint INFO lines (--verbose 3)
    mutable: tuple[str, ...] = ()                  # keys a population-based schedule changes between epochs


def to_overrides(sampled: dict[str, Any]) -> dict[str, Any]:
    """Optuna's choices are hashable (tuples); the config wants lists. Dimensions that did not
    apply to this trial keep the base config's value; a family's own Optuna parameters
    (``<family>::<key>``) are already there under their config key."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sampled.items()
            if v != NOT_APPLICABLE and FAMILY_SEP not in k and k != FAMILY_KEY}


def trial_config(sampled: dict[str, Any], ctx: SweepContext) -> RunConfig:
    over: dict[str, Any] = {}
    if VARIANT_KEY in sampled:
        name = sampled[VARIANT_KEY]
        if name not in ctx.variants:
            raise ValueError(f"trial asks for variant {name!r}, which this sweep does not define")
        over.update(ctx.variants[name])
        sampled = {k: v for k, v in sampled.items() if k != VARIANT_KEY}
    if FAMILY_KEY in sampled:
        if sampled[FAMILY_KEY] not in ctx.families:
            raise ValueError(f"trial asks for family {sampled[FAMILY_KEY]!r}, which this sweep does not define")
        over.update(ctx.families[sampled[FAMILY_KEY]])
    over.update(to_overrides(fold_task_weights(sampled)))
    ck = over.get("init.checkpoint", ctx.base.get("init.checkpoint"))
    if isinstance(ck, str) and ck in REFERENCES:
        if ck not in ctx.references:
            raise ValueError(f"init.checkpoint={ck}: this sweep has no {ck[1:]} reference run")
        over["init.checkpoint"] = ctx.references[ck]
    # with_overrides, not a dict update: a preset in the overrides sets the trunk lists with it.
    return RunConfig.from_flat(ctx.base, source="trial config").with_overrides(over, source="trial config")


class TuneReporter(Callback):
    """Reports each epoch's summary to Tune with the resumable checkpoint (last.pt, best.pt, the
    MLflow run id): after the epoch's checkpoint, except for the last epoch, which is reported
    after the run's end (test metrics and artifacts), because Tune may end the trial in report()."""

    def __init__(self, run_dir: Path, mlflow_logger=None, trial_id: str = "", done_at_end: bool = False):
        self.run_dir = run_dir
        self.trial_id = trial_id
        # A population's scheduler judges every result it sees: the run's last one says it is the
        # last, or PBT would hand the ended trial another checkpoint and it would report again.
        self.done_at_end = done_at_end
        self.mlflow_logger = mlflow_logger
        self.pending: dict[str, float] = {}
        self.last = False

    def on_epoch_end(self, report):
        # The objective (val/delta_auroc_mean against the run's baseline) is in the report itself.
        self.pending = {k: float(report.metrics[k]) for k in TUNE_KEYS if k in report.metrics}
        self.pending["epoch"] = float(report.epoch)
        self.last = report.last

    def on_checkpoint(self, path, epoch):
        if not self.last:
            self.report()

    def on_train_end(self, result):
        if not self.pending and result.history:      # restored after its last epoch: report where it ended
            self.pending = {k: float(result.history[-1][k]) for k in TUNE_KEYS if k in result.history[-1]}
        if result.convergence is not None:
            self.pending["cert/converged"] = float(result.convergence.converged)
        if self.done_at_end:
            self.pending["done"] = True
        self.report()

    def report(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("last.pt", "best.pt"):
                src = self.run_dir / name
                if src.is_file():
                    shutil.copy2(src, Path(tmp) / name)
            if self.mlflow_logger is not None:
                (Path(tmp) / tag.RUN_ID_FILE).write_text(self.mlflow_logger.run_id)
            (Path(tmp) / TRIAL_ID_FILE).write_text(self.trial_id)
            tune.report(self.pending, checkpoint=tune.Checkpoint.from_directory(tmp))


def _find_trial_run(client, experiment_id: str, parent: Optional[str], trial_id: str) -> Optional[str]:
    filt = f"tags.trial_id = '{trial_id}'"
    if parent:
        filt += f" and tags.`mlflow.parentRunId` = '{parent}'"
    runs = client.search_runs([experiment_id], filter_string=filt, max_results=1)
    return runs[0].info.run_id if runs else None


def _restore(run_dir: Path, trial_id: str) -> tuple[bool, Optional[str], Optional[str]]:
    """(resuming, MLflow run id, the trial copied) from the checkpoint Tune hands a retried or
    restored trial, and the trial whose checkpoint it is when another's: a population's trial
    handed another trial's checkpoint (PBT's exploit) continues from its model but keeps its own
    MLflow run."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False, None, None
    run_id, owner = None, None
    with checkpoint.as_directory() as d:
        for name in ("last.pt", "best.pt"):
            if (Path(d) / name).is_file():
                shutil.copy2(Path(d) / name, run_dir / name)
        if (Path(d) / TRIAL_ID_FILE).is_file():
            owner = (Path(d) / TRIAL_ID_FILE).read_text().strip() or None
        if (Path(d) / tag.RUN_ID_FILE).is_file():
            run_id = (Path(d) / tag.RUN_ID_FILE).read_text().strip()
    return True, run_id, owner if owner not in (None, trial_id) else None


def _own_run(ctx: SweepContext, trial_id: str, run_id: Optional[str], config_fp: Optional[str]):
    """The MLflow run this trial continues, if any: the one its checkpoint names, else the one
    tagged with its trial id, else a FINISHED run of the same configuration under this sweep
    that no trial of the restored sweep owns (a killed driver finished it after its last
    experiment snapshot; the searcher, restored from that snapshot, proposed it again). That
    run is adopted, so finished work is counted once and not trained again."""
    client = MlflowClient(ctx.tracking_uri)
    if run_id is not None:
        return client.get_run(run_id)
    exp = client.get_experiment_by_name(ctx.experiment)
    if exp is None:
        return None
    own = _find_trial_run(client, exp.experiment_id, ctx.parent_run_id, trial_id)
    if own is not None:
        return client.get_run(own)
    if not ctx.parent_run_id or not config_fp:
        return None
    for r in client.search_runs([exp.experiment_id], max_results=50, filter_string=(
            f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.{tag.CONFIG_FP} = '{config_fp}' "
            f"and tags.role = '{ctx.role}' and attributes.status = 'FINISHED'")):
        if "orphaned" in r.data.tags or "adopted_by" in r.data.tags:
            continue
        client.set_tag(r.info.run_id, tag.ADOPTED_BY, trial_id)
        client.set_tag(r.info.run_id, tag.FIRST_TRIAL_ID, r.data.tags.get(tag.TRIAL_ID, ""))
        client.set_tag(r.info.run_id, tag.TRIAL_ID, trial_id)
        return client.get_run(r.info.run_id)
    return None


def _report_finished(run, tracking_uri: str, done: bool = False) -> None:
    """Give Tune a finished run's last epoch again, without training or logging anything."""
    m = run.data.metrics
    last = {k: float(m[k]) for k in TUNE_KEYS if k in m}
    if done:
        last["done"] = True
    last["epoch"] = float(len(MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "val/auroc_mean")))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / tag.RUN_ID_FILE).write_text(run.info.run_id)
        tune.report(last, checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_baseline(cfg: RunConfig, data, ctx: SweepContext) -> tuple[Optional[str], Optional[tuple[str, dict]]]:
    """(comparison key, (baseline run id, task -> validation AUROC)) of a trial on ``data`` (its
    tasks selected): the baseline of its key, when the sweep has one."""
    if not ctx.baselines:
        return None, None
    key = comparison_key(cfg, data.fingerprint, list(data.task_names), ctx.tuned_keys)
    return key, ctx.baselines.get(key)


def _tracking(ctx: SweepContext, config: dict, trial_id: str, run_dir: Path, run_id: Optional[str],
              config_fp: Optional[str], key: Optional[str], baseline_run: Optional[str]):
    ranges = {k: v for k, v in ctx.ranges.items() if k in config and config[k] != NOT_APPLICABLE}
    tags = {tag.ROLE: ctx.role, tag.TRIAL_ID: trial_id, tag.SWEEP: ctx.sweep_name,
            **({tag.CONFIG_FP: config_fp} if config_fp else {}),
            **({tag.RANGES: json.dumps(ranges)} if ranges else {}),
            **({tag.VARIANT: str(config[VARIANT_KEY])} if VARIANT_KEY in config else {}),
            **({tag.ARM: str(config[FAMILY_KEY])} if FAMILY_KEY in config else {}),   # the space's family name
            **({tag.COMPARE_KEY: key} if key else {}), **({tag.BASELINE_RUN: baseline_run} if baseline_run else {})}
    return Tracking(ctx.tracking_uri, ctx.experiment, run_name=trial_id, tags=tags,   # run_logger adds family, arm
                    parent_run_id=ctx.parent_run_id, run_id=run_id, spool_dir=run_dir / "mlflow_spool",
                    async_=False, plots=TRIAL_PLOTS, stop_is_pause=bool(ctx.mutable))


def run_trial(config: dict[str, Any], ctx: SweepContext, stores: Optional[dict] = None) -> None:
    """The Tune function trainable (wrapped with tune.with_parameters by the sweep): one run request
    of the trial's config, executed by training.run, reported to Tune each epoch. ``stores`` maps
    each data.path of the sweep to its data as opened, shared through Ray's object store."""
    # A reused worker's next trial waits this long (Tune's default: 2 s) for the previous one's thread
    # to end: a paused member's thread first closes its epoch's MLflow writes, and a reset that times
    # out fails the trial. Read by Tune at each reset, in this process.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    if not ctx.ray_logs:
        # "Checkpoint successfully created at ..." once per epoch and trial: most of a sweep's terminal.
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    cfg = trial_config(config, ctx)
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    # The run lives under train.out_dir (absolute in a sweep), not in Ray's session directory:
    # its checkpoints, spool and the command that finishes it outlive the Ray session.
    run_dir = Path(cfg.train.out_dir).resolve() / (ctx.sweep_name or "sweep") / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    resume, run_id, copied = _restore(run_dir, trial_id)
    copied_run, run_id = (run_id, None) if copied else (None, run_id)
    lineage = copied_checkpoint(run_dir / "last.pt", ctx.mutable) if copied else None
    # Concurrent trials must not oversubscribe the cores: the trial's CPU share is its threads.
    req = resolve(RunRequest(cfg, run_dir, data=(stores or {}).get(cfg.data.path), resume="force" if resume else False,
                             mutable=ctx.mutable, threads=max(1, int(ctx.cpus_per_trial)), progress=False))
    key, baseline = trial_baseline(req.cfg, req.data, ctx)
    req = dataclasses.replace(req, baseline=baseline[1] if baseline else None)
    tracking = None
    if ctx.tracking_uri:
        fp = config_fingerprint(req.cfg, req.data.fingerprint, list(req.data.task_names))
        own = _own_run(ctx, trial_id, run_id, fp)
        if own is not None and own.info.status == "FINISHED":
            # Finished (to its end, or stopped by the scheduler) before a driver was killed: its
            # result stands as logged; training it again would log its test metrics twice.
            _report_finished(own, ctx.tracking_uri, done=bool(ctx.mutable))
            return
        tracking = _tracking(ctx, config, trial_id, run_dir, own.info.run_id if own else None, fp, key,
                             baseline[0] if baseline else None)
    req, logger = attach(req, tracking)
    extra = (CopiedLineage(logger, lineage, copied, copied_run, req.cfg.flatten()),) \
        if lineage is not None and logger is not None else ()
    execute(req.with_callbacks(*ctx.extra_callbacks, *extra,
                               TuneReporter(run_dir, logger, trial_id, done_at_end=bool(ctx.mutable))))
