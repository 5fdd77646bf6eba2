"""One Ray Tune trial: the training/ engine inside a Tune function trainable.

Each epoch reports summary metrics with a checkpoint (last.pt, best.pt and the MLflow run
id), so a retried or paused trial resumes where it stopped and keeps logging into the same
MLflow run. Per-task metrics go to MLflow, not to Tune, to keep Tune's results small.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from training.callbacks import Callback
from training.config import RunConfig

RUN_ID_FILE = "mlflow_run_id.txt"
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


def to_overrides(sampled: dict[str, Any]) -> dict[str, Any]:
    """Optuna's choices are hashable (tuples); the config wants lists. Dimensions that did not
    apply to this trial keep the base config's value; a family's own Optuna parameters
    (``<family>::<key>``) are already there under their config key."""
    from search.space import FAMILY_KEY, FAMILY_SEP, NOT_APPLICABLE
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sampled.items()
            if v != NOT_APPLICABLE and FAMILY_SEP not in k and k != FAMILY_KEY}


def trial_config(sampled: dict[str, Any], ctx: SweepContext) -> RunConfig:
    from search.grid import VARIANT_KEY
    flat = dict(ctx.base)
    if VARIANT_KEY in sampled:
        name = sampled[VARIANT_KEY]
        if name not in ctx.variants:
            raise ValueError(f"trial asks for variant {name!r}, which this sweep does not define")
        flat.update(ctx.variants[name])
        sampled = {k: v for k, v in sampled.items() if k != VARIANT_KEY}
    from search.space import FAMILY_KEY
    if FAMILY_KEY in sampled:
        if sampled[FAMILY_KEY] not in ctx.families:
            raise ValueError(f"trial asks for family {sampled[FAMILY_KEY]!r}, which this sweep does not define")
        flat.update(ctx.families[sampled[FAMILY_KEY]])
    flat.update(to_overrides(sampled))
    ck = flat.get("init.checkpoint")
    if isinstance(ck, str) and ck in REFERENCES:
        if ck not in ctx.references:
            raise ValueError(f"init.checkpoint={ck}: this sweep has no {ck[1:]} reference run")
        flat["init.checkpoint"] = ctx.references[ck]
    return RunConfig.from_flat(flat, source="trial config")


class TuneReporter(Callback):
    """Collects each epoch's summary; ``report`` sends it to Tune with the resumable checkpoint."""

    def __init__(self, run_dir: Path, mlflow_run_id: Optional[str]):
        self.run_dir = run_dir
        self.mlflow_run_id = mlflow_run_id
        self.pending: dict[str, float] = {}

    def on_epoch_end(self, epoch, metrics):
        self.pending = {k: float(metrics[k]) for k in TUNE_KEYS if k in metrics}

    def add(self, extra: dict[str, float]) -> None:
        self.pending.update({k: v for k, v in extra.items() if k in TUNE_KEYS})

    def report(self) -> None:
        from ray import tune
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("last.pt", "best.pt"):
                src = self.run_dir / name
                if src.is_file():
                    shutil.copy2(src, Path(tmp) / name)
            if self.mlflow_run_id:
                (Path(tmp) / RUN_ID_FILE).write_text(self.mlflow_run_id)
            tune.report(self.pending, checkpoint=tune.Checkpoint.from_directory(tmp))


class _DeltaForwarder(Callback):
    """Puts the MLflow logger's baseline deltas into the Tune report of the same epoch."""

    def __init__(self, mlflow_logger, reporter: TuneReporter):
        self.mlflow_logger = mlflow_logger
        self.reporter = reporter

    def on_epoch_end(self, epoch, metrics):
        if self.mlflow_logger.history:
            self.reporter.add(self.mlflow_logger.history[-1])


def _find_trial_run(client, experiment_id: str, parent: Optional[str], trial_id: str) -> Optional[str]:
    filt = f"tags.trial_id = '{trial_id}'"
    if parent:
        filt += f" and tags.`mlflow.parentRunId` = '{parent}'"
    runs = client.search_runs([experiment_id], filter_string=filt, max_results=1)
    return runs[0].info.run_id if runs else None


