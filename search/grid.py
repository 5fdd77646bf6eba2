"""Fixed-design sweeps: named variants crossed with a grid, every point run once.

    variants:                       # name -> config overrides applied on top of the base
      hard: {}
      soft_l2_0.1: {model.sharing.shared_layers: 0, model.sharing.coupling: l2, model.sharing.strength: 0.1}
    grid:                           # dotted key -> values, crossed with the variants
      train.seed: [0, 1, 2]

A study compares families at the same budget, so nothing is sampled or pruned adaptively:
the sweep runs Tune's grid search over (variant x grid) through the same trainable, tracking
and resumption as an Optuna sweep, and `mtlsweep compare --group-by variant` aggregates it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from training.config import ConfigError, RunConfig

VARIANT_KEY = "variant"


@dataclass
class GridSpace:
    variants: dict[str, dict[str, Any]]
    grid: dict[str, list]
    source: str = "space"

    @property
    def keys(self) -> list[str]:
        return [VARIANT_KEY, *self.grid]

    @property
    def size(self) -> int:
        n = len(self.variants)
        for values in self.grid.values():
            n *= len(values)
        return n

    def points(self) -> list[dict[str, Any]]:
        names, grid_keys = list(self.variants), list(self.grid)
        return [{VARIANT_KEY: name, **dict(zip(grid_keys, combo))}
                for name in names for combo in itertools.product(*self.grid.values())]

    def param_space(self) -> dict[str, Any]:
        from ray import tune
        return {VARIANT_KEY: tune.grid_search(list(self.variants)),
                **{k: tune.grid_search(list(v)) for k, v in self.grid.items()}}

    def overrides(self, point: dict[str, Any]) -> dict[str, Any]:
        """The config overrides of one grid point: its variant's, then the grid keys."""
        name = point.get(VARIANT_KEY)
        if name not in self.variants:
            raise ValueError(f"{self.source}: trial asks for variant {name!r}, which the space does not define")
        return {**self.variants[name], **{k: v for k, v in point.items() if k != VARIANT_KEY}}

    def check_against(self, base: RunConfig) -> None:
        """Every point of the design gives a valid config: checked before Ray starts."""
        flat = base.flatten()
        for where, keys in [(f"variants.{n}", list(o)) for n, o in self.variants.items()] + [("grid", list(self.grid))]:
            for k in keys:
                if k not in flat:
                    raise ConfigError(f"{self.source}: {where}: {k}: unknown config key (keys are the dotted "
                                      "fields of the config, e.g. model.sharing.strength)")
        for point in self.points():
            base.with_overrides(self.overrides(point), source=f"{self.source}: {point}")

    def grid_values(self, key: str) -> list:
        return list(self.grid.get(key, []))


def is_grid_tree(tree: Any) -> bool:
    return isinstance(tree, dict) and ("variants" in tree or "grid" in tree)


def parse_grid(tree: dict, source: str = "space") -> GridSpace:
    unknown = set(tree) - {"variants", "grid"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; a grid space has variants and grid")
    variants = tree.get("variants") or {"base": {}}
    if not isinstance(variants, dict):
        raise ConfigError(f"{source}: variants: expected a mapping of names to config overrides")
    for name, over in variants.items():
        if over is not None and not isinstance(over, dict):
            raise ConfigError(f"{source}: variants.{name}: expected a mapping of dotted keys to values")
    grid = tree.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{source}: grid: expected a mapping of dotted keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key}: expected a non-empty list of values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{source}: grid.{key}: duplicate values")
        if key == VARIANT_KEY:
            raise ConfigError(f"{source}: grid.{key}: reserved; list the variants under `variants:`")
    return GridSpace({str(n): dict(o or {}) for n, o in variants.items()}, {str(k): v for k, v in grid.items()}, source)
