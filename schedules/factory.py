"""From the config's schedule section to the objects the training loop calls.

Errors name the config field: they are user mistakes found once the run's tasks are known.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence, Union

import numpy as np

from mtlsweep.config.registry import ORDERINGS, WEIGHTINGS
from mtlsweep.schedules.base import Schedule, Setting
from mtlsweep.schedules.orderings import WarmStart
from mtlsweep.schedules.weighting import Weighting


def resolve_task(field: str, task: Union[str, int], task_names: Sequence[str]) -> int:
    if isinstance(task, int) and not isinstance(task, bool):
        if 0 <= task < len(task_names):
            return task
        raise ValueError(f"{field}={task}: index out of range; the run has {len(task_names)} tasks (0..{len(task_names) - 1})")
    if task in task_names:
        return list(task_names).index(task)
    shown = ", ".join(list(task_names)[:8]) + (", ..." if len(task_names) > 8 else "")
    raise ValueError(f"{field}={task!r} is not among the run's tasks ({shown})")


def helpfulness(Z: np.ndarray) -> np.ndarray:
    """How much a step on each task lowers the others' losses: the mean of row u of the
    affinity matrix without its diagonal (NaN entries left out; -inf when none measured)."""
    off = np.where(np.eye(Z.shape[0], dtype=bool), np.nan, Z)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(off, axis=1) if Z.shape[0] > 1 else np.full(Z.shape[0], np.nan)
    return np.nan_to_num(mean, nan=-np.inf)


def task_order(cfg, task_names: Sequence[str], prevalence: np.ndarray,
               baseline_auroc: Optional[np.ndarray], seed: int, affinity: Optional[np.ndarray] = None) -> list[int]:
    n = len(task_names)
    if cfg.order_by == "given":
        if not cfg.order_list:
            return list(range(n))
        order = [resolve_task("schedule.order_list", t, task_names) for t in cfg.order_list]
        if sorted(order) != list(range(n)):
            raise ValueError(f"schedule.order_list must name each of the run's {n} tasks exactly once "
                             f"(got {len(order)} entries, {len(set(order))} distinct)")
        return order
    if cfg.order_by == "prevalence":
        key = np.asarray(prevalence, dtype=np.float64)
    elif cfg.order_by == "affinity":
        if affinity is None:
            raise ValueError("schedule.order_by=affinity needs schedule.affinity (a run trained with "
                             "train.affinity_every)")
        key = helpfulness(affinity)
    elif cfg.order_by == "baseline_auroc":
        if baseline_auroc is None:
            raise ValueError("schedule.order_by=baseline_auroc needs schedule.baseline_auroc (a per-task AUROC file)")
        key = np.nan_to_num(np.asarray(baseline_auroc, dtype=np.float64), nan=-np.inf)
    else:  # shuffle: a seeded order, redrawn per epoch by the orderings that support it
        return [int(i) for i in np.random.default_rng([seed, 7]).permutation(n)]
    sign = -1.0 if cfg.order_descending else 1.0
    return [int(i) for i in np.argsort(sign * key, kind="stable")]


def build_schedule(cfg, task_names: Sequence[str], *, prevalence: np.ndarray, sizes: np.ndarray,
                   epochs: int, seed: int = 0, baseline_auroc: Optional[np.ndarray] = None,
                   affinity: Optional[np.ndarray] = None, groups: Optional[Sequence[int]] = None) -> Schedule:
    """``affinity``: a measured T x T matrix (order_by affinity); ``groups``: the group of every
    task (the group orders), as model.sharing.groups resolves them."""
    n = len(task_names)
    order = task_order(cfg, task_names, prevalence, baseline_auroc, seed, affinity)
    turns = None
    if groups is not None:
        # Groups take their turn in the order of their first task in the ordering.
        turn = sorted(set(groups), key=lambda g: min(order.index(t) for t in range(n) if groups[t] == g))
        turns = [[t for t in order if groups[t] == g] for g in turn]
    setting = Setting(n, order, cfg.order_by == "shuffle", seed, epochs, np.asarray(sizes), turns)
    inner: Schedule = ORDERINGS.build(cfg.order, cfg, setting)
    ws = cfg.warm_start
    if ws.task is None:
        return inner
    task = resolve_task("schedule.warm_start.task", ws.task, task_names)
    if ws.epochs >= epochs and not ws.until_plateau:
        raise ValueError(f"schedule.warm_start.epochs={ws.epochs} leaves no epoch for the other tasks "
                         f"(train.epochs={epochs})")
    return WarmStart(n, task, ws.epochs, inner, until_plateau=ws.until_plateau)


def build_weighting(cfg, n_tasks: int, *, seed: int = 0, task_names: Optional[Sequence[str]] = None) -> Weighting:
    """The registered weighting of ``schedule.weighting`` (config/registry.py WEIGHTINGS).

    ``seed`` (the run's train.seed) and ``task_names`` reach a ``from_config`` that names them as
    parameters (random weighting, fixed weights by task name); one that does not is called as
    ``from_config(cfg, n_tasks)``, as every plugin is."""
    impl = WEIGHTINGS[cfg.weighting].load()
    accepted = inspect.signature(impl.from_config).parameters
    extra = {k: v for k, v in (("seed", seed), ("task_names", task_names)) if k in accepted}
    return impl.from_config(cfg, n_tasks, **extra)