def run_trial(config: dict[str, Any], ctx: SweepContext, stores: Optional[dict] = None) -> None:
    """The Tune function trainable (wrapped with tune.with_parameters by the sweep); ``stores``
    maps each data.path of the sweep to its store, shared through Ray's object store."""
    from ray import tune

    from training.engine import Trainer

    import torch
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))   # concurrent trials must not oversubscribe cores
    cfg = trial_config(config, ctx)
    store = (stores or {}).get(cfg.data.path)
    tune_ctx = tune.get_context()
    trial_dir = Path(tune_ctx.get_trial_dir()).resolve()   # trials chdir: keep paths absolute
    trial_id = tune_ctx.get_trial_id()
    run_dir = trial_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None
    mlflow_run_id = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            for name in ("last.pt", "best.pt"):
                if (Path(d) / name).is_file():
                    shutil.copy2(Path(d) / name, run_dir / name)
            if (Path(d) / RUN_ID_FILE).is_file():
                mlflow_run_id = (Path(d) / RUN_ID_FILE).read_text().strip()
        resume_from = run_dir / "last.pt"

    callbacks: list[Callback] = []
    mlflow_logger = None
    if ctx.tracking_uri:
        from mlflow_server.run_logger import TRIAL_PLOTS, MlflowRunLogger
        from mlflow.tracking import MlflowClient
        client = MlflowClient(ctx.tracking_uri)
        if mlflow_run_id is None:
            exp = client.get_experiment_by_name(ctx.experiment)
            if exp is not None:
                mlflow_run_id = _find_trial_run(client, exp.experiment_id, ctx.parent_run_id, trial_id)
        tags = {"role": ctx.role, "trial_id": trial_id, "sweep": ctx.sweep_name,
                **{k: str(config[k]) for k in ("variant", "family") if k in config}}
        baseline = None
        if ctx.baselines and store is not None:
            from search.baselines import KEY_TAG, RUN_TAG, comparison_key
            key = comparison_key(cfg, store.fingerprint, list(store.task_names), ctx.tuned_keys)
            baseline = ctx.baselines.get(key)
            tags[KEY_TAG] = key
            if baseline is not None:
                tags[RUN_TAG] = baseline[0]
        if "family" in tags:
            tags["arm"] = tags.pop("family")     # the space's family name; the tag family is the model's
        mlflow_logger = MlflowRunLogger(
            ctx.tracking_uri, ctx.experiment, cfg, run_name=f"{ctx.sweep_name}/{trial_id}",
            parent_run_id=ctx.parent_run_id, run_id=mlflow_run_id,
            baseline=baseline[1] if baseline is not None else None, tags=tags,
            spool_dir=trial_dir / "mlflow_spool", async_=False, plots=TRIAL_PLOTS)
        callbacks.append(mlflow_logger)
    reporter = TuneReporter(run_dir, mlflow_logger.run_id if mlflow_logger else None)
    if mlflow_logger is not None:
        callbacks.append(_DeltaForwarder(mlflow_logger, reporter))
    from analysis.grad_flow import maybe_grad_flow
    grad_flow = maybe_grad_flow(cfg, publish=mlflow_logger.log_artifacts if mlflow_logger else None)
    if grad_flow is not None:
        callbacks.insert(0, grad_flow)
    callbacks.extend(ctx.extra_callbacks)
    callbacks.append(reporter)

    if cfg.model.family == "motif_gbm":
        from training.gbm_run import train_gbm
        if cfg.gbm.n_jobs is None:
            cfg = cfg.with_overrides({"gbm.n_jobs": max(1, int(ctx.cpus_per_trial))})
        try:
            train_gbm(cfg, run_dir, callbacks=callbacks, store=store)   # one "epoch": fit with early stopping
            reporter.report()
        except SystemExit:      # Tune ending the finished trial inside report(): the run is complete
            raise
        except BaseException:
            if mlflow_logger is not None:
                mlflow_logger.fail("FAILED")
            raise
        return

    trainer = Trainer(cfg, run_dir, store=store, callbacks=callbacks, progress=False)
    if resume_from is not None:
        trainer.resume(resume_from)
    try:
        trainer.callbacks.on_train_start(trainer.info())
        for epoch in range(trainer.start_epoch, cfg.train.epochs + 1):
            trainer.run_epoch(epoch)
            last = epoch == cfg.train.epochs or trainer.should_stop()
            if last:
                trainer.finish()         # test metrics and artifacts before Tune may end the trial
            reporter.report()
            if last:
                break
    except SystemExit:
        # Tune ends a trial it stops (ASHA, or max_t reached) with sys.exit inside report().
        if mlflow_logger is not None:
            mlflow_logger.stopped_early()
        raise
    except BaseException:
        if mlflow_logger is not None:
            mlflow_logger.fail("FAILED")
        raise
