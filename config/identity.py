"""A run's identity and its single-task baseline: what makes two runs comparable.

- ``model_family``: single, hard, soft, branched, control or motif_gbm, from the config.
- ``run_identity``: everything that changes a run's result (data fingerprint, tasks and the
  whole config but for where it is written, logged and on which device it runs). Two runs with
  the same identity are the same experiment; a baseline is reused only when its identity
  (``baseline_fp``) matches exactly, so one trained with another decay, dropout or learning
  rate is never reused by mistake.
- ``comparison_key``: what a run and its baseline must share to be compared: the identity of the
  run's single-task counterpart, leaving out the keys the baseline is tuned over (the optimizer
  and regularization dimensions a sweep searches, a grid's ``tune:`` keys).
- ``Protocol``: ``tuned`` (the baseline gets its own search over those keys, with as many trials
  as each family, best on validation) or ``fixed`` (the base config's setting).
- the MLflow tag names that carry them (the tracking layer writes and reads them).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from mtlsweep.config.run import InitConfig, RunConfig, ScheduleConfig, SharingConfig, flatten

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
                "train.eval_batch_size", "train.grad_flow_", "train.affinity_", "data.path", "data.tasks",
                "model.backend", "gbm.n_jobs", "gbm.cache_dir")


def is_regularization(key: str) -> bool:
    return key.startswith(REGULARIZATION_KEYS)


def baseline_config(cfg: RunConfig, seed: Optional[int] = None) -> RunConfig:
    """The single-task counterpart of ``cfg``: towers only (with cfg's tower start), no coupling,
    random init, all tasks from the first step, equal weights; data, architecture, width,
    budget, optimizer and regularization unchanged."""
    sharing = SharingConfig(shared_layers=0, tower_init=cfg.model.sharing.tower_init)
    model = cfg.model.model_copy(update={"family": "cnn", "sharing": sharing})
    train = cfg.train.model_copy(update={"affinity_every": 0})   # a measurement that needs shared layers
    out = cfg.model_copy(update={"model": model, "init": InitConfig(), "schedule": ScheduleConfig(), "train": train})
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


CONFIG_FP_TAG = "config_fp"


def config_fingerprint(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str]) -> str:
    """The identity of ``cfg`` itself: two runs with it compute the same result."""
    return _digest(run_identity(cfg, data_fingerprint, tasks))


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



def model_family(cfg: RunConfig) -> str:
    """single (k = 0, no coupling), hard (k = L), soft (towers coupled), branched (0 < k < L),
    control (towers with the zero-pull control of l2: shrinkage without sharing), grouped
    (layers shared within task groups, sharing.group_layers)."""
    if cfg.model.family == "motif_gbm":
        return "motif_gbm"
    s = cfg.model.sharing
    if s.group_layers:
        return "grouped"
    n_layers = len(cfg.model.arch.conv_channels) + len(cfg.model.arch.dense)
    if s.shared_layers == n_layers:
        return "hard"
    if s.coupling == "l2_zero" and s.strength > 0:
        return "control"
    if s.coupling == "cross_stitch" or (s.coupling in ("l2", "trace_norm") and s.strength > 0):
        return "soft"
    return "single" if s.shared_layers == 0 else "branched"


def run_config(params: dict[str, str]) -> Optional[RunConfig]:
    """A run's config back from its logged params (None when they do not make one)."""
    import yaml

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
