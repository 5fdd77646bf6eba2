"""Run one config, whatever its model family: the one entry that `mtlsweep train`, the Ray Tune
trial and the baselines all use.

    result = run(cfg, run_dir, callbacks=[...], store=store, resume=False)

Families register a runner here (cnn: the training engine; motif_gbm: motif scores + boosted
trees). Whatever ends a run early — an error, Ctrl-C, or a scheduler stopping it — reaches every
callback's ``on_train_abort`` before it propagates, so a tracker can close its run in the right
state; nothing here knows Ray or MLflow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import RunConfig
from mtlsweep.training.callbacks import Callback, CallbackList
from mtlsweep.training.engine import LAST, RunResult, Trainer
from mtlsweep.training.gbm_runner import run_gbm


def _run_cnn(cfg: RunConfig, run_dir: Path, callbacks: CallbackList, store, resume: bool, progress: bool) -> RunResult:
    trainer = Trainer(cfg, run_dir, store=store, callbacks=[callbacks], progress=progress)
    if resume:
        trainer.resume(run_dir / LAST)
    return trainer.fit()


def _run_motif_gbm(cfg: RunConfig, run_dir: Path, callbacks: CallbackList, store, resume: bool,
                   progress: bool) -> RunResult:
    if resume:
        raise ConfigError(f"{run_dir}: a motif_gbm run is one fit with early stopping; there is nothing to resume")
    return run_gbm(cfg, run_dir, [callbacks], store=store, progress=progress)


FAMILIES: dict[str, Callable[..., RunResult]] = {"cnn": _run_cnn, "motif_gbm": _run_motif_gbm}


def run(cfg: RunConfig, run_dir: str | Path, *, callbacks: Iterable[Callback] = (), store=None,
        resume: bool = False, progress: bool = True) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (resuming from its last checkpoint if ``resume``) and test
    the best model; ``store`` is the data already loaded (else cfg.data.path is opened)."""
    cbs = CallbackList(callbacks)
    try:
        return FAMILIES[cfg.model.family](cfg, Path(run_dir), cbs, store, resume, progress)
    except BaseException as exc:
        cbs.on_train_abort(exc)
        raise
