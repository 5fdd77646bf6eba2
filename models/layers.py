"""Stacked layers: one module holds a layer for S stacks (S = 1 shared, S = T towers).

Every parameter has a leading stack axis, so both backends read the same tensors and a
state_dict does not depend on the backend:

- ``forward_loop`` runs one op per stack (T separate convolutions: the fast path on CPU, and
  the very ops of a single-task model, so a tower's updates are bit-identical to it);
- ``forward_batched`` runs one op for all stacks (grouped Conv1d with groups = S, batched
  matmul for dense layers, BatchNorm over S*C channels, which is per channel and therefore per
  stack: the fast path on GPUs; equal to the loop to float tolerance).

Activations in loop form are a list of S tensors; in batched form one tensor with the stacks
side by side on the channel axis ([B, S*C, L] or [B, S*D]). A plain tensor passed to
``forward_loop``, or ``shared_input=True`` for ``forward_batched``, is an input common to all
stacks (the shared representation).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .arch import HeadSpec, LayerSpec

Acts = Union[Tensor, list[Tensor]]
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def dropout_masks(batch: int, features: int, p: float, gens: Sequence[torch.Generator],
                  like: Tensor) -> list[Tensor]:
    """One inverted-dropout mask per stack, drawn from that stack's own generator."""
    keep = 1.0 - p
    return [torch.empty((batch, features), device=like.device, dtype=like.dtype)
            .bernoulli_(keep, generator=g).div_(keep) for g in gens]


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient.

    torch.cat's backward gives each tower a strided slice of the logits' gradient; reducing a
    strided tensor sums in another order than the contiguous gradient a single-task model gets.
    A contiguous copy keeps a tower's updates bit-identical to its single-task model's."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def contiguous_grad(x: Tensor) -> Tensor:
    return _ContiguousGrad.apply(x)


