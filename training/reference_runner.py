"""A run of a reference family (motif_gbm, kmer_linear): one fit, evaluated and reported exactly
like a CNN run.

The same callbacks, metric names, metrics.json, per_task.csv and RunResult, as one "epoch"; the
fit's own convergence (early stopping before the round cap, a converged solver) is its
certificate. A family's fit provides: task_names, probs (split -> [N, T]), skipped, timings
(features_*, fit_s), stopped (task -> its fit ended on its own), n_params, flops_per_sample,
tuned() (what it tuned on validation: dimension -> {"values": tried, "chosen": per task}), metrics(), info(),
convergence_terms() and save(run_dir).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import GbmConfig, RunConfig
from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import Motif
from mtlsweep.data.store import open_dataset
from mtlsweep.data.synthetic import load_oracle
from mtlsweep.models.kmer_linear import fit_kmer_linear
from mtlsweep.models.motif_gbm import fit_gbm
from mtlsweep.training.callbacks import Callback, CallbackList, EpochReport, RunInfo
from mtlsweep.training.certificates import fitted_convergence
from mtlsweep.training.cost import peak_rss_mb
from mtlsweep.training.engine import RunResult, write_outputs
from mtlsweep.training.metrics import TaskMetrics, baseline_array, delta_metrics, task_metrics
from mtlsweep.training.track_inputs import select_tracks


def _undefine(m: TaskMetrics, skipped: Sequence[int]) -> TaskMetrics:
    """A task without a model has no metric: NaN, never the 0.5 of a constant prediction."""
    if len(skipped):
        for arr in (m.auroc, m.auprc, m.accuracy, m.loss):
            arr[list(skipped)] = np.nan
    return m


def evaluate(fit, store) -> dict[str, TaskMetrics]:
    """Per split, the fit's task metrics; a task without a model (skipped) is NaN."""
    return {s: _undefine(task_metrics(p, store.split(s).labels), fit.skipped) for s, p in fit.probs.items()}


def _per_task(prefix: str, names: Sequence[str], values) -> dict[str, float]:
    return {f"{prefix}/{n}": float(v) for n, v in zip(names, values)}


def epoch_metrics(fit, metrics: dict[str, TaskMetrics], epoch_s: float,
                  baseline: Optional[np.ndarray] = None) -> dict[str, float]:
    """The one "epoch" of a reference run, under the CNN engine's metric names (and its deltas
    against ``baseline``, the baseline's AUROC per task, when there is one)."""
    names = fit.task_names
    train_m, val = metrics["train"], metrics["valid"]
    train_loss = float(np.nanmean(train_m.loss)) if np.isfinite(train_m.loss).any() else math.nan
    features_s = sum(v for k, v in fit.timings.items() if k.startswith("features_"))
    train_s = features_s + fit.timings["fit_s"]
    n_train = len(fit.probs["train"])
    m: dict[str, float] = {"epoch": 1.0, "train/loss": train_loss, "train/objective": train_loss,
                           "cost/train_s": train_s,
                           "cost/samples_per_s": n_train / train_s if train_s > 0 else math.nan}
    m.update(_per_task("schedule/weight", names, np.ones(len(names))))
    m.update({f"val/{k}": v for k, v in val.summary().items()})
    m.update(_per_task("val/auroc", names, val.auroc))
    m.update(_per_task("val/auprc", names, val.auprc))
    if baseline is not None:
        m.update(delta_metrics(val.auroc, baseline, names))
    m["train/auroc_mean"] = train_m.summary()["auroc_mean"]
    m["gap/auroc"] = m["train/auroc_mean"] - m["val/auroc_mean"]
    m.update({"cost/features_s": features_s, "cost/fit_s": fit.timings["fit_s"]})
    m.update(fit.metrics())
    m["cost/epoch_s"] = epoch_s
    m["cost/peak_mem_mb"] = peak_rss_mb()
    return m


