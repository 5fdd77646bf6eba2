"""Which task belongs to which group, for model.sharing.group_layers and the group schedule.

``model.sharing.groups`` is resolved once the run's tasks are known: explicit lists (names or
indices, every task exactly once), ``truth`` (the groups planted in the synthetic benchmark,
read from the truth.json beside data.path), ``auto:K`` (K clusters of the affinity matrix a
run measured, model.sharing.affinity) or ``tag:K`` (TAG's selection from that matrix). Groups are numbered by their first task, so the same
partition always gives the same model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError
from mtlsweep.training.task_affinity import FILE, cluster, read_affinity, select_groups

TRUTH = "truth.json"


def truth_groups(path: str | Path, tasks: Sequence[str], flag: str = "--truth") -> np.ndarray:
    """Group index of each task from a synthetic benchmark's truth.json."""
    try:
        groups = json.loads(Path(path).read_text())["groups"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{flag} {path}: not a synthetic benchmark truth.json (needs a 'groups' mapping)") from None
    of = {t: i for i, g in enumerate(groups.values()) for t in g["tasks"]}
    missing = [t for t in tasks if t not in of]
    if missing:
        raise ConfigError(f"{flag} {path}: task {missing[0]!r} of the run is in none of its groups")
    return _renumber([of[t] for t in tasks])


def affinity_file(ref: str | Path, flag: str = "model.sharing.affinity") -> Path:
    """A run directory (its mlflow_artifacts/affinity.json) or the affinity.json itself."""
    p = Path(ref)
    if p.is_dir():
        p = p / tag.ARTIFACT_DIR / FILE
    if not p.is_file():
        raise ConfigError(f"{flag}: {ref}: no {FILE}; give a run directory trained with "
                          "train.affinity_every, or its affinity.json")
    return p


def _renumber(labels: Sequence[int]) -> np.ndarray:
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(g), len(first)) for g in labels])


def resolve_groups(sharing, tasks: Sequence[str], data_path: str) -> Optional[list[int]]:
    """The group of every task (None without groups)."""
    spec = sharing.groups
    if spec is None:
        return None
    tasks = list(tasks)
    if spec == "truth":
        path = Path(data_path).parent / TRUTH
        if not path.is_file():
            raise ConfigError(f"model.sharing.groups truth: no {TRUTH} beside {data_path}; "
                              "truth is for the synthetic benchmark (mtlsweep data synth)")
        return truth_groups(path, tasks, "model.sharing.groups truth:").tolist()
    if isinstance(spec, str):                      # auto:K or tag:K, checked by the config
        how, k = spec.split(":", 1)[0], int(spec.split(":", 1)[1])
        names, Z, _ = read_affinity(affinity_file(sharing.affinity))
        if names != tasks:
            raise ConfigError(f"model.sharing.affinity: the matrix is over tasks {names[:4]}..., this run's are "
                              f"{tasks[:4]}...; measure affinity on the same tasks")
        if k > len(tasks):
            raise ConfigError(f"model.sharing.groups {spec}: K is more than the run's {len(tasks)} tasks")
        return _renumber(select_groups(Z, k) if how == "tag" else cluster(Z, k)).tolist()
    index = {t: i for i, t in enumerate(tasks)}
    of: dict[int, int] = {}
    for g, members in enumerate(spec):
        for m in members:
            i = m if isinstance(m, int) and not isinstance(m, bool) else index.get(str(m))
            if i is None or not 0 <= i < len(tasks):
                raise ConfigError(f"model.sharing.groups: {m!r} is not a task of the run "
                                  f"({', '.join(tasks[:6])}{', ...' if len(tasks) > 6 else ''})")
            if i in of:
                raise ConfigError(f"model.sharing.groups: task {tasks[i]!r} is in two groups")
            of[i] = g
    missing = [tasks[i] for i in range(len(tasks)) if i not in of]
    if missing:
        raise ConfigError(f"model.sharing.groups: task {missing[0]!r} is in no group; every task needs one")
    return _renumber([of[i] for i in range(len(tasks))]).tolist()


def schedule_affinity(schedule, tasks: Sequence[str]) -> Optional[np.ndarray]:
    """The affinity matrix schedule.order_by affinity orders by (None when not asked for)."""
    if schedule.order_by != "affinity" or not schedule.affinity:
        return None
    names, Z, _ = read_affinity(affinity_file(schedule.affinity, "schedule.affinity"))
    if names != list(tasks):
        raise ConfigError(f"schedule.affinity: the matrix is over tasks {names[:4]}..., this run's are "
                          f"{list(tasks)[:4]}...; measure affinity on the same tasks")
    return Z