class StackedBatchNorm(nn.Module):
    """BatchNorm with per-stack parameters and running stats, fed with the pre-activation
    *and* the bias of the layer before it.

    In training mode BatchNorm subtracts the batch mean, so the gradient of that bias is exactly
    zero. Autograd would return rounding noise instead, and RMSprop/Adam turn noise into steps
    of about ±lr (noise / √noise): the bias random-walks, differently for every float summation
    order (loop vs batched backend, a tower vs its single-task model). So in training the bias is
    kept out of the normalized input (its gradient is an exact zero) and enters the running
    mean directly: (1-m)·rm + m·mean(z + b) = (1-m)·rm + m·mean(z) + m·b. In eval mode the bias
    is added to z as usual. Forward values are those of conv/linear(+bias) -> BatchNorm.
    """

    def __init__(self, stacks: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(stacks, channels))
        self.bias = nn.Parameter(torch.zeros(stacks, channels))
        self.register_buffer("running_mean", torch.zeros(stacks, channels))
        self.register_buffer("running_var", torch.ones(stacks, channels))

    def reset(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()
            self.running_mean.zero_()
            self.running_var.fill_(1.0)

    def _norm(self, z: Tensor, pre_bias: Tensor, rm: Tensor, rv: Tensor, w: Tensor, b: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (z.dim() - 2)
        if not self.training:
            return F.batch_norm(z + pre_bias.view(shape), rm, rv, w, b, False, BN_MOMENTUM, BN_EPS)
        # 0·bias keeps the bias in the graph with an exact zero gradient.
        # batch_norm keeps its running-mean argument for backward: update a copy, then rm.
        mean = rm.clone()
        h = F.batch_norm(z + (pre_bias * 0.0).view(shape), mean, rv, w, b, True, BN_MOMENTUM, BN_EPS)
        with torch.no_grad():
            rm.copy_(mean + BN_MOMENTUM * pre_bias.detach())
        return h

    def unbound(self) -> tuple:
        # unbind once per forward: its backward stacks the T gradients in one op, whereas
        # indexing weight[s] T times would build T full-size gradients.
        return (self.weight.unbind(0), self.bias.unbind(0),
                self.running_mean.unbind(0), self.running_var.unbind(0))

    def one(self, z: Tensor, pre_bias: Tensor, parts: tuple, s: int) -> Tensor:
        w, b, rm, rv = parts
        # rm[s] is a view: batch_norm updates the stacked buffer in place.
        return self._norm(z, pre_bias, rm[s], rv[s], w[s], b[s])

    def all(self, z: Tensor, pre_bias: Tensor) -> Tensor:
        return self._norm(z, pre_bias.reshape(-1), self.running_mean.view(-1), self.running_var.view(-1),
                          self.weight.reshape(-1), self.bias.reshape(-1))


def _kaiming_reset(layer, gens: Sequence[torch.Generator]) -> None:
    """Kaiming-normal weights per stack (each from its own generator), zero bias, fresh BN."""
    with torch.no_grad():
        for w, g in zip(layer.weight, gens):
            nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g)
        layer.bias.zero_()
    layer.bn.reset()


class StackedConv(nn.Module):
    """conv -> BatchNorm -> ReLU -> max-pool (ceil mode), no padding; Basset's conv block."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        s = spec.stacks
        self.weight = nn.Parameter(torch.empty(s, spec.out_units, spec.in_units, spec.kernel))
        self.bias = nn.Parameter(torch.zeros(s, spec.out_units))
        self.bn = StackedBatchNorm(s, spec.out_units)

    reset = _kaiming_reset

    def _post(self, h: Tensor) -> Tensor:
        p = self.spec.pool
        return F.max_pool1d(F.relu(h), p, p, ceil_mode=True)

    def forward_loop(self, xs: Acts, gens: Sequence[torch.Generator]) -> list[Tensor]:
        shared_in = isinstance(xs, Tensor)
        ws, bs, bn = self.weight.unbind(0), self.bias.unbind(0), self.bn.unbound()
        out = []
        for s in range(self.spec.stacks):
            z = F.conv1d(xs if shared_in else xs[s], ws[s])
            out.append(self._post(self.bn.one(z, bs[s], bn, s)))
        return out

    def forward_batched(self, x: Tensor, shared_input: bool, gens: Sequence[torch.Generator]) -> Tensor:
        s, spec = self.spec.stacks, self.spec
        w = self.weight.reshape(s * spec.out_units, spec.in_units, spec.kernel)
        z = F.conv1d(x, w, groups=1 if shared_input else s)
        return self._post(self.bn.all(z, self.bias))


class StackedDense(nn.Module):
    """linear -> BatchNorm -> ReLU -> dropout; Basset's dense block. Flattens conv input."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        s = spec.stacks
        self.weight = nn.Parameter(torch.empty(s, spec.out_units, spec.in_units))
        self.bias = nn.Parameter(torch.zeros(s, spec.out_units))
        self.bn = StackedBatchNorm(s, spec.out_units)

    reset = _kaiming_reset

    def _dropping(self) -> bool:
        return self.training and self.spec.dropout > 0

    def forward_loop(self, xs: Acts, gens: Sequence[torch.Generator]) -> list[Tensor]:
        shared_in = isinstance(xs, Tensor)
        ws, bs, bn = self.weight.unbind(0), self.bias.unbind(0), self.bn.unbound()
        out = []
        for s in range(self.spec.stacks):
            x = (xs if shared_in else xs[s]).flatten(1)
            h = F.relu(self.bn.one(F.linear(x, ws[s]), bs[s], bn, s))
            if self._dropping():
                h = h * dropout_masks(h.shape[0], h.shape[1], self.spec.dropout, [gens[s]], h)[0]
            out.append(h)
        return out

    def forward_batched(self, x: Tensor, shared_input: bool, gens: Sequence[torch.Generator]) -> Tensor:
        s, spec = self.spec.stacks, self.spec
        b = x.shape[0]
        if shared_input:
            z = F.linear(x.flatten(1), self.weight.reshape(s * spec.out_units, spec.in_units))
        else:
            xs = x.reshape(b, s, spec.in_units).transpose(0, 1)
            z = torch.bmm(xs, self.weight.transpose(1, 2)).transpose(0, 1).reshape(b, s * spec.out_units)
        h = F.relu(self.bn.all(z, self.bias))
        if self._dropping():
            h = h * torch.cat(dropout_masks(b, spec.out_units, spec.dropout, gens, h), dim=1)
        return h


class StackedHead(nn.Module):
    """Output units (logits). weight [S, U, D]: S = 1, U = T for a shared trunk; S = T, U = 1
    for towers. Logit columns are in task order either way."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.stacks, spec.units, spec.in_features))
        self.bias = nn.Parameter(torch.zeros(spec.stacks, spec.units))

    def reset(self, gens: Sequence[torch.Generator]) -> None:
        with torch.no_grad():
            for w, g in zip(self.weight, gens):
                # no ReLU follows the logits: Kaiming with linear gain (std 1/sqrt(fan_in)).
                nn.init.kaiming_normal_(w, nonlinearity="linear", generator=g)
            self.bias.zero_()

    def forward_loop(self, xs: Acts) -> Tensor:
        if isinstance(xs, Tensor):
            return self.forward_batched(xs, True)
        ws, bs = self.weight.unbind(0), self.bias.unbind(0)
        return torch.cat([contiguous_grad(F.linear(x.flatten(1), ws[s], bs[s])) for s, x in enumerate(xs)],
                         dim=1)

    def forward_batched(self, x: Tensor, shared_input: bool) -> Tensor:
        s, spec = self.spec.stacks, self.spec
        b = x.shape[0]
        if shared_input:
            return F.linear(x.flatten(1), self.weight.reshape(s * spec.units, spec.in_features),
                            self.bias.reshape(-1))
        xs = x.reshape(b, s, spec.in_features).transpose(0, 1)
        h = torch.baddbmm(self.bias.unsqueeze(1), xs, self.weight.transpose(1, 2))
        return h.transpose(0, 1).reshape(b, s * spec.units)
