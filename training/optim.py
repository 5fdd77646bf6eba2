"""Optimizers by name; Basset trained with RMSprop(lr 0.002, alpha 0.98) and max-norm 7."""
from __future__ import annotations

import torch


def build_optimizer(cfg, model, extra_params=()) -> torch.optim.Optimizer:
    groups = model.param_groups(cfg.lr)
    extra = [p for p in extra_params if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": cfg.lr})
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
