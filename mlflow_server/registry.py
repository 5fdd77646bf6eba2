"""The baselines registry in MLflow: finding a sweep's single-task baselines again and reading them.

A baseline is an MLflow run tagged ``role=baseline`` (with the tags of mtlsweep.config.identity);
the runs a tuned search tried and did not keep are ``role=baseline_candidate``. A sweep's
trials carry ``baseline_run_id``.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mlflow.tracking import MlflowClient

from mtlsweep.config import tags as tag


@dataclass
class Baseline:
    run_id: str
    fingerprint: str
    seed: int
    auroc: dict[str, float]          # task -> validation AUROC at the baseline's best epoch
    checkpoint: Optional[str]        # best.pt of the towers, for init from_single
    key: str = ""                    # comparison key
    protocol: str = ""


def find_baseline(client: MlflowClient, experiment_id: str, key: str, protocol_fp: str):
    """A finished baseline with this comparison key, set by this protocol."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{tag.ROLE} = 'baseline' and tags.{tag.COMPARE_KEY} = '{key}' "
                      f"and tags.{tag.PROTOCOL_FP} = '{protocol_fp}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def find_identical(client: MlflowClient, experiment_id: str, fingerprint: str, roles: Sequence[str] = ("baseline",)):
    """A finished baseline (or candidate) run whose identity is exactly ``fingerprint``."""
    for role in roles:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{tag.ROLE} = '{role}' and tags.{tag.BASELINE_FP} = '{fingerprint}' "
                          "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0]
    return None


def task_keys(client: MlflowClient, run_id: str) -> dict[str, str]:
    """task name -> metric key segment, from the run's task_names.json artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "task_names.json", tmp)
        return json.loads(Path(path).read_text())["task_to_key"]


def per_task_metric(run, keys: dict[str, str], prefix: str = "best/val/auroc/") -> dict[str, float]:
    return {t: float(run.data.metrics.get(prefix + k, math.nan)) for t, k in keys.items()}


def load_baseline(client: MlflowClient, run) -> Baseline:
    keys = task_keys(client, run.info.run_id)
    ckpt = run.data.tags.get(tag.CHECKPOINT)
    return Baseline(run.info.run_id, run.data.tags.get(tag.BASELINE_FP, ""), int(run.data.params.get("train.seed", 0)),
                    per_task_metric(run, keys), ckpt if ckpt and Path(ckpt).is_file() else None,
                    run.data.tags.get(tag.COMPARE_KEY, ""), run.data.tags.get(tag.PROTOCOL, ""))


def is_completed(run) -> bool:
    """Trained to its own end (early stopping or the last epoch): not pruned, not orphaned."""
    tags = run.data.tags
    return run.info.status == "FINISHED" and "stopped_early" not in tags and "orphaned" not in tags


def best_on_validation(runs: Sequence, metric: str = "best/val/auroc_mean"):
    """The completed run with the highest validation score (None if none completed)."""
    done = [r for r in runs if is_completed(r) and math.isfinite(r.data.metrics.get(metric, math.nan))]
    return max(done, key=lambda r: r.data.metrics[metric]) if done else None
