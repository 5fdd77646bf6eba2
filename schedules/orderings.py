"""Task orderings: which tasks' losses count at each step.

Every ordering is a pure function of (epoch, step, steps per epoch) and its constructor
arguments, seeded per epoch where it draws at random, so a resumed run replays exactly
the same sequence without carrying generator state in the checkpoint.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from mtlsweep.schedules.base import Joint, Schedule, Setting


def _one_hot(n: int, i: int) -> torch.Tensor:
    w = torch.zeros(n)
    w[i] = 1.0
    return w


class TaskPerEpoch(Schedule):
    """Each epoch is cut into T blocks of consecutive steps, one task per block.

    ``order`` is a permutation of task indices; with ``shuffle`` it is redrawn each epoch
    from (seed, epoch). When an epoch has fewer steps than tasks, the blocks are one step
    long and the tasks that do not fit wait for the next epoch's order."""

    def __init__(self, n_tasks: int, order: Sequence[int], shuffle: bool = False, seed: int = 0):
        super().__init__(n_tasks)
        self.order = list(order)
        self.shuffle = shuffle
        self.seed = seed

    @classmethod
    def from_config(cls, cfg, setting: Setting) -> "Schedule":
        return cls(setting.n_tasks, setting.order, shuffle=setting.shuffle, seed=setting.seed)

    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return self.order
        return [int(i) for i in np.random.default_rng([self.seed, epoch, 17]).permutation(self.order)]

    def weights(self, epoch, step, steps_per_epoch):
        order = self.epoch_order(epoch)
        block = step * len(order) // steps_per_epoch if steps_per_epoch >= len(order) else step
        return _one_hot(self.n_tasks, order[block])


class RoundRobin(Schedule):
    """One task per step, cycling through ``order`` across epoch boundaries."""

    def __init__(self, n_tasks: int, order: Sequence[int], shuffle: bool = False, seed: int = 0):
        super().__init__(n_tasks)
        self.order = list(order)
        self.shuffle = shuffle
        self.seed = seed

    @classmethod
    def from_config(cls, cfg, setting: Setting) -> "Schedule":
        return cls(setting.n_tasks, setting.order, shuffle=setting.shuffle, seed=setting.seed)

    def weights(self, epoch, step, steps_per_epoch):
        g = (epoch - 1) * steps_per_epoch + step
        cycle, pos = divmod(g, len(self.order))
        order = self.order
        if self.shuffle:
            order = [int(i) for i in np.random.default_rng([self.seed, cycle, 29]).permutation(self.order)]
        return _one_hot(self.n_tasks, order[pos])


class GroupCycle(Schedule):
    """One task group at a time (Selective Task Group Updates): ``per="block"`` cuts each epoch
    into G blocks of consecutive steps, one group per block; ``per="step"`` takes the groups
    in turn, one per step, across epoch boundaries. ``groups`` lists each group's tasks, in
    the order the groups take their turn."""

    def __init__(self, n_tasks: int, groups: Sequence[Sequence[int]], per: str = "block"):
        super().__init__(n_tasks)
        if per not in ("block", "step"):
            raise ValueError(f"GroupCycle per={per!r}; allowed block or step")
        self.masks = []
        for members in groups:
            w = torch.zeros(n_tasks)
            w[list(members)] = 1.0
            self.masks.append(w)
        self.per = per

    @classmethod
    def from_config(cls, cfg, setting: Setting) -> "Schedule":
        if setting.groups is None:
            raise ValueError(f"schedule.order={cfg.order} needs task groups (model.sharing.groups)")
        return cls(setting.n_tasks, setting.groups, per="block" if cfg.order == "group_blocks" else "step")

    def weights(self, epoch, step, steps_per_epoch):
        G = len(self.masks)
        if self.per == "step":
            return self.masks[((epoch - 1) * steps_per_epoch + step) % G]
        block = step * G // steps_per_epoch if steps_per_epoch >= G else step % G
        return self.masks[block]


