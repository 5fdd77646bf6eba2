"""Optimizers by name; Basset trained with RMSprop(lr 0.002, alpha 0.98) and max-norm 7.

``optim.weight_decay`` is the base regularization every family gets alike. It applies to the
network's weight matrices and filters (trunk, towers, output units); BatchNorm's scale and
shift and the biases are left out unless ``optim.decay_norm_and_bias`` (as is usual: decaying
a BatchNorm scale shrinks nothing the next layer cannot undo, it only fights the
normalization), and cross-stitch mixing weights and task-weighting parameters are never
decayed, because their zero is not "no effect" (a cross-stitch unit decayed toward zero cuts
its towers off).
"""
from __future__ import annotations

import torch


def _decayed(name: str) -> bool:
    return not (name.endswith("bias") or ".bn." in name)


def build_optimizer(cfg, model, extra_params=()) -> torch.optim.Optimizer:
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for g in model.param_groups(cfg.lr):
        if g.get("name") != "model":
            groups.append({**g, "weight_decay": 0.0})
            continue
        decay = [p for p in g["params"] if cfg.decay_norm_and_bias or _decayed(names[id(p)])]
        rest = [p for p in g["params"] if not (cfg.decay_norm_and_bias or _decayed(names[id(p)]))]
        groups.append({**g, "params": decay, "weight_decay": cfg.weight_decay})
        if rest:
            groups.append({**g, "name": "model_no_decay", "params": rest, "weight_decay": 0.0})
    extra = [p for p in extra_params if p.requires_grad]
    if extra:
        groups.append({"name": "weighting", "params": extra, "lr": cfg.lr, "weight_decay": 0.0})
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
