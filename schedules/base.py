"""A schedule answers one question per step: how much does each task's loss count now?"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Setting:
    """What an ordering is built from besides its config section (schedules.factory works it out)."""
    n_tasks: int
    order: list[int]                   # the tasks in schedule.order_by's order
    shuffle: bool                      # order_by shuffle: redraw the order each epoch
    seed: int
    epochs: int
    sizes: np.ndarray                  # labelled train samples per task
    groups: Optional[list[list[int]]]  # the task groups in the order they take turns (group orders)


class Schedule(ABC):
    """weights(epoch, step, steps_per_epoch) -> float tensor [T]; epochs count from 1.

    An ordering registered in config/registry.py ORDERINGS is built by its ``from_config(cfg,
    setting)`` (``cfg``: the config's schedule section, ``setting``: a ``Setting``)."""

    def __init__(self, n_tasks: int):
        self.n_tasks = n_tasks

    @classmethod
    def from_config(cls, cfg, setting: Setting) -> "Schedule":
        return cls(setting.n_tasks)

    @abstractmethod
    def weights(self, epoch: int, step: int, steps_per_epoch: int) -> torch.Tensor:
        """The weight of each task's loss at this step."""

    def observe(self, epoch: int, val_auroc: np.ndarray) -> None:
        """Validation AUROC per task after each epoch (plateau-driven phases use it)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Joint(Schedule):
    """All tasks, all the time: the usual multi-task model."""

    def __init__(self, n_tasks: int):
        super().__init__(n_tasks)
        self._ones = torch.ones(n_tasks)

    def weights(self, epoch, step, steps_per_epoch):
        return self._ones
