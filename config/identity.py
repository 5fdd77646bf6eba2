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
- (the MLflow tags that carry them are named in config/tags.py).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import yaml

from mtlsweep.config.registry import COUPLINGS, FAMILIES
from mtlsweep.config.run import PRESET_KEYS, InitConfig, RunConfig, ScheduleConfig, SharingConfig, flatten

# The dimensions a baseline is tuned over: optimizer and regularization, nothing about sharing.
REGULARIZATION_KEYS = ("optim.", "model.arch.dropout", "data.batch_size")
# What every arm and its baseline may be tuned over alike: those, and the trunk's architecture (a
# preset, its lists). A design's variant that sets its own architecture is another arm, compared
# with the towers of that architecture; one that sets its own optimizer keeps the base's towers.
TUNED_ALIKE_KEYS = REGULARIZATION_KEYS + ("model.arch.",)
# Keys that do not change what a run computes: where it is written and logged, on what it runs.
NOT_IDENTITY = ("tracking.", "train.out_dir", "train.device", "train.num_threads", "train.compile",
                "train.eval_batch_size", "train.grad_flow_", "train.affinity_", "data.path", "data.tasks",
                "model.backend", "gbm.n_jobs", "gbm.cache_dir", "kmer.n_jobs")
# The reference families (no CNN, nothing shared) and the config section each one reads.
FAMILY_SECTIONS = {e.name: e.section for e in FAMILIES if e.kind == "reference"}
REFERENCE_FAMILIES = tuple(FAMILY_SECTIONS)
# What `compare` groups runs by: the trunk's sharing, then each coupling's label, then the references.
FAMILY_LABELS = tuple(dict.fromkeys(["single", "hard", "branched", "grouped",
                                     *(e.label for e in COUPLINGS if e.label),
                                     *(e.label for e in FAMILIES if e.label)]))


def is_regularization(key: str) -> bool:
    return key.startswith(REGULARIZATION_KEYS)


def is_tuned_alike(key: str) -> bool:
    return key.startswith(TUNED_ALIKE_KEYS)


def baseline_config(cfg: RunConfig, seed: Optional[int] = None) -> RunConfig:
    """The single-task counterpart of ``cfg``: towers only (with cfg's tower start), no coupling,
    random init, all tasks from the first step, equal weights; data, architecture, width,
    budget, optimizer and regularization unchanged."""
    sharing = SharingConfig(shared_layers=0, tower_init=cfg.model.sharing.tower_init)
    # Nothing shared: the shared layers' width and its capacity match do not apply to the towers.
    model = cfg.model.model_copy(update={"family": "cnn", "sharing": sharing, "capacity": "as_set",
                                         "shared_width": 1.0})
    train = cfg.train.model_copy(update={"affinity_every": 0})   # a measurement that needs shared layers
    out = cfg.model_copy(update={"model": model, "init": InitConfig(), "schedule": ScheduleConfig(), "train": train})
    if seed is not None:
        out = out.with_overrides({"train.seed": seed}, source="baseline")
    return RunConfig.model_validate(out.model_dump())


# The parameters each learning-rate schedule reads; the others change nothing it computes. A
# constant rate, every run's before optim.lr_schedule existed, names none, so their identities hold.
LR_SCHEDULE_KEYS = {"constant": (), "cosine": ("optim.lr_min_ratio",),
                    "plateau": ("optim.lr_patience", "optim.lr_factor", "optim.lr_min_ratio")}


def inactive_keys(flat: dict) -> set[str]:
    """Keys of a flattened config that do not change what the run computes, given its other keys."""
    schedule = flat.get("optim.lr_schedule", "constant")
    out = {k for keys in LR_SCHEDULE_KEYS.values() for k in keys} - set(LR_SCHEDULE_KEYS.get(schedule, ()))
    if schedule == "constant":
        out.add("optim.lr_schedule")
    return out