def run_reference(cfg: RunConfig, run_dir, fit_data: Callable, callbacks: Iterable[Callback] = (), store=None,
                  baseline: Optional[Mapping[str, float]] = None):
    """One reference run of ``cfg``: ``fit_data(store)`` fits the family on the run's data (``store``,
    its tasks selected; None: cfg.data.path opened and data.tasks selected); the rest (metrics,
    deltas against ``baseline``, outputs, callbacks, certificate) is the same for every family.

    on_train_start is called after the fit, because the model size is only known then."""
    cbs = CallbackList(callbacks)
    run_dir = Path(run_dir)
    data = store if store is not None else open_dataset(cfg.data.path).select_tasks(cfg.data.tasks)
    t0 = time.perf_counter()
    fit = fit_data(data)
    metrics = evaluate(fit, data)
    val = metrics["valid"]
    if not np.isfinite(val.auroc).any():
        raise DataError(f"{cfg.data.path}: validation AUROC was undefined for every task "
                        "(no task has both positives and negatives in the valid split)")
    run_dir.mkdir(parents=True, exist_ok=True)
    fit.save(run_dir)
    oracle = load_oracle(cfg.data.path, data.fingerprint)
    base = baseline_array(baseline, fit.task_names)
    info = RunInfo(run_dir, fit.task_names, fit.n_params, fit.flops_per_sample, data.n("train"), data.fingerprint,
                   oracle={split: {t: per[t] for t in fit.task_names if t in per} for split, per in oracle.items()}
                   if oracle else None, baseline=dict(baseline) if baseline else None,
                   family={"skipped_tasks": [fit.task_names[i] for i in fit.skipped], "tuned": fit.tuned(),
                           **fit.info()})
    cbs.on_train_start(info)
    m = epoch_metrics(fit, metrics, time.perf_counter() - t0, base)
    history = [m]
    cbs.on_epoch_end(EpochReport(1, m, best=True, last=True))
    test = metrics.get("test")
    test_summary: dict[str, float] = {}
    if test is not None:
        test_summary = {f"test/{k}": v for k, v in test.summary().items()}
        test_summary.update(_per_task("test/auroc", fit.task_names, test.auroc))
        if base is not None:
            test_summary.update(delta_metrics(test.auroc, base, fit.task_names, prefix="test"))
    cert = fitted_convergence({fit.task_names[t]: ok for t, ok in fit.stopped.items()}, *fit.convergence_terms())
    result = RunResult(run_dir, fit.task_names, 1, m["val/auroc_mean"], 1, history, val, test, test_summary, info,
                       cert)
    write_outputs(result, cfg)
    cbs.on_train_end(result)
    return result


def run_gbm(cfg: RunConfig, run_dir, callbacks: Iterable[Callback] = (), store=None, *,
            gbm_cfg: Optional[GbmConfig] = None, motifs: Optional[Sequence[Motif]] = None, progress: bool = False,
            baseline: Optional[Mapping[str, float]] = None):
    """A motif_gbm run; the gbm settings come from ``gbm_cfg`` or else ``cfg.gbm``."""
    gbm = gbm_cfg if gbm_cfg is not None else cfg.gbm
    if cfg.data.task_tracks:
        raise ConfigError("data.task_tracks: motif_gbm fits one feature table for all tasks, so it takes tracks "
                          "shared by all tasks (data.tracks); per-task tracks are for the CNN families")

    def fit_data(data):
        shared, _ = select_tracks(cfg.data, data.track_names, data.task_names, cfg.data.path)
        tracks = [data.track_names[i] for i in shared] if gbm.track_features else []
        return fit_gbm(gbm, data, seed=cfg.train.seed, motifs=motifs, data_path=cfg.data.path, progress=progress,
                       tracks=tracks)
    return run_reference(cfg, run_dir, fit_data, callbacks, store, baseline)


def run_kmer_linear(cfg: RunConfig, run_dir, callbacks: Iterable[Callback] = (), store=None, *,
                    progress: bool = False, baseline: Optional[Mapping[str, float]] = None):
    """A kmer_linear run (the ``kmer:`` section); it reads the sequence only, never signal tracks."""
    return run_reference(cfg, run_dir, lambda data: fit_kmer_linear(cfg.kmer, data, seed=cfg.train.seed,
                                                                   data_path=cfg.data.path, progress=progress),
                         callbacks, store, baseline)
