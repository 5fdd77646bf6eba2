"""Reading a run's learning curve: how long it took to reach a target. Torch-free, so that the
commands that only read MLflow (compare) can use it."""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class TimeToTarget(NamedTuple):
    epochs: float               # NaN when the target was never reached
    seconds: float


def time_to_target(history: Sequence[dict], target: float, metric: str = "val/auroc_mean",
                   seconds_key: str = "cost/epoch_s") -> TimeToTarget:
    """Epochs and wall seconds (sum of ``cost/epoch_s`` so far) until ``metric`` first reaches
    ``target``; history is the per-epoch metrics list of a run (metrics.json "history", or
    MLflow metric histories merged by step)."""
    seconds = 0.0
    for i, h in enumerate(history):
        seconds += float(h.get(seconds_key, math.nan))
        v = h.get(metric)
        if v is not None and math.isfinite(float(v)) and float(v) >= target:
            return TimeToTarget(float(h.get("epoch", i + 1)), seconds)
    return TimeToTarget(math.nan, math.nan)
