"""Which of a store's signal tracks a run feeds to its model, and to which tasks.

``data.tracks`` lists the tracks every task sees (null: all the store's tracks that
``data.task_tracks`` does not take); ``data.task_tracks`` gives each task its own track
(``by_name``: the track named like the task, or a list of ``TASK=TRACK``), which only that
task's tower sees. The model input is then [one-hot, shared tracks, one track per task].
"""
from __future__ import annotations

from typing import Sequence

from mtlsweep.config.errors import ConfigError


def _unknown(key: str, name: str, store_path: str, tracks: Sequence[str]) -> ConfigError:
    have = ", ".join(tracks) if tracks else "none"
    return ConfigError(f"{key}: track {name!r} is not in {store_path} (its tracks: {have})")


def select_tracks(data_cfg, track_names: Sequence[str], task_names: Sequence[str],
                  store_path: str) -> tuple[list[int], list[int]]:
    """(shared track indices, per-task track indices in task order, or [])."""
    if not data_cfg.use_tracks:
        if data_cfg.task_tracks:
            raise ConfigError("data.task_tracks needs data.use_tracks true")
        return [], []
    index = {n: i for i, n in enumerate(track_names)}
    per_task: list[int] = []
    spec = data_cfg.task_tracks
    if spec == "by_name":
        missing = [t for t in task_names if t not in index]
        if missing:
            raise ConfigError(f"data.task_tracks by_name: task {missing[0]!r} has no track of that name in "
                              f"{store_path} (its tracks: {', '.join(track_names) or 'none'})")
        per_task = [index[t] for t in task_names]
    elif spec:
        pairs = {}
        for item in spec:
            task, sep, track = str(item).partition("=")
            if not sep or not task or not track:
                raise ConfigError(f"data.task_tracks: {item!r}; allowed: TASK=TRACK entries, or by_name")
            if track not in index:
                raise _unknown("data.task_tracks", track, store_path, track_names)
            pairs[task] = index[track]
        missing = [t for t in task_names if t not in pairs]
        if missing:
            raise ConfigError(f"data.task_tracks: task {missing[0]!r} has no entry; per-task tracks need one "
                              f"TASK=TRACK for every task of the run")
        per_task = [pairs[t] for t in task_names]
    if data_cfg.tracks is None:
        taken = set(per_task)
        shared = [i for i in range(len(track_names)) if i not in taken]
    else:
        shared = []
        for name in data_cfg.tracks:
            if name not in index:
                raise _unknown("data.tracks", name, store_path, track_names)
            shared.append(index[name])
    return shared, per_task


def input_columns(shared: Sequence[int], per_task: Sequence[int]) -> list[int]:
    """Channels of [one-hot, every store track] (what data.store.to_device gives) that a run's
    model reads, in its order: the 4 bases, the shared tracks, then one track per task."""
    return [0, 1, 2, 3] + [4 + i for i in list(shared) + list(per_task)]