def run_identity(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str],
                 leave_out: Iterable[str] = ()) -> dict:
    leave_out = tuple(leave_out)
    flat = {k: v for k, v in cfg.flatten().items()
            if not k.startswith(NOT_IDENTITY) and k not in leave_out}
    inactive = inactive_keys(flat)
    flat = {k: v for k, v in flat.items() if k not in inactive}
    # A family's own section is part of its identity, the other families' sections are not.
    flat = {k: v for k, v in flat.items()
            if not any(k.startswith(f"{section}.") and cfg.model.family != family
                       for family, section in FAMILY_SECTIONS.items())}
    return {"data": data_fingerprint, "tasks": list(tasks), "config": flat}


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_fingerprint(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str]) -> str:
    """The identity of ``cfg`` itself: two runs with it compute the same result."""
    return _digest(run_identity(cfg, data_fingerprint, tasks))


def baseline_fingerprint(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str]) -> str:
    """The identity of ``cfg``'s single-task counterpart, as it would be trained."""
    return _digest(run_identity(baseline_config(cfg), data_fingerprint, tasks))


def comparison_key(cfg: RunConfig, data_fingerprint: str, tasks: Sequence[str],
                   tuned_keys: Iterable[str] = ()) -> str:
    """What ``cfg`` and its baseline share: the counterpart's identity without the tuned keys
    (a tuned preset takes the trunk lists it sets with it)."""
    tuned = tuple(tuned_keys)
    if "model.arch.preset" in tuned:
        tuned += tuple(f"model.arch.{k}" for k in PRESET_KEYS)
    return _digest(run_identity(baseline_config(cfg), data_fingerprint, tasks, leave_out=tuned))


@dataclass
class Protocol:
    """How the baselines of a sweep are set: tuned over ``keys`` (``spec`` says how, with
    ``trials`` trials) or fixed at the base config's values."""
    kind: str                       # "tuned" or "fixed"
    keys: tuple[str, ...] = ()
    trials: int = 1
    spec: str = ""                  # the search: a space's dimensions or a grid's values, as text
    own: tuple[str, ...] = ()       # optimizer/regularization keys a design's variants set for themselves

    @property
    def free(self) -> tuple[str, ...]:
        """The keys a run may differ in from the baseline it is compared with (comparison_key)."""
        return tuple(dict.fromkeys(self.keys + self.own))

    @property
    def fingerprint(self) -> str:
        return _digest({"kind": self.kind, "keys": list(self.keys), "trials": self.trials, "spec": self.spec,
                        **({"own": list(self.own)} if self.own else {})})

    def describe(self) -> str:
        own = f"; the variants set their own {', '.join(self.own)}" if self.own else ""
        if self.kind == "fixed" or not self.keys:
            why = "" if self.kind == "fixed" else " (the space searches no optimizer or regularization key)"
            return f"fixed: the base config's optimizer and regularization{why}{own}"
        return (f"tuned: {self.trials} trial(s) over {', '.join(self.keys)}, as each family; "
                f"the best on validation AUROC{own}")


def model_family(cfg: RunConfig) -> str:
    """single (k = 0, no coupling), hard (k = L), branched (0 < k < L), grouped (layers shared
    within task groups, sharing.group_layers), else the coupling's label (soft: towers coupled;
    control: the zero-pull control of l2, shrinkage without sharing), or a reference family's."""
    if cfg.model.family in REFERENCE_FAMILIES:
        return FAMILIES[cfg.model.family].label
    s = cfg.model.sharing
    if cfg.model.n_group:
        return "grouped"
    if cfg.model.n_shared == cfg.model.n_layers:
        return "hard"
    coupling = COUPLINGS[s.coupling]
    if coupling.kind == "mixing" or (coupling.kind == "penalty" and s.strength > 0):
        return coupling.label
    return "single" if cfg.model.n_shared == 0 else "branched"


def run_config(params: dict[str, str]) -> Optional[RunConfig]:
    """A run's config back from its logged params (None when they do not make one)."""

    known = set(flatten(RunConfig().model_dump(mode="json"))) - {"model.family"}
    flat = {}
    for k, v in params.items():
        if k in known:
            try:
                flat[k] = yaml.safe_load(v)
            except yaml.YAMLError:
                flat[k] = v
    # model.family is logged refined (single/hard/soft/...): the config's own is cnn or a reference's.
    if params.get("model.family") in REFERENCE_FAMILIES:
        flat["model.family"] = params["model.family"]
    try:
        return RunConfig.from_flat(flat)
    except ValueError:
        return None
