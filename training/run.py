"""Run one config, whatever its model family: the one entry that `mtlsweep train`, the Ray Tune
trial and the baselines all use.

    result = run(cfg, run_dir, callbacks=[...], store=store, resume=False)

Families register a runner here (cnn: the training engine; the reference families motif_gbm:
motif scores + boosted trees, kmer_linear: k-mer counts + logistic regression). Whatever ends a run early — an error, Ctrl-C, or a scheduler stopping it — reaches every
callback's ``on_train_abort`` before it propagates, so a tracker can close its run in the right
state; nothing here knows Ray or MLflow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import RunConfig
from mtlsweep.training.callbacks import Callback, CallbackList
from mtlsweep.training.engine import LAST, RunResult, Trainer
from mtlsweep.training.reference_runner import run_gbm, run_kmer_linear


def _run_cnn(cfg: RunConfig, run_dir: Path, callbacks: CallbackList, store, resume, progress: bool,
             prepared: Optional[Trainer] = None) -> RunResult:
    trainer = prepared or Trainer(cfg, run_dir, store=store, progress=progress)
    trainer.callbacks = CallbackList([callbacks])
    if resume:
        trainer.resume(run_dir / LAST, force=resume == "force")
    return trainer.fit()


def _run_motif_gbm(cfg: RunConfig, run_dir: Path, callbacks: CallbackList, store, resume,
                   progress: bool, prepared: None = None) -> RunResult:
    if resume:
        raise ConfigError(f"{run_dir}: a motif_gbm run is one fit with early stopping; there is nothing to resume")
    return run_gbm(cfg, run_dir, [callbacks], store=store, progress=progress)


def _run_kmer_linear(cfg: RunConfig, run_dir: Path, callbacks: CallbackList, store, resume,
                     progress: bool, prepared: None = None) -> RunResult:
    if resume:
        raise ConfigError(f"{run_dir}: a kmer_linear run is one fit tuned on validation; there is nothing to resume")
    return run_kmer_linear(cfg, run_dir, [callbacks], store=store, progress=progress)


FAMILIES: dict[str, Callable[..., RunResult]] = {"cnn": _run_cnn, "motif_gbm": _run_motif_gbm,
                                                 "kmer_linear": _run_kmer_linear}


def prepare(cfg: RunConfig, run_dir: str | Path, store, progress: bool = True) -> Optional[Trainer]:
    """Build what a run of ``cfg`` on ``store`` needs (model, schedule, optimizer) without
    training or writing anything, so that a user's mistake is refused before any work; pass
    the result to `run` (``prepared=``), which trains it instead of building it again."""
    if cfg.model.family == "cnn":
        return Trainer(cfg, run_dir, store=store, progress=progress)
    for split in ("train", "valid"):
        if split not in store.splits or store.n(split) == 0:
            raise ConfigError(f"{cfg.data.path}: the {split} split is empty; training needs train and valid")
    return None


def run(cfg: RunConfig, run_dir: str | Path, *, callbacks: Iterable[Callback] = (), store=None,
        resume: bool | str = False, progress: bool = True, prepared: Optional[Trainer] = None) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (resuming from its last checkpoint if ``resume``; a run that
    already finished only with ``resume="force"``) and test the best model; ``store`` is the
    data already loaded (else cfg.data.path is opened); ``prepared``: what `prepare` built."""
    cbs = CallbackList(callbacks)
    try:
        return FAMILIES[cfg.model.family](cfg, Path(run_dir), cbs, store, resume, progress, prepared)
    except BaseException as exc:
        cbs.on_train_abort(exc)
        raise
