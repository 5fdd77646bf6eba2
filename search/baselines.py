"""The baselines registry: every configuration is compared with the single-task towers
(k = 0, no coupling) trained on the same data, tasks, tower width, budget and seed.

A baseline is an MLflow run tagged ``role=baseline`` and ``baseline_fp=<fingerprint>``;
the fingerprint is what makes two runs comparable, so a sweep reuses a finished baseline
with the same fingerprint instead of training it again.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mlflow.tracking import MlflowClient

from training.config import RunConfig

ROLE_TAG = "role"
FP_TAG = "baseline_fp"


def baseline_config(cfg: RunConfig, seed: Optional[int] = None) -> RunConfig:
    """The single-task counterpart of ``cfg``: towers only, no coupling, random init, all
    tasks from the first step, equal weights; everything that sets the budget unchanged."""
    over = {
        "model.sharing.shared_layers": 0, "model.sharing.coupling": "none", "model.sharing.strength": 0.0,
        "init.kind": "random", "init.checkpoint": None, "init.layers": None, "init.task": None,
        "schedule.order": "joint", "schedule.order_by": "given", "schedule.order_list": None,
        "schedule.warm_start.task": None, "schedule.warm_start.epochs": 0,
        "schedule.warm_start.until_plateau": False, "schedule.weighting": "equal",
    }
    if seed is not None:
        over["train.seed"] = seed
    return cfg.with_overrides(over, source="baseline")


def baseline_fingerprint(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str]) -> str:
    """What must match for a comparison to be fair: data, task set, tower shape, budget, seed."""
    key = {
        "data": data_fingerprint, "tasks": list(tasks),
        "arch": cfg.model.arch.model_dump(mode="json"), "width": cfg.model.width,
        "epochs": cfg.train.epochs, "steps_per_epoch": cfg.train.steps_per_epoch,
        "batch_size": cfg.data.batch_size, "seed": cfg.train.seed, "use_tracks": cfg.data.use_tracks,
    }   # not the optimizer: learning rate and friends are search dimensions, the baseline has one
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Baseline:
    run_id: str
    fingerprint: str
    seed: int
    auroc: dict[str, float]          # task -> validation AUROC at the baseline's best epoch
    checkpoint: Optional[str]        # best.pt of the towers, for init from_single


def find_baseline(client: MlflowClient, experiment_id: str, fingerprint: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{ROLE_TAG} = 'baseline' and tags.{FP_TAG} = '{fingerprint}' "
                      "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def task_keys(client: MlflowClient, run_id: str) -> dict[str, str]:
    """task name -> metric key segment, from the run's task_names.json artifact."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "task_names.json", tmp)
        return json.loads(Path(path).read_text())["task_to_key"]


def per_task_metric(run, keys: dict[str, str], prefix: str = "best/val/auroc/") -> dict[str, float]:
    return {t: float(run.data.metrics.get(prefix + k, math.nan)) for t, k in keys.items()}


def load_baseline(client: MlflowClient, run) -> Baseline:
    keys = task_keys(client, run.info.run_id)
    ckpt = run.data.tags.get("checkpoint")
    return Baseline(run.info.run_id, run.data.tags.get(FP_TAG, ""), int(run.data.params.get("train.seed", 0)),
                    per_task_metric(run, keys), ckpt if ckpt and Path(ckpt).is_file() else None)
