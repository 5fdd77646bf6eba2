"""The learning rate over epochs (``optim.lr_schedule``), as a factor on every parameter group's own
rate. The factor of an epoch follows from the config and the validation history before it, so a
resumed run (or a population's member that copied another's checkpoint, history included) goes on
with the schedule it had, with no scheduler state to save."""
from __future__ import annotations

import math
from typing import Sequence

SCORE = "val/auroc_mean"


def lr_factor(optim, epoch: int, epochs: int, history: Sequence[dict]) -> float:
    """The factor on optim.lr for ``epoch`` (1-based) of a run of at most ``epochs``, ``history``
    holding the epochs before it."""
    floor = optim.lr_min_ratio
    if optim.lr_schedule == "cosine":
        # torch's CosineAnnealingLR(T_max=epochs, eta_min=floor * lr), stepped once an epoch
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    if optim.lr_schedule == "plateau":
        # ReduceLROnPlateau(mode="max", threshold=0, cooldown=0) on validation AUROC, but cut once
        # lr_patience epochs passed without a gain (torch waits one epoch more)
        factor, best, bad = 1.0, -math.inf, 0
        for h in history[:epoch - 1]:
            score = h.get(SCORE, math.nan)
            if score > best:
                best, bad = score, 0
                continue
            bad += 1
            if bad >= optim.lr_patience:
                factor, bad = max(factor * optim.lr_factor, floor), 0
        return factor
    return 1.0
