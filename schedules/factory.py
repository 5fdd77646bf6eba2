"""From the config's schedule section to the objects the training loop calls."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from schedules.base import Joint, Schedule
from schedules.weighting import Equal, Weighting


def build_schedule(cfg, task_names: Sequence[str], prevalence: np.ndarray, epochs: int,
                   seed: int = 0) -> Schedule:
    if cfg.order == "joint" and cfg.warm_start.task is None:
        return Joint(len(task_names))
    raise ValueError(f"schedule.order={cfg.order!r} with warm start {cfg.warm_start.task!r} "
                     "is not available yet; only schedule.order=joint without warm start is")


def build_weighting(cfg, n_tasks: int) -> Weighting:
    if cfg.weighting == "equal":
        return Equal()
    raise ValueError(f"schedule.weighting={cfg.weighting!r} is not available yet; only equal is")
