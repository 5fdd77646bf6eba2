"""One Ray Tune trial: the training/ engine inside a Tune function trainable.

Each epoch reports summary metrics with a checkpoint (last.pt, best.pt and the MLflow run
id), so a retried or paused trial resumes where it stopped and keeps logging into the same
MLflow run. Per-task metrics go to MLflow, not to Tune, to keep Tune's results small.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mtlsweep.config.run import RunConfig
from mtlsweep.mlflow_server.run_logger import RUN_ID_FILE
from mtlsweep.training.callbacks import Callback


TUNE_KEYS = ("epoch", "train/loss", "val/loss", "val/auroc_mean", "val/auroc_median", "val/auprc_mean",
             "val/delta_auroc_mean", "val/tasks_improved", "cost/epoch_s", "cost/train_s",
             "cost/samples_per_s", "cost/peak_mem_mb", "train/auroc_mean", "gap/auroc", "schedule/tasks_entered")
REFERENCES = ("@baseline", "@hard")


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
    ray_logs: bool = False                         # Ray Train's per-checkpoint INFO lines (Tune verbose >= 2)


def to_overrides(sampled: dict[str, Any]) -> dict[str, Any]:
    """Optuna's choices are hashable (tuples); the config wants lists. Dimensions that did not
    apply to this trial keep the base config's value; a family's own Optuna parameters
    (``<family>::<key>``) are already there under their config key."""
    from mtlsweep.search.space import FAMILY_KEY, FAMILY_SEP, NOT_APPLICABLE
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sampled.items()
            if v != NOT_APPLICABLE and FAMILY_SEP not in k and k != FAMILY_KEY}


def trial_config(sampled: dict[str, Any], ctx: SweepContext) -> RunConfig:
    from mtlsweep.search.grid import VARIANT_KEY
    from mtlsweep.search.space import FAMILY_KEY
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
    over.update(to_overrides(sampled))
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

    def __init__(self, run_dir: Path, mlflow_logger=None):
        self.run_dir = run_dir
        self.mlflow_logger = mlflow_logger
        self.pending: dict[str, float] = {}
        self.last = False

    def on_epoch_end(self, epoch, metrics):
        self.pending = {k: float(metrics[k]) for k in TUNE_KEYS if k in metrics}
        if self.mlflow_logger is not None and self.mlflow_logger.history:     # its deltas vs the baseline
            self.pending.update({k: v for k, v in self.mlflow_logger.history[-1].items() if k in TUNE_KEYS})
        self.last = bool(metrics.get("last"))

    def on_checkpoint(self, path, epoch):
        if not self.last:
            self.report()

    def on_train_end(self, result):
        if not self.pending and result.history:      # restored after its last epoch: report where it ended
            self.pending = {k: float(result.history[-1][k]) for k in TUNE_KEYS if k in result.history[-1]}
        self.report()

    def report(self) -> None:
        from ray import tune
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("last.pt", "best.pt"):
                src = self.run_dir / name
                if src.is_file():
                    shutil.copy2(src, Path(tmp) / name)
            if self.mlflow_logger is not None:
                (Path(tmp) / RUN_ID_FILE).write_text(self.mlflow_logger.run_id)
            tune.report(self.pending, checkpoint=tune.Checkpoint.from_directory(tmp))


def _find_trial_run(client, experiment_id: str, parent: Optional[str], trial_id: str) -> Optional[str]:
    filt = f"tags.trial_id = '{trial_id}'"
    if parent:
        filt += f" and tags.`mlflow.parentRunId` = '{parent}'"
    runs = client.search_runs([experiment_id], filter_string=filt, max_results=1)
    return runs[0].info.run_id if runs else None


def _restore(run_dir: Path) -> tuple[bool, Optional[str]]:
    """(resuming, MLflow run id) from the checkpoint Tune hands a retried or restored trial."""
    from ray import tune
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False, None
    run_id = None
    with checkpoint.as_directory() as d:
        for name in ("last.pt", "best.pt"):
            if (Path(d) / name).is_file():
                shutil.copy2(Path(d) / name, run_dir / name)
        if (Path(d) / RUN_ID_FILE).is_file():
            run_id = (Path(d) / RUN_ID_FILE).read_text().strip()
    return True, run_id


def _own_run(ctx: SweepContext, trial_id: str, run_id: Optional[str], config_fp: Optional[str]):
    """The MLflow run this trial continues, if any: the one its checkpoint names, else the one
    tagged with its trial id, else a FINISHED run of the same configuration under this sweep
    that no trial of the restored sweep owns (a killed driver finished it after its last
    experiment snapshot; the searcher, restored from that snapshot, proposed it again). That
    run is adopted, so finished work is counted once and not trained again."""
    from mlflow.tracking import MlflowClient

    from mtlsweep.config.identity import CONFIG_FP_TAG
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
            f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.{CONFIG_FP_TAG} = '{config_fp}' "
            f"and tags.role = '{ctx.role}' and attributes.status = 'FINISHED'")):
        if "orphaned" in r.data.tags or "adopted_by" in r.data.tags:
            continue
        client.set_tag(r.info.run_id, "adopted_by", trial_id)
        client.set_tag(r.info.run_id, "first_trial_id", r.data.tags.get("trial_id", ""))
        client.set_tag(r.info.run_id, "trial_id", trial_id)
        return client.get_run(r.info.run_id)
    return None


def _report_finished(run, tracking_uri: str) -> None:
    """Give Tune a finished run's last epoch again, without training or logging anything."""
    from mlflow.tracking import MlflowClient
    from ray import tune
    m = run.data.metrics
    last = {k: float(m[k]) for k in TUNE_KEYS if k in m}
    last["epoch"] = float(len(MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "val/auroc_mean")))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / RUN_ID_FILE).write_text(run.info.run_id)
        tune.report(last, checkpoint=tune.Checkpoint.from_directory(tmp))