class Curriculum(Schedule):
    """Tasks enter in ``order``, task ``order[i]`` at epoch ``entry[i]``, and stay."""

    def __init__(self, n_tasks: int, order: Sequence[int], entry_epochs: Sequence[int]):
        super().__init__(n_tasks)
        self.entry = np.zeros(n_tasks, dtype=np.int64)
        for task, e in zip(order, entry_epochs):
            self.entry[task] = e

    @classmethod
    def from_config(cls, cfg, setting: Setting) -> "Schedule":
        n = setting.n_tasks
        entries = cfg.curriculum_epochs or cls.even_entries(n, setting.epochs)
        if len(entries) != n:
            raise ValueError(f"schedule.curriculum_epochs must have one entry epoch per task ({n}), got {len(entries)}")
        if any(e < 1 for e in entries):
            raise ValueError("schedule.curriculum_epochs entries must be >= 1")
        return cls(n, setting.order, entries)

    @staticmethod
    def even_entries(n: int, epochs: int) -> list[int]:
        """Entries spread over the first half of training, first task at epoch 1."""
        span = max(1, math.ceil(epochs / 2))
        return [1 + (i * span) // n for i in range(n)]

    def weights(self, epoch, step, steps_per_epoch):
        return torch.from_numpy((self.entry <= epoch).astype(np.float32))


class Annealed(Schedule):
    """One task per step, sampled with probability ∝ n_t^α; α falls linearly from 1 at the
    first epoch to ``floor`` at the last (Stickland & Murray 2019)."""

    def __init__(self, n_tasks: int, sizes: np.ndarray, epochs: int, floor: float = 0.0, seed: int = 0):
        super().__init__(n_tasks)
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.epochs = epochs
        self.floor = floor
        self.seed = seed
        self._cache: tuple[int, int, np.ndarray] | None = None

    @classmethod
    def from_config(cls, cfg, setting: Setting) -> "Schedule":
        return cls(setting.n_tasks, setting.sizes, setting.epochs, floor=cfg.anneal_floor, seed=setting.seed)

    def alpha(self, epoch: int) -> float:
        if self.epochs <= 1:
            return 1.0
        return 1.0 - (1.0 - self.floor) * (epoch - 1) / (self.epochs - 1)

    def probabilities(self, epoch: int) -> np.ndarray:
        p = np.where(self.sizes > 0, self.sizes, 0.0) ** self.alpha(epoch)
        p[self.sizes <= 0] = 0.0
        return p / p.sum()

    def weights(self, epoch, step, steps_per_epoch):
        if self._cache is None or self._cache[:2] != (epoch, steps_per_epoch):
            rng = np.random.default_rng([self.seed, epoch, 41])
            draws = rng.choice(self.n_tasks, size=steps_per_epoch, p=self.probabilities(epoch))
            self._cache = (epoch, steps_per_epoch, draws)
        return _one_hot(self.n_tasks, int(self._cache[2][step]))


class WarmStart(Schedule):
    """Task ``task`` alone for ``epochs`` epochs (or until its validation AUROC stops
    improving), then ``then`` with its epochs counted from the end of the warm start."""

    def __init__(self, n_tasks: int, task: int, epochs: int, then: Schedule,
                 until_plateau: bool = False):
        super().__init__(n_tasks)
        self.task = task
        self.max_epochs = epochs
        self.then = then
        self.until_plateau = until_plateau
        self.best = -math.inf
        self.ended_after: Optional[int] = None if (until_plateau or epochs > 0) else 0

    def in_warm_phase(self, epoch: int) -> bool:
        if self.ended_after is not None:
            return epoch <= self.ended_after
        return not (self.max_epochs and epoch > self.max_epochs)

    def weights(self, epoch, step, steps_per_epoch):
        if self.in_warm_phase(epoch):
            return _one_hot(self.n_tasks, self.task)
        offset = self.ended_after if self.ended_after is not None else self.max_epochs
        return self.then.weights(epoch - offset, step, steps_per_epoch)

    def observe(self, epoch, val_auroc):
        if self.ended_after is not None and epoch > self.ended_after:
            self.then.observe(epoch - self.ended_after, val_auroc)
            return
        score = float(val_auroc[self.task])
        improved = np.isfinite(score) and score > self.best
        if improved:
            self.best = score
        if (self.until_plateau and not improved) or (self.max_epochs and epoch >= self.max_epochs):
            self.ended_after = epoch

    def state_dict(self):
        return {"best": self.best, "ended_after": self.ended_after, "then": self.then.state_dict()}

    def load_state_dict(self, state):
        self.best = state["best"]
        self.ended_after = state["ended_after"]
        self.then.load_state_dict(state["then"])


__all__ = ["Joint", "TaskPerEpoch", "RoundRobin", "Curriculum", "Annealed", "WarmStart"]
