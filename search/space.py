"""Search spaces from YAML: dotted config keys -> distributions, with conditions.

    model.sharing.coupling: {type: categorical, values: [none, l2, trace_norm]}
    model.sharing.strength: {type: loguniform, low: 1.0e-4, high: 1.0,
                             when: {model.sharing.coupling: {not: none}}}

A condition names keys sampled earlier in the file: ``{key: value}`` (equal),
``{key: {in: [...]}}``, ``{not: v}``, ``{not_in: [...]}``, ``{gt|ge|lt|le: number}``; all of
a ``when`` must hold. The space becomes a define-by-run function for Optuna, so a
dimension that does not apply is never sampled (the TPE sees no fake value for it).
Everything is checked before any cluster work: keys, ranges, conditions, and that every
extreme of every dimension yields a valid config.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from training.config import ConfigError, RunConfig

TYPES = ("float", "loguniform", "int", "categorical")
NOT_APPLICABLE = "n/a"
OPS = ("eq", "not", "in", "not_in", "gt", "ge", "lt", "le")


@dataclass
class Dimension:
    key: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    values: Optional[list] = None
    log: bool = False
    step: Optional[float] = None
    when: dict[str, dict[str, Any]] = field(default_factory=dict)

    def extremes(self) -> list:
        if self.type == "categorical":
            return list(self.values)
        return [self.low, self.high]


def _holds(op: str, arg: Any, value: Any) -> bool:
    if op == "eq":
        return value == arg
    if op == "not":
        return value != arg
    if op == "in":
        return value in arg
    if op == "not_in":
        return value not in arg
    if value is None:
        return False
    return {"gt": value > arg, "ge": value >= arg, "lt": value < arg, "le": value <= arg}[op]


@dataclass
class SearchSpace:
    dims: list[Dimension]
    source: str = "space"

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def applies(self, dim: Dimension, sampled: dict[str, Any]) -> bool:
        for key, cond in dim.when.items():
            if key not in sampled:          # the condition's own dimension did not apply
                return False
            if not all(_holds(op, arg, sampled[key]) for op, arg in cond.items()):
                return False
        return True

    def define_by_run(self, constants: Optional[dict[str, Any]] = None) -> "DefineByRun":
        return DefineByRun(self, dict(constants or {}))

    def _walk(self, forced: dict[str, Any]) -> dict[str, Any]:
        """A sample in which the forced keys take their values and every other applicable
        dimension takes its first extreme."""
        sample: dict[str, Any] = {}
        for d in self.dims:
            if d.key in forced:
                sample[d.key] = forced[d.key]
            elif self.applies(d, sample):
                sample[d.key] = d.extremes()[0]
        return sample

    def check_against(self, base: RunConfig) -> None:
        """Each dimension's extremes, with values of its conditions that let it apply, give
        a valid config: unknown keys and impossible values fail here, before Ray starts."""
        flat = base.flatten()
        for d in self.dims:
            if d.key not in flat:
                raise ConfigError(f"{self.source}: {d.key}: unknown config key (keys are the dotted fields of "
                                  "the config, e.g. model.sharing.strength)")
        by_key = {d.key: d for d in self.dims}
        for d in self.dims:
            parent_choices = []
            for k, cond in d.when.items():
                ok = [v for v in by_key[k].extremes() if all(_holds(op, a, v) for op, a in cond.items())]
                if not ok:
                    raise ConfigError(f"{self.source}: {d.key}: the condition on {k} never holds for its "
                                      f"values {by_key[k].extremes()}")
                parent_choices.append([(k, v) for v in ok])
            for combo in itertools.product(*parent_choices):
                for v in d.extremes():
                    sample = self._walk({**dict(combo), d.key: v})
                    base.with_overrides({k: list(x) if isinstance(x, tuple) else x for k, x in sample.items()},
                                        source=f"{self.source}: {d.key}={v!r}")


class DefineByRun:
    """Optuna define-by-run function over a SearchSpace; a class (not a closure) so that
    Ray Tune can pickle the searcher into its experiment checkpoint for resumption."""

    def __init__(self, space: SearchSpace, constants: dict[str, Any]):
        self.space = space
        self.constants = constants

    def __call__(self, trial) -> Optional[dict[str, Any]]:
        sampled: dict[str, Any] = {}
        for d in self.space.dims:
            if not self.space.applies(d, sampled):
                continue
            if d.type == "categorical":
                sampled[d.key] = trial.suggest_categorical(d.key, d.values)
            elif d.type == "int":
                sampled[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
            else:
                sampled[d.key] = trial.suggest_float(d.key, float(d.low), float(d.high), log=d.log, step=d.step)
        # Dimensions that do not apply are reported as NOT_APPLICABLE so that every trial has
        # every key (Tune's progress table and restored experiments look them all up).
        out = {d.key: NOT_APPLICABLE for d in self.space.dims if d.key not in sampled}
        out.update(self.constants)
        return out or None


def _parse_dimension(key: str, spec: Any, source: str, seen: list[str]) -> Dimension:
    where = f"{source}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 0, high: 1}}")
    unknown = set(spec) - {"type", "low", "high", "values", "log", "step", "when"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: type, low, high, values, log, step, when")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type: must be one of {', '.join(TYPES)}, got {kind!r}")
    dim = Dimension(key=key, type=kind, log=bool(spec.get("log", kind == "loguniform")), step=spec.get("step"))
    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: a non-empty list is required for categorical")
        dim.values = [tuple(v) if isinstance(v, list) else v for v in values]
        if len(set(map(repr, dim.values))) != len(dim.values):
            raise ConfigError(f"{where}.values: duplicate choices")
    else:
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or isinstance(low, bool):
            raise ConfigError(f"{where}: numeric low and high are required for {kind}")
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(f"{where}: impossible range low={low} high={high} (need low < high)")
        if dim.log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        if kind == "int" and (int(low) != low or int(high) != high):
            raise ConfigError(f"{where}: int bounds must be integers")
        dim.low, dim.high = low, high
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{where}.when: expected a mapping of earlier keys to conditions")
    for ckey, cond in when.items():
        if ckey not in seen:
            raise ConfigError(f"{where}.when: condition on {ckey!r}, which is not a dimension defined before it")
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        bad = set(cond) - set(OPS)
        if bad:
            raise ConfigError(f"{where}.when.{ckey}: unknown operator(s) {sorted(bad)}; allowed: {', '.join(OPS)}")
        dim.when[ckey] = {op: (tuple(a) if isinstance(a, list) and op not in ("in", "not_in") else a)
                          for op, a in cond.items()}
    return dim


def parse_space(tree: Any, source: str = "space") -> SearchSpace:
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{source}: expected a mapping of dotted config keys to distributions")
    dims: list[Dimension] = []
    for key, spec in tree.items():
        dims.append(_parse_dimension(str(key), spec, source, [d.key for d in dims]))
    return SearchSpace(dims, source)


def load_space(path: str | Path, base: Optional[RunConfig] = None) -> "SearchSpace | GridSpace":
    """A search space, or a fixed design (``variants:``/``grid:``, see search/grid.py)."""
    from search.grid import is_grid_tree, parse_grid
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such search-space file")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    space = parse_grid(tree, str(path)) if is_grid_tree(tree) else parse_space(tree, str(path))
    if base is not None:
        space.check_against(base)
    return space
