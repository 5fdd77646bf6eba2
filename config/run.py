"""The run config: one pydantic model of every section, loaded from YAML, flattened to dotted keys.

The dotted keys (``model.sharing.strength``) are at once the MLflow params and the Ray Tune
search keys, so ``flatten``/``unflatten`` must round-trip exactly.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtlsweep.config.errors import ConfigError, describe_all
from mtlsweep.config.registry import REGISTRIES
from mtlsweep.config.yaml_file import load_yaml


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*")
    @classmethod
    def _registered(cls, v, info):
        # A field backed by a registry (config/registry.py) takes its registered names only.
        extra = cls.model_fields[info.field_name].json_schema_extra
        if isinstance(extra, dict) and "registry" in extra:
            return REGISTRIES[extra["registry"]].check(v)
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v, info):
        # YAML's true/false must not pass for 1/0 in a numeric field (pydantic's lax mode allows it).
        if isinstance(v, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got {str(v).lower()}")
        return v


def _numeric(annotation) -> bool:
    """Is an int or a float among what the annotation admits (Optional, Union, Annotated unwrapped)?"""
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in get_args(annotation) if a is not type(None))


class DataConfig(_Section):
    path: str = Field("workspace/synth/store.h5", description="Compact store (.h5) or Basset HDF5 file.")
    tasks: Optional[list[Union[str, int]]] = Field(
        None, description="Task subset by name or index; null = all tasks.")
    batch_size: int = Field(128, ge=2, le=65536, description="Sequences per batch (BatchNorm needs at least 2).")
    use_tracks: bool = Field(True, description="Concatenate the store's extra tracks as input channels.")
    tracks: Optional[list[str]] = Field(
        None, description="Tracks every task sees; null = all the store's tracks that task_tracks does not take.")
    task_tracks: Union[None, Literal["by_name"], list[str]] = Field(
        None, description="Per-task tracks, seen by that task's tower only: by_name (the track named like "
                          "the task) or TASK=TRACK entries. Needs model.sharing.shared_layers 0.")
    negative_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="Per epoch, train on this fraction of the rows with no positive label "
                                         "(redrawn each epoch; every row with a positive is kept). Metrics always "
                                         "use the full splits.")


# Named trunks, usable as a search dimension (model.arch.preset). Pool 0 is a global max-pool
# over whatever length the convolution leaves, so a preset fits any sequence length it can read.
ARCH_PRESETS: dict[str, dict[str, list[int]]] = {
    # Basset itself (Kelley et al. 2016): 600 bp -> 10 positions after three conv blocks.
    "basset": {"conv_channels": [300, 200, 200], "conv_widths": [19, 11, 7], "pool": [3, 4, 4], "dense": [1000, 1000]},
    # The earlier studies' trunk: Basset's shape at a fifth of its width.
    "deep": {"conv_channels": [64, 32, 32], "conv_widths": [15, 7, 5], "pool": [3, 4, 4], "dense": [64, 64]},
    # One layer of motif detectors, the best match anywhere in the sequence, a small read-out.
    "motif": {"conv_channels": [64], "conv_widths": [15], "pool": [0], "dense": [32]},
}
PRESET_KEYS = ("conv_channels", "conv_widths", "pool", "dense")


class ArchConfig(_Section):
    preset: Optional[Literal["basset", "deep", "motif"]] = Field(
        None, description="Named trunk: basset (Basset's 3 conv + 2 dense), deep (the same shape, ~1/5 the width), "
                          "motif (one conv layer of 64 width-15 filters, global max-pool, dense 32). It sets "
                          "conv_channels, conv_widths, pool and dense; null = those lists as given.")
    conv_channels: list[int] = Field([300, 200, 200], min_length=1, description="Filters per conv layer.")
    conv_widths: list[int] = Field([19, 11, 7], min_length=1, description="Kernel width per conv layer.")
    pool: list[int] = Field([3, 4, 4], min_length=1, description="Max-pool width per conv layer (ceil mode); "
                                                               "0 = global (over the whole remaining length).")
    dense: list[int] = Field([1000, 1000], description="Units per dense layer.")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout after each dense layer.")

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data):
        if not isinstance(data, dict) or data.get("preset") not in ARCH_PRESETS:
            return data
        name, data = data["preset"], dict(data)
        for key, value in ARCH_PRESETS[name].items():
            if key not in data:
                data[key] = list(value)
            elif list(data[key]) != value:
                raise ValueError(f"{key}={list(data[key])} differs from preset {name}'s {value}; "
                                 f"leave {key} out, or set preset null to give your own lists")
        return data

    @model_validator(mode="after")
    def _same_lengths(self):
        n = len(self.conv_channels)
        if len(self.conv_widths) != n or len(self.pool) != n:
            raise ValueError(
                f"conv_channels, conv_widths and pool must have the same length "
                f"(got {n}, {len(self.conv_widths)}, {len(self.pool)})")
        for name in ("conv_channels", "conv_widths", "dense"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} entries must be >= 1")
        if any(v < 0 for v in self.pool):
            raise ValueError("pool entries must be >= 1, or 0 for a global max-pool")
        return self

    @property
    def n_layers(self) -> int:
        return len(self.conv_channels) + len(self.dense)


class SharingConfig(_Section):
    shared_layers: Union[Annotated[int, Field(ge=0)], Literal["all", "convs"]] = Field(
        "all", description="First k trunk layers shared by all tasks; the rest are per-task towers. all: every layer "
                       "(the hard model), convs: the conv layers, whatever the trunk's depth.")
    coupling: str = Field(
        "none", description="Soft coupling between towers (l2, trace_norm, cross_stitch); l2_zero is the "
                            "no-sharing control of l2: the same pull, toward zero instead of the towers' mean.",
        json_schema_extra={"registry": "model.sharing.coupling"})
    strength: float = Field(0.0, ge=0.0, description="Coupling strength lambda (l2, trace_norm, l2_zero).")
    tower_init: Literal["common", "independent"] = Field(
        "common", description="common: every tower starts from one draw, so a coupling pulls towers together, "
                              "never toward zero; independent: one draw per task.")
    cross_stitch_self: float = Field(0.9, ge=0.0, le=1.0, description="Initial self weight of cross-stitch units.")
    cross_stitch_lr: Optional[float] = Field(None, gt=0.0, description="Learning rate of cross-stitch units (null = optim.lr).")
    groups: Union[None, str, list[list[Union[str, int]]]] = Field(
        None, description="Task groups for group_layers: lists of task names or indices, truth (the synthetic "
                          "benchmark's truth.json beside data.path) auto:K (K clusters of the affinity matrix "
                          "in sharing.affinity, average linkage) or tag:K (TAG's selection: the partition into at "
                          "most K groups with the most affinity onto each task from its group).")
    group_layers: Union[Annotated[int, Field(ge=0)], Literal["all"]] = Field(
        0, description="After the k shared layers, this many layers shared within each group (full width); the "
                       "rest are per-task towers. all: every layer after the shared ones (a hard model per group).")
    affinity: Optional[str] = Field(None, description="groups auto:K or tag:K: a run directory trained with "
                                                      "train.affinity_every, or its affinity.json.")

    @field_validator("groups")
    @classmethod
    def _groups_spec(cls, v):
        if isinstance(v, str) and not (v == "truth" or re.fullmatch(r"(auto|tag):[1-9][0-9]*", v)):
            raise ValueError(f"{v!r}; allowed: truth, auto:K or tag:K (K >= 1) or lists of task names/indices")
        if isinstance(v, list) and (not v or any(not g for g in v)):
            raise ValueError("needs at least one group and no empty group")
        return v


class ModelConfig(_Section):
    family: str = Field(
        "cnn", description="cnn: the sharing continuum; motif_gbm: JASPAR motif scores + gradient-boosted trees "
                           "(gbm:); kmer_linear: k-mer counts of both strands + logistic regression (kmer:).",
        json_schema_extra={"registry": "model.family"})
    arch: ArchConfig = Field(default_factory=ArchConfig)
    sharing: SharingConfig = Field(default_factory=SharingConfig)
    width: float = Field(1.0, gt=0.0, le=4.0, description="Scale of tower layer widths (shared layers keep arch widths).")
    shared_width: float = Field(1.0, gt=0.0, le=16.0, description="Scale of shared and group layer widths.")
    capacity: Literal["as_set", "match_towers"] = Field(
        "as_set", description="match_towers: scale the shared and group layers (instead of shared_width) so that "
                              "the model has as many parameters as the single-task towers of the same config: the "
                              "capacity-matched control of a shared trunk.")
    backend: Literal["auto", "loop", "batched"] = Field("auto", description="How towers are computed.")

    @property
    def n_layers(self) -> int:
        return self.arch.n_layers

    @property
    def n_shared(self) -> int:
        """sharing.shared_layers as a layer count (all and convs resolved against the trunk)."""
        k = self.sharing.shared_layers
        return {"all": self.n_layers, "convs": len(self.arch.conv_channels)}.get(k, k) if isinstance(k, str) else k

    @property
    def n_group(self) -> int:
        """sharing.group_layers as a layer count (all: every layer after the shared ones)."""
        m = self.sharing.group_layers
        return self.n_layers - self.n_shared if m == "all" else m

    @model_validator(mode="after")
    def _k_in_range(self):
        n_layers, k = self.n_layers, self.n_shared
        if k > n_layers:
            raise ValueError(
                f"sharing.shared_layers must be between 0 and {n_layers} (the trunk's layer count), all or convs, "
                f"got {self.sharing.shared_layers}")
        sh = self.sharing
        if self.n_group:
            if k + self.n_group > n_layers:
                raise ValueError(f"sharing.shared_layers + sharing.group_layers must be at most {n_layers} (the "
                                 f"trunk's layer count), got {k} + {self.n_group}")
            if sh.groups is None:
                raise ValueError("sharing.group_layers needs sharing.groups (lists of tasks, truth or auto:K)")
            if sh.coupling != "none":
                raise ValueError(f"sharing.coupling={sh.coupling} couples towers; with group_layers use coupling none")
        if isinstance(sh.groups, str) and sh.groups.startswith(("auto:", "tag:")) and not sh.affinity:
            raise ValueError(f"sharing.groups {sh.groups.split(':')[0]}:K needs sharing.affinity (a run trained with "
                             "train.affinity_every)")
        return self


class InitConfig(_Section):
    kind: Literal["random", "checkpoint", "from_hard", "from_single", "motifs"] = Field(
        "random", description="How parameters start.")
    checkpoint: Optional[str] = Field(None, description="Checkpoint file for checkpoint/from_hard/from_single.")
    layers: Optional[list[str]] = Field(None, description="Layers to copy from the checkpoint (null = all that fit).")
    task: Optional[Union[str, int]] = Field(None, description="from_single: the warm-start task whose tower seeds the trunk.")
    motif_collection: str = Field("CORE", description="motifs: JASPAR collection.")
    motif_tax_group: str = Field("vertebrates", description="motifs: JASPAR tax group.")

    @model_validator(mode="after")
    def _needs_checkpoint(self):
        if self.kind in ("checkpoint", "from_hard", "from_single") and not self.checkpoint:
            raise ValueError(f"checkpoint is required when kind is {self.kind}")
        if self.kind == "from_single" and self.task is None:
            raise ValueError("task is required when kind is from_single")
        return self


class WarmStartConfig(_Section):
    task: Optional[Union[str, int]] = Field(None, description="Task trained alone first (null = no warm start).")
    epochs: int = Field(0, ge=0, description="Epochs of warm start.")
    until_plateau: bool = Field(False, description="End the warm start when the task's validation AUROC stops improving.")


class ScheduleConfig(_Section):
    order: str = Field(
        "joint", description="Which tasks count at each step (group_blocks: one task group per block of an epoch; "
                             "group_round_robin: one group per step; groups from model.sharing.groups).",
        json_schema_extra={"registry": "schedule.order"})
    order_by: Literal["given", "prevalence", "baseline_auroc", "shuffle", "affinity"] = Field(
        "given", description="How tasks are ordered for task_per_epoch/round_robin/curriculum/group orders "
                             "(affinity: the tasks whose steps help the others most first).")
    affinity: Optional[str] = Field(None, description="order_by affinity: a run directory trained with "
                                                      "train.affinity_every, or its affinity.json.")
    order_list: Optional[list[Union[str, int]]] = Field(None, description="Explicit order for order_by=given.")
    order_descending: bool = Field(True, description="prevalence/baseline_auroc: highest first.")
    baseline_auroc: Optional[str] = Field(
        None, description="Per-task AUROC: a run's per_task.csv, a JSON {task: auroc}, or runs:/<mlflow run id>.")
    curriculum_epochs: Optional[list[int]] = Field(None, description="Epoch each task enters (null = evenly spread).")
    anneal_floor: float = Field(0.0, ge=0.0, le=1.0, description="annealed: final alpha.")
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)
    weighting: str = Field(
        "equal", description="Task weighting: how the scheduled tasks' losses become gradients (each arm: "
                             "docs/concepts/weightings.md).",
        json_schema_extra={"registry": "schedule.weighting"})
    gradnorm_alpha: float = Field(1.5, ge=0.0, description="GradNorm restoring force.")
    per_task_grad_chunk: int = Field(32, ge=1, description="GradNorm, PCGrad and the Jacobian arms: tasks per "
                                                                  "vectorized backward pass (CUDA).")
    famo_lr: float = Field(0.025, gt=0.0, description="FAMO: learning rate of the task logits (Adam).")
    famo_gamma: float = Field(0.01, ge=0.0, description="FAMO: L2 regularization of the task logits.")
    task_weights: Union[None, list[float], dict[str, float]] = Field(
        None, description="fixed: a loss weight per task, as a list (one per task, in the run's task order) or a "
                          "mapping task name -> weight (the others 1.0); null = all 1.0. Read when the weighting "
                          "is built, so a resumed run takes the config's weights.")
    aggregate_scale: Literal["tasks", "native"] = Field(
        "tasks", description="random and the Jacobian arms whose weights sum to one (upgrad, dualproj, mgda, imtl_g, "
                             "aligned_mtl, cagrad): tasks multiplies them by the number of counted tasks, the scale "
                             "of equal weighting's sum; native keeps the method's mean scale.")
    cagrad_c: float = Field(0.4, ge=0.0, description="CAGrad: radius of the ball around the mean gradient, "
                                                     "relative to its norm (0 = the mean gradient).")
    nash_max_norm: float = Field(1.0, ge=0.0, description="Nash-MTL: the shared step's norm is clipped to this "
                                                          "(0 = no clipping).")
    nash_update_every: int = Field(1, ge=1, description="Nash-MTL: solve for the task weights every N steps and "
                                                        "reuse them in between (one backward pass instead of T).")
    nash_optim_niter: int = Field(20, ge=1, description="Nash-MTL: sequential convex steps per solve.")
    fairgrad_alpha: float = Field(1.0, ge=0.0, description="FairGrad: alpha of the alpha-fair utility (0: the "
                                                           "mean gradient; 1: proportional fairness).")
    aligned_mtl_scale: Literal["min", "median", "rmse"] = Field(
        "min", description="Aligned-MTL: the singular value the aligned gradients are scaled to (rmse: the "
                           "original code's).")

    @field_validator("task_weights", mode="before")
    @classmethod
    def _task_weights(cls, v):
        if v is None:
            return v
        if isinstance(v, dict):
            items = list(v.items())
            bad_key = next((k for k, _ in items if not isinstance(k, str)), None)
            if bad_key is not None:
                raise ValueError(f"mapping keys must be task names, got {bad_key!r} (give weights by position as a "
                                 "list)")
        elif isinstance(v, (list, tuple)):
            items = list(enumerate(v))
        else:
            raise ValueError(f"expected a list of one weight per task or a mapping task name -> weight, got {v!r}")
        if not items:
            raise ValueError("empty; give one weight per task, a mapping task name -> weight, or null")
        for k, w in items:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"weights must be finite numbers >= 0, got {w!r} for {k!r}")
        if isinstance(v, (list, tuple)) and not any(w > 0 for w in v):
            raise ValueError("at least one task needs a weight > 0")
        return v


class OptimConfig(_Section):
    name: Literal["rmsprop", "adam", "adamw", "sgd"] = Field("rmsprop", description="Optimizer (Basset: RMSprop).")
    lr: float = Field(0.002, gt=0.0, le=10.0, description="Learning rate.")
    alpha: float = Field(0.98, gt=0.0, lt=1.0, description="RMSprop smoothing constant.")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD/RMSprop momentum.")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay of weights and filters: the base "
                                "regularization of every family alike (cross-stitch and weighting parameters excluded).")
    decay_norm_and_bias: bool = Field(False, description="Decay BatchNorm scales/shifts and biases too.")
    max_norm: Optional[float] = Field(7.0, gt=0.0, description="Max L2 norm per unit after each step (null = off).")
    grad_clip: Optional[float] = Field(None, gt=0.0, description="Clip the gradient's global norm (null = off).")
    lr_schedule: Literal["constant", "cosine", "plateau"] = Field(
        "constant", description="The learning rate over epochs: constant; cosine (from optim.lr down to "
                                "optim.lr_min_ratio of it at train.epochs, as torch's CosineAnnealingLR); plateau "
                                "(multiplied by optim.lr_factor once optim.lr_patience epochs passed without a "
                                "validation AUROC gain, as ReduceLROnPlateau does). Every parameter group alike.")
    lr_patience: int = Field(3, ge=1, description="plateau: epochs without validation AUROC gain before the rate "
                                                  "is cut; below train.patience, or the run stops first.")
    lr_factor: float = Field(0.2, gt=0.0, lt=1.0, description="plateau: what the rate is multiplied by at each cut.")
    lr_min_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="cosine and plateau: the lowest rate, as a "
                                                                 "fraction of optim.lr.")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, description="Maximum epochs.")
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="Cap on steps per epoch (null = whole split).")
    patience: int = Field(3, ge=1, description="Early stopping: epochs without validation AUROC gain.")
    seed: int = Field(0, ge=0, description="Seed of data order, init and dropout.")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|auto)$", description="cpu, cuda, cuda:N or auto.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast of the forward pass (CUDA or CPU); "
                                               "loss, metrics and optimizer state stay fp32.")
    compile: bool = Field(False, description="torch.compile the model.")
    num_threads: Optional[int] = Field(
        None, ge=1, description="CPU threads for torch (null = torch's default; 1 is fastest for small models "
                                "on a busy machine).")
    out_dir: str = Field("workspace/runs", description="Where run directories are written.")
    eval_batch_size: int = Field(1024, ge=1, description="Batch size for evaluation.")
    grad_flow_every: int = Field(0, ge=0, description="Measure per-task gradient flow every N steps (0 = off).")
    grad_flow_threshold: float = Field(
        0.01, gt=0.0, lt=1.0, description="A task's gradient is dead at a layer below this fraction of its early level.")
    grad_flow_param_layers: list[str] = Field(
        [], description="Shared layers whose parameter gradients are also measured per task (e.g. [conv1]).")
    affinity_every: int = Field(
        0, ge=0, description="Measure inter-task affinity (TAG lookahead on the shared layers) every N steps "
                             "(0 = off); training itself is unchanged.")
    affinity_max_tasks: int = Field(16, ge=1, description="Tasks probed per affinity probe (they rotate).")
    affinity_lr: Optional[float] = Field(None, gt=0.0, description="Lookahead SGD step size (null = optim.lr).")


class TrackingConfig(_Section):
    enabled: Optional[bool] = Field(None, description="Log to MLflow: true, false, or null for the command's "
                                                      "default (train: only with --tracking-uri; a sweep: always).")
    uri: Optional[str] = Field(None, description="Tracking URI (null = MLFLOW_TRACKING_URI or the local SQLite store).")
    experiment: str = Field("mtlsweep", min_length=1, description="Experiment (one per study).")


GBM_FEATURES = ("max", "count", "bins", "gc", "kmer")
GBM_CACHE_DIR = "workspace/cache/motif_features"


class GbmConfig(_Section):
    """The ``gbm:`` section (model.family: motif_gbm): JASPAR motif scores + gradient-boosted trees."""
    motif_collection: str = Field("CORE", min_length=1, description="JASPAR collection (pyjaspar, offline).")
    motif_tax_group: str = Field("vertebrates", min_length=1, description="JASPAR tax group.")
    motif_release: Optional[str] = Field(None, description="JASPAR release, e.g. JASPAR2026 (null = pyjaspar's newest).")
    motif_file: Optional[str] = Field(None, description="JASPAR or MEME motif file; overrides the collection.")
    max_motifs: Optional[int] = Field(None, ge=1, description="Use only the first N motifs (by matrix id / file order).")
    hit_threshold: float = Field(0.8, gt=0.0, le=1.0,
                                 description="count: a hit scores >= this fraction of the motif's best log-odds score.")
    features: list[Literal["max", "count", "bins", "gc", "kmer"]] = Field(
        ["max"], min_length=1, description="Feature blocks: max, count, bins, gc, kmer.")
    n_bins: int = Field(3, ge=2, le=32, description="bins: position bins along the sequence.")
    track_features: bool = Field(True, description="With a store's signal tracks (data.use_tracks): per track "
                                                   "its mean, max and the mean in each of n_bins bins.")
    kmer_k: int = Field(3, ge=1, le=4, description="kmer: k-mer length (4^k features).")
    backend: Literal["xgboost", "sklearn"] = Field(
        "sklearn", description="Tree library: scikit-learn's HistGradientBoosting or xgboost (needed for multi_output).")
    n_estimators: int = Field(300, ge=1, le=100000, description="Maximum boosting rounds per model.")
    max_depth: int = Field(4, ge=1, le=32, description="Maximum tree depth.")
    learning_rate: float = Field(0.1, gt=0.0, le=1.0, description="Shrinkage per round.")
    early_stopping_rounds: Optional[int] = Field(
        20, ge=1, description="Stop after this many rounds without validation-loss gain (null = off).")
    multi_output: bool = Field(False, description="One model for all tasks (xgboost vector-leaf trees).")
    n_jobs: Optional[int] = Field(None, ge=1, description="Threads for features and trees (null = all cores).")
    cache_dir: Optional[str] = Field(GBM_CACHE_DIR, description="Feature cache directory (null = no cache).")

    @field_validator("features")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"lists a feature twice ({v}); allowed: each of {list(GBM_FEATURES)} at most once")
        return v

    @model_validator(mode="after")
    def _multi_needs_xgboost(self):
        if self.multi_output and self.backend != "xgboost":
            raise ValueError("gbm.multi_output=true needs gbm.backend xgboost (vector-leaf trees, multi_strategy="
                             "multi_output_tree); scikit-learn's boosting has one output per model")
        return self


class KmerConfig(_Section):
    """The ``kmer:`` section (model.family: kmer_linear): k-mer counts of both strands + logistic regression."""
    k: list[Annotated[int, Field(ge=1, le=8)]] = Field(
        [4, 5, 6], min_length=1, description="k-mer lengths tried (canonical k-mers of both strands; 4^k/2 features).")
    C: list[Annotated[float, Field(gt=0.0)]] = Field(
        [0.001, 0.01, 0.1, 1.0], min_length=1, description="Inverse L2 penalties tried (scikit-learn's C).")
    select: Literal["joint", "per_task"] = Field(
        "joint", description="joint: the (k, C) best on mean validation AUROC for all tasks, as a CNN arm's "
                             "learning rate; per_task: each task its own best.")
    max_iter: int = Field(1000, ge=1, description="lbfgs iterations per fit (a fit that needs more is not converged).")
    n_jobs: Optional[int] = Field(None, ge=1, description="Threads for features and fits (null = all cores).")

    @field_validator("k", "C")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"lists a value twice ({v})")
        return sorted(v)


def parse_gbm_config(tree: Any, source: str = "gbm") -> GbmConfig:
    """A GbmConfig from a mapping; a bad value raises ConfigError naming ``gbm.<field>``."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: must be a mapping of gbm fields, got {type(tree).__name__}")
    try:
        return GbmConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + describe_all(exc, ("gbm",))) from None


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    gbm: GbmConfig = Field(default_factory=GbmConfig)
    kmer: KmerConfig = Field(default_factory=KmerConfig)

    @model_validator(mode="after")
    def _cross_section(self):
        ws = self.schedule.warm_start
        if ws.task is not None and ws.epochs == 0 and not ws.until_plateau:
            raise ValueError("schedule.warm_start.epochs must be >= 1 (or until_plateau true) when a warm-start task is set")
        if ws.task is not None and ws.epochs >= self.train.epochs and not ws.until_plateau:
            raise ValueError(f"schedule.warm_start.epochs={ws.epochs} leaves no epoch for the other tasks "
                             f"(train.epochs={self.train.epochs})")
        weighting = REGISTRIES["schedule.weighting"][self.schedule.weighting]
        if weighting.kind == "shared" and self.model.n_shared == 0:
            raise ValueError(
                f"schedule.weighting={self.schedule.weighting} needs shared parameters; "
                "model.sharing.shared_layers is 0")
        tw, tasks = self.schedule.task_weights, self.data.tasks
        if tw is not None and self.schedule.weighting != "fixed":
            raise ValueError(f"schedule.task_weights is read by schedule.weighting=fixed only, got weighting="
                             f"{self.schedule.weighting}")
        # With the tasks named here, what the data would refuse at the start of the run is refused now.
        if isinstance(tw, list) and tasks is not None and len(tw) != len(tasks):
            raise ValueError(f"schedule.task_weights has {len(tw)} weights; data.tasks selects {len(tasks)} tasks")
        if isinstance(tw, dict) and tasks is not None and all(isinstance(t, str) for t in tasks):
            unknown = [k for k in tw if k not in tasks]
            if unknown:
                raise ValueError(f"schedule.task_weights: {unknown[0]!r} is not among data.tasks")
        if self.model.n_group and self.init.kind in ("checkpoint", "from_hard", "from_single"):
            raise ValueError(f"init.kind={self.init.kind} copies layers stack by stack, which group layers do not "
                             "have; use random or motifs with model.sharing.group_layers")
        if self.optim.lr_schedule == "plateau" and self.optim.lr_patience >= self.train.patience:
            raise ValueError(f"optim.lr_patience={self.optim.lr_patience} must be below train.patience="
                             f"{self.train.patience}: early stopping would end the run before the rate is ever cut")
        if self.train.affinity_every and self.model.n_shared == 0:
            raise ValueError("train.affinity_every measures affinity through shared layers; "
                             "model.sharing.shared_layers is 0")
        if self.schedule.order_by == "affinity" and not self.schedule.affinity:
            raise ValueError("schedule.affinity is required when schedule.order_by is affinity")
        if self.schedule.order.startswith("group_") and self.model.sharing.groups is None:
            raise ValueError(f"schedule.order={self.schedule.order} needs model.sharing.groups")
        if self.schedule.order_by == "baseline_auroc" and not self.schedule.baseline_auroc:
            raise ValueError("schedule.baseline_auroc is required when schedule.order_by is baseline_auroc")
        return self

    # ---- dotted keys -------------------------------------------------------------------
    def flatten(self) -> dict[str, Any]:
        return flatten(self.model_dump(mode="json"))

    @classmethod
    def from_flat(cls, flat: dict[str, Any], source: str = "config") -> "RunConfig":
        return validate(unflatten(flat), source)

    def with_overrides(self, overrides: dict[str, Any], source: str = "--set") -> "RunConfig":
        flat = self.flatten()
        for key, value in overrides.items():
            if key not in flat and not _is_prefix_of_any(key, flat):
                raise ConfigError(f"{source}: unknown key {key!r}; keys are the dotted fields of the config "
                                  f"(e.g. model.sharing.strength)")
            flat = {k: v for k, v in flat.items() if not (k == key or k.startswith(key + "."))}
            flat[key] = value
        # A preset names the trunk's lists: setting one fills them (unless given alongside), and
        # setting a list by hand leaves the preset (the trunk is then the lists as given).
        lists = [f"model.arch.{k}" for k in PRESET_KEYS]
        if overrides.get("model.arch.preset") is not None:
            flat = {k: v for k, v in flat.items() if k not in lists or k in overrides}
        elif any(k in overrides for k in lists) and "model.arch.preset" not in overrides:
            flat["model.arch.preset"] = None
        return RunConfig.from_flat(flat, source)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _is_prefix_of_any(key: str, flat: dict) -> bool:
    return any(k.startswith(key + ".") for k in flat)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}. Lists and None are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        node = tree
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"key {dotted!r} conflicts with the leaf {part!r}")
            node = nxt
        node[parts[-1]] = value
    return tree


def validate(tree: Any, source: str = "config") -> RunConfig:
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections "
                          f"(data, model, init, schedule, optim, train, tracking)")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + describe_all(exc)) from None


def load_config(path: str | Path, overrides: Optional[list[str]] = None) -> RunConfig:
    """Load a YAML config and apply ``key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = path.read_bytes()
    if raw.startswith(b"\x89HDF"):
        raise ConfigError(f"{path}: an HDF5 data file, not a YAML config; name it in a config as data.path "
                          f"(or --set data.path={path})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a config is YAML (see search/configs/*.yaml)") from None
    tree = load_yaml(text, str(path))
    cfg = validate(tree, str(path))
    if overrides:
        cfg = cfg.with_overrides(parse_overrides(overrides), f"{path} --set")
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out
