"""The baselines registry: every configuration is compared with single-task towers (k = 0, no
coupling) trained on the same data, tasks, architecture, tower width, budget and seed, and
regularized and tuned as carefully as the families compared with them.

Three notions, kept apart:

- ``run_identity``: everything that changes a run's result (data fingerprint, tasks and the
  whole config but for where it is written, logged and on which device it runs). Two runs
  with the same identity are the same experiment; a baseline is reused only when its identity
  (``baseline_fp``) matches exactly, so one trained with another decay, dropout or learning
  rate is never reused by mistake.
- ``comparison_key``: what a run and its baseline must share to be compared: the identity of
  the run's single-task counterpart, leaving out the keys the baseline is tuned over (the
  optimizer and regularization dimensions a sweep searches, a grid's ``tune:`` keys).
- the **protocol**: ``tuned`` (the baseline gets its own search over those keys, with as many
  trials as each family, best on validation) or ``fixed`` (the base config's setting), tagged
  ``baseline_protocol`` on the baseline run and shown by `mtlsweep compare`.

A baseline is an MLflow run tagged ``role=baseline``; the runs a tuned search tried and did
not keep are ``role=baseline_candidate``. A sweep's trials carry ``baseline_run_id``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from mlflow.tracking import MlflowClient

from training.config import InitConfig, RunConfig, ScheduleConfig, SharingConfig

ROLE_TAG = "role"
FP_TAG = "baseline_fp"
KEY_TAG = "compare_key"
PROTOCOL_TAG = "baseline_protocol"
PROTOCOL_FP_TAG = "baseline_protocol_fp"
RUN_TAG = "baseline_run_id"
CANDIDATE = "baseline_candidate"

# The dimensions a baseline is tuned over: optimizer and regularization, nothing about sharing.
REGULARIZATION_KEYS = ("optim.", "model.arch.dropout", "data.batch_size")
# Keys that do not change what a run computes: where it is written and logged, on what it runs.
NOT_IDENTITY = ("tracking.", "train.out_dir", "train.device", "train.num_threads", "train.compile",
                "train.eval_batch_size", "train.grad_flow_", "data.path", "data.tasks", "model.backend",
                "gbm.n_jobs", "gbm.cache_dir")


def is_regularization(key: str) -> bool:
    return key.startswith(REGULARIZATION_KEYS)


def baseline_config(cfg: RunConfig, seed: Optional[int] = None) -> RunConfig:
    """The single-task counterpart of ``cfg``: towers only (with cfg's tower start), no coupling,
    random init, all tasks from the first step, equal weights; data, architecture, width,
    budget, optimizer and regularization unchanged."""
    sharing = SharingConfig(shared_layers=0, tower_init=cfg.model.sharing.tower_init)
    model = cfg.model.model_copy(update={"family": "cnn", "sharing": sharing})
    out = cfg.model_copy(update={"model": model, "init": InitConfig(), "schedule": ScheduleConfig()})
    if seed is not None:
        out = out.with_overrides({"train.seed": seed}, source="baseline")
    return RunConfig.model_validate(out.model_dump())


def run_identity(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str],
                 leave_out: Iterable[str] = ()) -> dict:
    leave_out = tuple(leave_out)
    flat = {k: v for k, v in cfg.flatten().items()
            if not k.startswith(NOT_IDENTITY) and k not in leave_out}
    if cfg.model.family == "cnn":
        flat = {k: v for k, v in flat.items() if not k.startswith("gbm.")}
    return {"data": data_fingerprint, "tasks": list(tasks), "config": flat}


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def baseline_fingerprint(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str]) -> str:
    """The identity of ``cfg``'s single-task counterpart, as it would be trained."""
    return _digest(run_identity(baseline_config(cfg), data_fingerprint, tasks))


def comparison_key(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str],
                   tuned_keys: Iterable[str] = ()) -> str:
    """What ``cfg`` and its baseline share: the counterpart's identity without the tuned keys."""
    return _digest(run_identity(baseline_config(cfg), data_fingerprint, tasks, leave_out=tuned_keys))


@dataclass
class Protocol:
    """How the baselines of a sweep are set: tuned over ``keys`` (``spec`` says how, with
    ``trials`` trials) or fixed at the base config's values."""
    kind: str                       # "tuned" or "fixed"
    keys: tuple[str, ...] = ()
    trials: int = 1
    spec: str = ""                  # the search: a space's dimensions or a grid's values, as text

    @property
    def fingerprint(self) -> str:
        return _digest({"kind": self.kind, "keys": list(self.keys), "trials": self.trials, "spec": self.spec})

    def describe(self) -> str:
        if self.kind == "fixed" or not self.keys:
            why = "" if self.kind == "fixed" else " (the space searches no optimizer or regularization key)"
            return f"fixed: the base config's optimizer and regularization{why}"
        return (f"tuned: {self.trials} trial(s) over {', '.join(self.keys)}, as each family; "
                "the best on validation AUROC")


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
        filter_string=f"tags.{ROLE_TAG} = 'baseline' and tags.{KEY_TAG} = '{key}' "
                      f"and tags.{PROTOCOL_FP_TAG} = '{protocol_fp}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def find_identical(client: MlflowClient, experiment_id: str, fingerprint: str, roles: Sequence[str] = ("baseline",)):
    """A finished baseline (or candidate) run whose identity is exactly ``fingerprint``."""
    for role in roles:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{ROLE_TAG} = '{role}' and tags.{FP_TAG} = '{fingerprint}' "
                          "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0]
    return None


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
                    per_task_metric(run, keys), ckpt if ckpt and Path(ckpt).is_file() else None,
                    run.data.tags.get(KEY_TAG, ""), run.data.tags.get(PROTOCOL_TAG, ""))


def is_completed(run) -> bool:
    """Trained to its own end (early stopping or the last epoch): not pruned, not orphaned."""
    tags = run.data.tags
    return run.info.status == "FINISHED" and "stopped_early" not in tags and "orphaned" not in tags


def best_on_validation(runs: Sequence, metric: str = "best/val/auroc_mean"):
    """The completed run with the highest validation score (None if none completed)."""
    done = [r for r in runs if is_completed(r) and math.isfinite(r.data.metrics.get(metric, math.nan))]
    return max(done, key=lambda r: r.data.metrics[metric]) if done else None


def run_config(params: dict[str, str]) -> Optional[RunConfig]:
    """A run's config back from its logged params (None when they do not make one)."""
    import yaml

    from training.config import flatten
    known = set(flatten(RunConfig().model_dump(mode="json"))) - {"model.family"}
    flat = {}
    for k, v in params.items():
        if k in known:
            try:
                flat[k] = yaml.safe_load(v)
            except yaml.YAMLError:
                flat[k] = v
    # model.family is logged refined (single/hard/soft/...): the config's own is cnn or motif_gbm.
    if params.get("model.family") == "motif_gbm":
        flat["model.family"] = "motif_gbm"
    try:
        return RunConfig.from_flat(flat)
    except ValueError:
        return None
