"""Fixed-design sweeps: named variants crossed with a grid, every point run once.

    variants:                       # name -> config overrides applied on top of the base
      hard: {}
      soft_l2_0.1: {model.sharing.shared_layers: 0, model.sharing.coupling: l2, model.sharing.strength: 0.1}
    grid:                           # dotted key -> values, crossed with the variants
      train.seed: [0, 1, 2]
    tune:                           # tried for every variant and for the baseline alike
      optim.weight_decay: [0.01, 0.03]

A study compares families at the same budget, so nothing is sampled or pruned adaptively:
the sweep runs Tune's grid search over (variant x grid x tune) through the same trainable,
tracking and resumption as an Optuna sweep, and `mtlsweep compare --group-by variant`
aggregates it. ``tune:`` keys are the tuning every arm gets alike: the single-task baseline
is trained at each of their values and the best on validation kept (before the variants run,
which are compared with it), and for every variant `compare --group-by` keeps, per grid
point, the value that is best on validation. Test scores are never used to choose.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import is_tuned_alike
from mtlsweep.config.run import RunConfig

VARIANT_KEY = "variant"


@dataclass
class GridSpace:
    variants: dict[str, dict[str, Any]]
    grid: dict[str, list]
    source: str = "space"
    tune: dict[str, list] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [VARIANT_KEY, *self.grid, *self.tune]

    @property
    def axes(self) -> dict[str, list]:
        return {**self.grid, **self.tune}

    @property
    def size(self) -> int:
        n = len(self.variants)
        for values in self.axes.values():
            n *= len(values)
        return n

    def points(self, with_tune: bool = True) -> list[dict[str, Any]]:
        axes = self.axes if with_tune else self.grid
        names, keys = list(self.variants), list(axes)
        return [{VARIANT_KEY: name, **dict(zip(keys, combo))}
                for name in names for combo in itertools.product(*axes.values())]

    def ranges(self) -> dict[str, dict]:
        """The tune: lists, the ranges the certificate judges a chosen value against."""
        return {k: {"values": list(v)} for k, v in self.tune.items()}

    def tune_points(self) -> list[dict[str, Any]]:
        """Every combination of the tune: values ([{}] when there are none)."""
        return [dict(zip(self.tune, combo)) for combo in itertools.product(*self.tune.values())]

    def param_space(self) -> dict[str, Any]:
        return {VARIANT_KEY: tune.grid_search(list(self.variants)),
                **{k: tune.grid_search(list(v)) for k, v in self.axes.items()}}

    def overrides(self, point: dict[str, Any]) -> dict[str, Any]:
        """The config overrides of one grid point: its variant's, then the grid keys."""
        name = point.get(VARIANT_KEY)
        if name not in self.variants:
            raise ValueError(f"{self.source}: trial asks for variant {name!r}, which the space does not define")
        return {**self.variants[name], **{k: v for k, v in point.items() if k != VARIANT_KEY}}

    def data_paths(self) -> list[str]:
        """Every data.path the design names (variants and axes), in order."""
        out = [o["data.path"] for o in self.variants.values() if "data.path" in o]
        return out + list(self.axes.get("data.path", []))

    def resolve_paths(self) -> None:
        """Make the design's data paths absolute (trials chdir into their own directories)."""
        for o in self.variants.values():
            if "data.path" in o:
                o["data.path"] = str(Path(o["data.path"]).resolve())
        if "data.path" in self.grid:
            self.grid["data.path"] = [str(Path(v).resolve()) for v in self.grid["data.path"]]

    def check_against(self, base: RunConfig) -> None:
        """Every point of the design gives a valid config: checked before Ray starts."""
        flat = base.flatten()
        for where, keys in [(f"variants.{n}", list(o)) for n, o in self.variants.items()] + \
                [("grid", list(self.grid)), ("tune", list(self.tune))]:
            for k in keys:
                if k not in flat:
                    raise ConfigError(f"{self.source}: {where}: {k}: unknown config key (keys are the dotted "
                                      "fields of the config, e.g. model.sharing.strength)")
        for point in self.points():
            base.with_overrides(self.overrides(point), source=f"{self.source}: {point}")



def is_grid_tree(tree: Any) -> bool:
    return isinstance(tree, dict) and ("variants" in tree or "grid" in tree or "tune" in tree)


def _axes(tree: dict, name: str, source: str) -> dict[str, list]:
    axes = tree.get(name) or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{source}: {name}: expected a mapping of dotted keys to lists of values")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {name}.{key}: expected a non-empty list of values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{source}: {name}.{key}: duplicate values")
        if key == VARIANT_KEY:
            raise ConfigError(f"{source}: {name}.{key}: reserved; list the variants under `variants:`")
    return {str(k): v for k, v in axes.items()}


def parse_grid(tree: dict, source: str = "space") -> GridSpace:
    unknown = set(tree) - {"variants", "grid", "tune"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; a grid space has variants, "
                          "grid and tune")
    variants = tree.get("variants") or {"base": {}}
    if not isinstance(variants, dict):
        raise ConfigError(f"{source}: variants: expected a mapping of names to config overrides")
    for name, over in variants.items():
        if over is not None and not isinstance(over, dict):
            raise ConfigError(f"{source}: variants.{name}: expected a mapping of dotted keys to values")
    grid, tune = _axes(tree, "grid", source), _axes(tree, "tune", source)
    both = sorted(set(grid) & set(tune))
    if both:
        raise ConfigError(f"{source}: {both[0]}: in both grid and tune; a key is either crossed or tuned")
    for key in tune:
        if not is_tuned_alike(key):
            raise ConfigError(f"{source}: tune.{key}: only optimizer, regularization and architecture keys are "
                              "tuned (optim.*, model.arch.*, data.batch_size); cross it under grid: instead")
    return GridSpace({str(n): dict(o or {}) for n, o in variants.items()}, grid, source, tune)
