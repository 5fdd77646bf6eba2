"""Soft couplings between per-task towers: sharing terms only, never shrinkage.

- ``l2`` (Duong et al. 2015, generalized to T towers): λ·Σ_layers Σ_t ‖W_t − mean_t W‖².
- ``trace_norm`` (Yang & Hospedales 2017): λ·Σ_layers ‖M − mean_t M‖_*, M the T × P
  unfolding of a layer's tower parameters (one row per task), centred over tasks: it asks the
  towers' *differences* to be low-rank and leaves their common part alone.
- ``cross_stitch`` (Misra et al. 2016): a learned T × T mix of the towers' activations after
  every tower layer (not the logits), initialised identity-dominant; no penalty.
- ``l2_zero``: the control of ``l2``, λ·Σ_layers Σ_t ‖W_t‖² on the same parameters. It pulls
  every tower toward zero, on its own: shrinkage with no sharing at all. A gain of ``l2`` that
  ``l2_zero`` (or a tuned ``optim.weight_decay``) also gets is regularization, not transfer.

Why sharing and shrinkage must be kept apart: with towers drawn independently, mean_t W is ≈ 0
at the start, so ``l2`` acts as a weight decay of 2λ on every tower. Towers therefore start from
one common draw (``model.sharing.tower_init: common``): mean_t W is then a working network, the
penalties are exactly 0 until the towers diverge, and they pull the towers toward each other
only. The base regularization (``optim.weight_decay``, dropout, max-norm) is the same for every
family, towers included; with λ = 0 a coupled model is exactly the towers.

The penalties cover the weights and biases of the tower trunk layers: the layers that hard
sharing would share. Output units stay per task (tying them would make tasks predict alike),
and BatchNorm parameters stay free.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlsweep.config.registry import COUPLINGS


def check_coupling(coupling: str, n_tasks: int, shared_layers: int, n_layers: int) -> None:
    """A registered coupling (config/registry.py COUPLINGS) ties per-task towers: it needs some."""
    if COUPLINGS[coupling].kind == "none":
        return
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


NUCLEAR_EPS = 1e-4


def nuclear(mats: list[Tensor]) -> Tensor:
    """Σ_layers nuclear norm of the T × P unfoldings centred over tasks (the trace-norm coupling
    without λ), smoothed as Σ_i sqrt(s_i² + ε²) − ε (ε = NUCLEAR_EPS).

    The plain norm's gradient is U·Vᵀ, of spectral norm 1 even where the towers agree (s = 0, as
    at a common start), with U and V arbitrary there: every step would push the towers apart in
    random directions. The smoothed gradient U·diag(s/sqrt(s² + ε²))·Vᵀ vanishes at s = 0 and is
    the plain one once s ≫ ε; only the singular values get gradients, so repeated ones are safe."""
    def one(m: Tensor) -> Tensor:
        s = torch.linalg.svdvals(m - m.mean(dim=0, keepdim=True))
        return (torch.sqrt(s * s + NUCLEAR_EPS ** 2) - NUCLEAR_EPS).sum()
    return torch.stack([one(m) for m in mats]).sum()


def magnitude(mats: list[Tensor]) -> Tensor:
    """Σ_layers Σ_t ‖W_t‖² (the l2_zero control without λ)."""
    return torch.stack([(m ** 2).sum() for m in mats]).sum()


def cross_stitch_init(n_tasks: int, self_weight: float) -> Tensor:
    off = (1.0 - self_weight) / (n_tasks - 1)
    alpha = torch.full((n_tasks, n_tasks), off)
    alpha.fill_diagonal_(self_weight)
    return alpha


class CrossStitch(nn.Module):
    """One T × T unit per tower layer: tower t's activation becomes Σ_s α[t, s]·x_s."""

    @classmethod
    def from_config(cls, sharing, layers: list[str], n_tasks: int) -> "CrossStitch":
        return cls(layers, n_tasks, sharing.cross_stitch_self)

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
