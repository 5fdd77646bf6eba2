"""Masked per-task binary cross-entropy: an unknown label adds nothing to loss or gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce_per_task(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor):
    """Returns (loss per task [T], known-label count per task [T]).

    Each task's loss is the mean over its known labels in the batch (0 when it has none), so
    the sum over tasks gives each tower exactly the gradient it would get trained alone."""
    elem = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    m = mask.to(elem.dtype)
    known = m.sum(0)
    per_task = (elem * m).sum(0) / known.clamp(min=1.0)
    return per_task, known