def _tracking(cfg: RunConfig, config: dict, ctx: SweepContext, store, trial_id: str, run_dir: Path,
              run_id: Optional[str], config_fp: Optional[str] = None):
    from mtlsweep.config.identity import CONFIG_FP_TAG, KEY_TAG, RUN_TAG, comparison_key
    from mtlsweep.mlflow_server.attach import Tracking
    from mtlsweep.mlflow_server.run_logger import RANGES_TAG, TRIAL_PLOTS
    from mtlsweep.search.space import NOT_APPLICABLE
    ranges = {k: v for k, v in ctx.ranges.items() if k in config and config[k] != NOT_APPLICABLE}
    tags = {"role": ctx.role, "trial_id": trial_id, "sweep": ctx.sweep_name,
            **({CONFIG_FP_TAG: config_fp} if config_fp else {}),
            **({RANGES_TAG: json.dumps(ranges)} if ranges else {}),
            **({"variant": str(config["variant"])} if "variant" in config else {}),
            **({"arm": str(config["family"])} if "family" in config else {})}  # the space's family name
    baseline = None
    if ctx.baselines and store is not None:
        key = comparison_key(cfg, store.fingerprint, list(store.task_names), ctx.tuned_keys)
        baseline = ctx.baselines.get(key)
        tags[KEY_TAG] = key
        if baseline is not None:
            tags[RUN_TAG] = baseline[0]
    return Tracking(ctx.tracking_uri, ctx.experiment, run_name=f"{ctx.sweep_name}/{trial_id}", tags=tags,
                    parent_run_id=ctx.parent_run_id, run_id=run_id,
                    baseline=baseline[1] if baseline is not None else None,
                    spool_dir=run_dir / "mlflow_spool", async_=False, plots=TRIAL_PLOTS)


def run_trial(config: dict[str, Any], ctx: SweepContext, stores: Optional[dict] = None) -> None:
    """The Tune function trainable (wrapped with tune.with_parameters by the sweep): one run of
    the trial's config through training.run, reported to Tune each epoch. ``stores`` maps each
    data.path of the sweep to its store, shared through Ray's object store."""
    import torch
    from ray import tune

    from mtlsweep.mlflow_server.attach import run_callbacks
    from mtlsweep.training.run import run

    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))   # concurrent trials must not oversubscribe cores
    if not ctx.ray_logs:
        # "Checkpoint successfully created at ..." once per epoch and trial: most of a sweep's terminal.
        import logging
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    cfg = trial_config(config, ctx)
    if cfg.model.family == "motif_gbm" and cfg.gbm.n_jobs is None:
        cfg = cfg.with_overrides({"gbm.n_jobs": max(1, int(ctx.cpus_per_trial))})
    store = (stores or {}).get(cfg.data.path)
    tune_ctx = tune.get_context()
    # The run lives under train.out_dir (absolute in a sweep), not in Ray's session directory:
    # its checkpoints, spool and the command that finishes it outlive the Ray session.
    run_dir = Path(cfg.train.out_dir).resolve() / (ctx.sweep_name or "sweep") / tune_ctx.get_trial_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    resume, run_id = _restore(run_dir)
    tracking = None
    if ctx.tracking_uri:
        from mtlsweep.config.identity import config_fingerprint
        trial_id = tune_ctx.get_trial_id()
        fp = config_fingerprint(cfg, store.fingerprint, list(store.task_names)) if store is not None else None
        own = _own_run(ctx, trial_id, run_id, fp)
        if own is not None and own.info.status == "FINISHED":
            # Finished (to its end, or stopped by the scheduler) before a driver was killed: its
            # result stands as logged; training it again would log its test metrics twice.
            _report_finished(own, ctx.tracking_uri)
            return
        tracking = _tracking(cfg, config, ctx, store, trial_id, run_dir, own.info.run_id if own else None, fp)
    callbacks, logger = run_callbacks(cfg, tracking)
    run(cfg, run_dir, callbacks=[*callbacks, *ctx.extra_callbacks, TuneReporter(run_dir, logger)], store=store,
        resume="force" if resume else False, progress=False)
