"""The layer plan: names, shapes and sharing of every trunk layer, worked out from the config.

Layer i (0-based) of the trunk is shared when ``i < shared_layers``; a group layer, stacked
once per task group, when ``shared_layers <= i < shared_layers + group_layers`` (with groups);
otherwise it is a tower layer, stacked once per task. Shared and group layers are scaled by
``shared_width``, tower layers by ``width``; a pool of 0 is a global max-pool. Convolutions have no padding and pool
with stride = width in ceil mode (Basset: 600 -> 582 -> 194 -> 184 -> 46 -> 40 -> 10).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mtlsweep.config.run import ModelConfig


@dataclass(frozen=True)
class LayerSpec:
    name: str           # "conv1", ..., "fc1", ...
    kind: str           # "conv" or "dense"
    shared: bool
    stacks: int         # 1 when shared, G for a group layer, T for a tower layer
    in_units: int       # conv: input channels; dense: input features (flattened)
    out_units: int      # conv: filters; dense: units
    kernel: int = 1     # conv kernel width
    pool: int = 1       # conv max-pool width (= stride)
    in_len: int = 1     # conv input length
    conv_len: int = 1   # conv output length before pooling
    out_len: int = 1    # length after pooling
    dropout: float = 0.0
    grouped: bool = False


@dataclass(frozen=True)
class HeadSpec:
    """The output layer: one unit per task. Shared trunk (k = L): one stack of T units
    (Basset's Linear(dense[-1], T)); otherwise T stacks of one unit, each ending its tower."""
    stacks: int
    units: int
    in_features: int


def scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


def layer_names(cfg: ModelConfig) -> list[str]:
    arch = cfg.arch
    return [f"conv{i + 1}" for i in range(len(arch.conv_channels))] + \
           [f"fc{i + 1}" for i in range(len(arch.dense))]


def plan(cfg: ModelConfig, n_tasks: int, in_channels: int, seq_len: int,
         n_groups: int = 0) -> tuple[list[LayerSpec], HeadSpec]:
    arch, k = cfg.arch, cfg.n_shared
    m = cfg.n_group if n_groups else 0

    def role(i: int) -> tuple[bool, bool, int]:
        """(shared, grouped, stacks) of layer i."""
        if i < k:
            return True, False, 1
        if i < k + m:
            return False, True, n_groups
        return False, False, n_tasks

    specs: list[LayerSpec] = []
    channels, length, i = in_channels, seq_len, 0
    for j, (out, kernel, pool) in enumerate(zip(arch.conv_channels, arch.conv_widths, arch.pool)):
        shared, grouped, stacks = role(i)
        name = f"conv{j + 1}"
        if length < kernel:
            raise ValueError(
                f"model.arch.conv_widths: {name} has width {kernel} but its input is only {length} positions "
                f"long (seq_len {seq_len}); use a longer sequence or narrower/fewer conv layers")
        conv_len = length - kernel + 1
        pool = pool or conv_len                  # 0: one max over the whole length
        if conv_len < pool:
            raise ValueError(
                f"model.arch.pool: {name} pools by {pool} but its output is only {conv_len} positions long "
                f"(seq_len {seq_len}); use a longer sequence or smaller pools")
        units = scaled(out, cfg.shared_width) if shared or grouped else scaled(out, cfg.width)
        out_len = math.ceil(conv_len / pool)
        specs.append(LayerSpec(name, "conv", shared, stacks, channels, units,
                               kernel, pool, length, conv_len, out_len, grouped=grouped))
        channels, length, i = units, out_len, i + 1
    features = channels * length
    for j, out in enumerate(arch.dense):
        shared, grouped, stacks = role(i)
        units = scaled(out, cfg.shared_width) if shared or grouped else scaled(out, cfg.width)
        specs.append(LayerSpec(f"fc{j + 1}", "dense", shared, stacks, features, units,
                               dropout=arch.dropout, grouped=grouped))
        features, i = units, i + 1
    hard = k == len(specs)
    head = HeadSpec(stacks=1 if hard else n_tasks, units=n_tasks if hard else 1, in_features=features)
    return specs, head
