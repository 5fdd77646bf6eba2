"""Per-task scores from an earlier run (for orderings by baseline AUROC).

Accepts a run directory or its per_task.csv (column val_auroc), or a JSON {task: auroc}.
An MLflow run (runs:/<id>) is resolved to such a file by the tracking layer before the run.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mtlsweep.config.errors import ConfigError


def load_task_scores(source: str, task_names: Sequence[str], column: str = "val_auroc") -> np.ndarray:
    path = Path(source)
    if path.is_dir():
        path = path / "per_task.csv"
    if not path.is_file():
        raise ConfigError(f"schedule.baseline_auroc={source}: no such file (expected a run's per_task.csv "
                          "or a JSON {task: auroc})")
    if path.suffix == ".json":
        try:
            scores = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError):
            raise ConfigError(f"{path}: expected a JSON object mapping task name to AUROC") from None
    else:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "task" not in rows[0] or column not in rows[0]:
            raise ConfigError(f"{path}: expected a CSV with columns task and {column}")
        scores = {r["task"]: float(r[column]) if r[column] not in ("", "nan") else float("nan") for r in rows}
    missing = [t for t in task_names if t not in scores]
    if missing:
        raise ConfigError(f"{path}: no score for task(s) {', '.join(missing[:5])}")
    return np.array([scores[t] for t in task_names], dtype=np.float64)
