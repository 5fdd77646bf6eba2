"""Soft couplings between per-task towers.

- ``l2`` (Duong et al. 2015, generalized to T towers): λ·Σ_layers Σ_t ‖W_t − mean_t W‖².
- ``trace_norm`` (Yang & Hospedales 2017): λ·Σ_layers ‖M‖_*, M the T × P unfolding of a
  layer's tower parameters (one row per task).
- ``cross_stitch`` (Misra et al. 2016): a learned T × T mix of the towers' activations after
  every tower layer (not the logits), initialised identity-dominant.

The penalties cover the weights and biases of the tower trunk layers: the layers that hard
sharing would share. Output units stay per task (tying them would make tasks predict alike),
and BatchNorm parameters stay free.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

COUPLINGS = ("none", "l2", "trace_norm", "cross_stitch")


def check_coupling(coupling: str, n_tasks: int, shared_layers: int, n_layers: int) -> None:
    if coupling == "none":
        return
    if coupling not in COUPLINGS:
        raise ValueError(f"model.sharing.coupling must be one of {COUPLINGS}, got {coupling!r}")
    if shared_layers >= n_layers or n_tasks < 2:
        raise ValueError(
            f"model.sharing.coupling={coupling} ties per-task towers: it needs "
            f"model.sharing.shared_layers < {n_layers} and at least 2 tasks "
            f"(got shared_layers={shared_layers}, {n_tasks} task(s)); use coupling none")


def unfold(layer: nn.Module) -> Tensor:
    """A stacked layer's weights and biases as a T × P matrix, one row per tower."""
    t = layer.weight.shape[0]
    return torch.cat([layer.weight.reshape(t, -1), layer.bias.reshape(t, -1)], dim=1)


def spread(mats: list[Tensor]) -> Tensor:
    """Σ_layers Σ_t ‖W_t − mean_t W‖² (the l2 coupling without λ)."""
    return torch.stack([((m - m.mean(dim=0, keepdim=True)) ** 2).sum() for m in mats]).sum()


def nuclear(mats: list[Tensor]) -> Tensor:
    """Σ_layers nuclear norm of the T × P unfoldings (the trace-norm coupling without λ)."""
    return torch.stack([torch.linalg.matrix_norm(m, ord="nuc") for m in mats]).sum()


def cross_stitch_init(n_tasks: int, self_weight: float) -> Tensor:
    off = (1.0 - self_weight) / (n_tasks - 1)
    alpha = torch.full((n_tasks, n_tasks), off)
    alpha.fill_diagonal_(self_weight)
    return alpha


class CrossStitch(nn.Module):
    """One T × T unit per tower layer: tower t's activation becomes Σ_s α[t, s]·x_s."""

    def __init__(self, layers: list[str], n_tasks: int, self_weight: float):
        super().__init__()
        self.alpha = nn.ParameterDict(
            {name: nn.Parameter(cross_stitch_init(n_tasks, self_weight)) for name in layers})

    def mix_loop(self, name: str, xs: list[Tensor]) -> list[Tensor]:
        stacked = torch.stack(xs)
        flat = stacked.reshape(stacked.shape[0], -1)
        return list((self.alpha[name] @ flat).reshape(stacked.shape).unbind(0))

    def mix_batched(self, name: str, x: Tensor) -> Tensor:
        alpha = self.alpha[name]
        b, t = x.shape[0], alpha.shape[0]
        mixed = torch.einsum("ts,bsf->btf", alpha, x.reshape(b, t, -1))
        return mixed.reshape(x.shape)
