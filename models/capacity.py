"""Parameter counts from the layer plan, and the capacity-matched control of a shared trunk.

``model.capacity: match_towers`` scales the shared and group layers (``shared_width``) until the
model has as many parameters as the single-task towers of the same config, so that a shared trunk
and the towers it is compared with differ in sharing, not in size.
"""
from __future__ import annotations

import math

from mtlsweep.config.run import ModelConfig, SharingConfig

from .arch import HeadSpec, LayerSpec, plan


def layer_params(spec: LayerSpec) -> int:
    """Weights, bias and the BatchNorm scale and shift of every unit, for every stack."""
    fan_in = spec.in_units * spec.kernel if spec.kind == "conv" else spec.in_units
    return spec.stacks * spec.out_units * (fan_in + 3)


def head_params(head: HeadSpec) -> int:
    return head.stacks * head.units * (head.in_features + 1)


def planned_params(cfg: ModelConfig, n_tasks: int, in_channels: int, seq_len: int, n_groups: int = 0) -> int:
    """The parameter count of the model ``cfg`` builds (cross-stitch units included)."""
    specs, head = plan(cfg, n_tasks, in_channels, seq_len, n_groups)
    n = sum(layer_params(s) for s in specs) + head_params(head)
    if cfg.sharing.coupling == "cross_stitch":
        n += sum(1 for s in specs if not s.shared and not s.grouped) * n_tasks * n_tasks
    return n


def towers_of(cfg: ModelConfig) -> ModelConfig:
    """The single-task towers of ``cfg``: nothing shared, no coupling, the same tower width."""
    return cfg.model_copy(update={"sharing": SharingConfig(shared_layers=0, tower_init=cfg.sharing.tower_init),
                                  "capacity": "as_set", "shared_width": 1.0})


def match_towers(cfg: ModelConfig, n_tasks: int, in_channels: int, seq_len: int, n_groups: int = 0) -> ModelConfig:
    """``cfg`` with ``shared_width`` set so that its parameter count is the nearest reachable to the
    towers' (``capacity: match_towers``); a model with no shared or group layer is returned as is."""
    if cfg.capacity != "match_towers" or (cfg.n_shared == 0 and not (n_groups and cfg.n_group)):
        return cfg
    target = planned_params(towers_of(cfg), n_tasks, in_channels, seq_len)

    def count(log_w: float) -> int:
        return planned_params(cfg.model_copy(update={"shared_width": math.exp(log_w)}), n_tasks, in_channels,
                              seq_len, n_groups)

    lo, hi = math.log(1 / 64), math.log(16.0)          # the count grows with the width: bisect on its log
    if count(lo) >= target:
        hi = lo
    elif count(hi) <= target:
        lo = hi
    for _ in range(60):
        if hi - lo < 1e-6:
            break
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda w: abs(count(w) - target))
    return cfg.model_copy(update={"shared_width": round(math.exp(best), 6)})
