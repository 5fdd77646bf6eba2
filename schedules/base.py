"""A schedule answers one question per step: how much does each task's loss count now?"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch


class Schedule(ABC):
    """weights(epoch, step, steps_per_epoch) -> float tensor [T]; epochs count from 1."""

    def __init__(self, n_tasks: int):
        self.n_tasks = n_tasks

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
