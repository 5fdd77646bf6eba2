"""How a run reports: the typed contract between the training loop and whatever watches it.

The engine (and a reference family's runner) calls these hooks with a ``RunInfo`` once the
model is built and an ``EpochReport`` after each epoch; Ray Tune and MLflow plug in from
outside as callbacks. A report's metrics already hold everything a run is judged by: per-task
AUROC, the deltas against the run's baseline and the objective, so a tracker only records them.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional


@dataclass
class RunInfo:
    """What a run is, once its model is built (or, for a fitted reference, fitted)."""
    run_dir: Path
    task_names: list[str]
    n_params: int                                   # parameters (tree nodes for boosted trees)
    flops_per_sample: int
    n_train: int
    data_fingerprint: str
    steps_per_epoch: int = 1
    start_epoch: int = 1                            # > 1 when resumed
    device: str = "cpu"
    oracle: Optional[dict] = None                   # split -> task -> {"auroc", "auprc"}: the data's ceiling
    baseline: Optional[dict[str, float]] = None     # task -> the baseline's validation AUROC
    shared_width: Optional[float] = None            # the shared layers' scale the model was built with
    family: dict[str, Any] = field(default_factory=dict)   # what a family says of itself (backend, tuned, ...)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["n_tasks"] = self.n_tasks
        return d


@dataclass
class EpochReport:
    """One epoch: every number measured (flat keys, e.g. ``val/auroc/<task>``), whether it is the
    best epoch so far (the checkpoint a run is judged by) and whether any epoch follows."""
    epoch: int
    metrics: dict[str, float]
    best: bool
    last: bool


class Callback:
    def on_train_start(self, info: RunInfo) -> None:
        """Once, after the model is built: params, flops, task names, run dir, resumed epoch."""

    def on_batch_end(self, trainer: "Any", epoch: int, step: int, batch: tuple) -> None:
        """After each optimizer step; ``batch`` is (x, y, mask) on the device. Analyses that
        need the model mid-training (gradient flow) hook in here; keep it cheap or sparse."""

    def on_epoch_end(self, report: EpochReport) -> None:
        """After validation. A callback may add its own keys to ``report.metrics`` (seen by the
        callbacks after it)."""

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        """After ``path`` (the resumable last checkpoint) was written atomically."""

    def on_train_end(self, result: "Any") -> None:
        """After the final test evaluation of the best checkpoint."""

    def on_train_abort(self, exc: BaseException) -> None:
        """The run ends without on_train_end: ``exc`` (an error, KeyboardInterrupt, or the
        SystemExit with which a scheduler stops a trial) propagates after the callbacks."""


class CallbackList(Callback):
    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def on_train_start(self, info):
        for cb in self.callbacks:
            cb.on_train_start(info)

    def on_batch_end(self, trainer, epoch, step, batch):
        for cb in self.callbacks:
            cb.on_batch_end(trainer, epoch, step, batch)

    def on_epoch_end(self, report):
        for cb in self.callbacks:
            cb.on_epoch_end(report)

    def on_checkpoint(self, path, epoch):
        for cb in self.callbacks:
            cb.on_checkpoint(path, epoch)

    def on_train_end(self, result):
        for cb in self.callbacks:
            cb.on_train_end(result)

    def on_train_abort(self, exc):
        for cb in self.callbacks:
            cb.on_train_abort(exc)


def _fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


class ConsoleReporter(Callback):
    """One line per epoch, for `mtlsweep train`."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def on_train_start(self, info):
        print(f"run {info.run_dir}: {info.n_tasks} tasks, {info.n_params:,} parameters, "
              f"{info.flops_per_sample / 1e6:.1f} MFLOPs/sample, {info.n_train:,} train sequences"
              + (f", resumed after epoch {info.start_epoch - 1}" if info.start_epoch > 1 else ""),
              file=self.stream)

    def on_epoch_end(self, report):
        m = report.metrics
        best = " *" if report.best else ""
        delta = f"  Δ {m['val/delta_auroc_mean']:+.4f}" if "val/delta_auroc_mean" in m else ""
        print(f"epoch {report.epoch:3d}  train/loss {_fmt(m['train/loss'])}  val/loss {_fmt(m['val/loss'])}  "
              f"train/auroc_mean {_fmt(m.get('train/auroc_mean'))}  "
              f"val/auroc_mean {_fmt(m['val/auroc_mean'])}  val/auprc_mean {_fmt(m['val/auprc_mean'])}{delta}  "
              f"{m['cost/epoch_s']:.1f}s  {m['cost/samples_per_s']:.0f} seq/s{best}", file=self.stream)

    def on_train_end(self, result):
        t = result.test_summary
        cert = f"; {result.convergence.detail.split(';')[0]}" if result.convergence else ""
        print(f"best epoch {result.best_epoch}: val/auroc_mean {_fmt(result.best_val_auroc)}; "
              f"test/auroc_mean {_fmt(t.get('test/auroc_mean'))}  test/auprc_mean {_fmt(t.get('test/auprc_mean'))}"
              f"{cert}  -> {result.run_dir}", file=self.stream)
