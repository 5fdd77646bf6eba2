"""Task weighting: turns per-task losses and the schedule's weights into gradients."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Weighting(nn.Module):
    """backward(losses [T], weights [T], extra scalar, model) -> float (the objective)."""

    def backward(self, losses: torch.Tensor, weights: torch.Tensor, extra: torch.Tensor,
                 model: nn.Module) -> float:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        return {}


class Equal(Weighting):
    def backward(self, losses, weights, extra, model):
        total = (weights * losses).sum() + extra
        total.backward()
        return float(total.detach())
