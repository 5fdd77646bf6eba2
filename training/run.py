"""Execute a run request, whatever its model family: the one place every run goes through.

    result = execute(RunRequest(cfg, run_dir, data=store, callbacks=[...], baseline=...))

Each model family's runner is registered in config/registry.py (cnn: the training engine; the
reference families motif_gbm: motif scores + boosted trees, kmer_linear: k-mer counts + logistic
regression). Whatever ends a
run early (an error, Ctrl-C, a scheduler stopping it) reaches every callback's
``on_train_abort`` before it propagates, so a tracker can close its run in the right state;
nothing here knows Ray or MLflow.
"""
from __future__ import annotations

from typing import Optional

import torch

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.registry import FAMILIES
from mtlsweep.training import reference_runner
from mtlsweep.training.callbacks import CallbackList
from mtlsweep.training.engine import LAST, RunResult, Trainer
from mtlsweep.training.request import RunRequest, resolve


# The family runners (config/registry.py FAMILIES names them): request, callbacks, what `prepare` built.
def run_cnn(req: RunRequest, callbacks: CallbackList, prepared: Optional[Trainer]) -> RunResult:
    trainer = prepared or Trainer(req.cfg, req.run_dir, store=req.data, progress=req.progress, baseline=req.baseline)
    trainer.callbacks = callbacks
    if req.resume:
        trainer.resume(req.run_dir / LAST, force=req.resume == "force", mutable=req.mutable)
    return trainer.fit()


def _refuse_resume(req: RunRequest, what: str) -> None:
    if req.resume:
        raise ConfigError(f"{req.run_dir}: a {req.cfg.model.family} run is {what}; there is nothing to resume")


def run_motif_gbm(req: RunRequest, callbacks: CallbackList, prepared: None) -> RunResult:
    _refuse_resume(req, "one fit with early stopping")
    return reference_runner.run_gbm(req.cfg, req.run_dir, [callbacks], store=req.data, progress=req.progress,
                                    baseline=req.baseline)


def run_kmer_linear(req: RunRequest, callbacks: CallbackList, prepared: None) -> RunResult:
    _refuse_resume(req, "one fit tuned on validation")
    return reference_runner.run_kmer_linear(req.cfg, req.run_dir, [callbacks], store=req.data,
                                            progress=req.progress, baseline=req.baseline)


def prepare(req: RunRequest) -> tuple[RunRequest, Optional[Trainer]]:
    """The resolved request and what its run needs built (model, schedule, optimizer), without
    training or writing anything, so that a user's mistake is refused before any work; pass both
    to `execute`, which trains what was built instead of building it again."""
    req = resolve(req)
    if req.cfg.model.family == "cnn":
        return req, Trainer(req.cfg, req.run_dir, store=req.data, progress=req.progress, baseline=req.baseline)
    for split in ("train", "valid"):
        if split not in req.data.splits or req.data.n(split) == 0:
            raise ConfigError(f"{req.cfg.data.path}: the {split} split is empty; training needs train and valid")
    return req, None


def execute(req: RunRequest, prepared: Optional[Trainer] = None) -> RunResult:
    """Train ``req.cfg`` into ``req.run_dir`` (resuming from its last checkpoint if asked; a run
    that already finished only with ``resume="force"``) and test the best model."""
    req = resolve(req)
    torch.set_num_threads(req.cfg.train.num_threads)
    cbs = CallbackList(req.callbacks)
    try:
        return FAMILIES[req.cfg.model.family].load()(req, cbs, prepared)
    except BaseException as exc:
        cbs.on_train_abort(exc)
        raise
