"""How a run reports: the engine calls these hooks; Ray Tune and MLflow plug in from outside."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterable


class Callback:
    def on_train_start(self, info: dict[str, Any]) -> None:
        """Once, after the model is built: params, flops, task names, run dir, resumed epoch."""

    def on_batch_end(self, trainer: "Any", epoch: int, step: int, batch: tuple) -> None:
        """After each optimizer step; ``batch`` is (x, y, mask) on the device. Analyses that
        need the model mid-training (gradient flow) hook in here; keep it cheap or sparse."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After validation. ``metrics`` is flat: dotted/slashed keys to floats (``last`` is 1.0
        when no epoch follows); a callback may add its own keys (seen by the callbacks after it)."""

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

    def on_epoch_end(self, epoch, metrics):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, metrics)

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
        print(f"run {info['run_dir']}: {info['n_tasks']} tasks, {info['n_params']:,} parameters, "
              f"{info['flops_per_sample'] / 1e6:.1f} MFLOPs/sample, {info['n_train']:,} train sequences"
              + (f", resumed after epoch {info['start_epoch'] - 1}" if info.get("start_epoch", 1) > 1 else ""),
              file=self.stream)

    def on_epoch_end(self, epoch, m):
        best = " *" if m.get("best") else ""
        print(f"epoch {epoch:3d}  train/loss {_fmt(m['train/loss'])}  val/loss {_fmt(m['val/loss'])}  "
              f"train/auroc_mean {_fmt(m.get('train/auroc_mean'))}  "
              f"val/auroc_mean {_fmt(m['val/auroc_mean'])}  val/auprc_mean {_fmt(m['val/auprc_mean'])}  "
              f"{m['cost/epoch_s']:.1f}s  {m['cost/samples_per_s']:.0f} seq/s{best}", file=self.stream)

    def on_train_end(self, result):
        t = result.test_summary
        print(f"best epoch {result.best_epoch}: val/auroc_mean {_fmt(result.best_val_auroc)}; "
              f"test/auroc_mean {_fmt(t.get('test/auroc_mean'))}  test/auprc_mean {_fmt(t.get('test/auprc_mean'))}"
              f"  -> {result.run_dir}", file=self.stream)
