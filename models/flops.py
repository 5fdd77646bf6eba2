"""Analytic cost per sequence: 2 × multiply-adds of the conv and dense layers and the outputs.

BatchNorm, ReLU, pooling, dropout and cross-stitch mixing are left out: they are linear in
the activations and small next to the matmuls.
"""
from __future__ import annotations

from .arch import HeadSpec, LayerSpec


def layer_flops(spec: LayerSpec) -> int:
    if spec.kind == "conv":
        macs = spec.conv_len * spec.out_units * spec.in_units * spec.kernel
    else:
        macs = spec.in_units * spec.out_units
    return 2 * macs * spec.stacks


def head_flops(head: HeadSpec) -> int:
    return 2 * head.in_features * head.units * head.stacks


def flops_by_layer(specs: list[LayerSpec], head: HeadSpec) -> dict[str, int]:
    out = {spec.name: layer_flops(spec) for spec in specs}
    out["out"] = head_flops(head)
    return out


def flops_per_sample(specs: list[LayerSpec], head: HeadSpec) -> int:
    return sum(flops_by_layer(specs, head).values())
