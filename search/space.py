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

An optional ``families:`` mapping (name -> fixed overrides) stratifies the sweep: trials go to
the families in turn, so each gets the same number of trials, and each family's dimensions are
its own Optuna parameters (``<family>::<key>``), so the TPE models every family separately.
``family`` may then be used in a ``when``::

    families:
      hard: {model.sharing.shared_layers: 5}
      soft: {model.sharing.shared_layers: 0, model.sharing.coupling: l2}
    optim.weight_decay: {type: loguniform, low: 1.0e-3, high: 0.1}
    model.sharing.strength: {type: loguniform, low: 1.0e-3, high: 1.0, when: {family: soft}}
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import model_family
from mtlsweep.config.run import RunConfig
from mtlsweep.config.yaml_file import load_yaml
from mtlsweep.search.grid import is_grid_tree, parse_grid

TYPES = ("float", "loguniform", "int", "categorical")
NOT_APPLICABLE = "n/a"
FAMILY_KEY = "family"
FAMILY_SEP = "::"        # "<family>::<key>": a family's own Optuna parameter
# The keys that decide a trial's family (model_family): enumerated to count a space's families.
FAMILY_DECIDING = ("model.family", "model.sharing.shared_layers", "model.sharing.coupling", "model.sharing.strength")
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

    def range_spec(self) -> Optional[dict]:
        """What training.certificates.edge reads to tell whether a chosen value sits at the edge of
        this dimension; None for a categorical choice (unordered: it has no edge)."""
        if self.type == "categorical":
            return None
        return {"low": self.low, "high": self.high, "log": self.log, **({"int": True} if self.type == "int" else {})}


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
    families: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return ([FAMILY_KEY] if self.families else []) + [d.key for d in self.dims]

    def family_names(self, base: RunConfig) -> list[str]:
        """The families this space's trials can belong to: the ``families:`` names, else the
        model families (single, hard, soft, ...) reached by the family-deciding dimensions."""
        if self.families:
            return list(self.families)
        deciding = [d for d in self.dims if d.key in FAMILY_DECIDING]
        found: list[str] = []
        for combo in itertools.product(*[d.extremes() for d in deciding]):
            sample = self._walk(dict(zip([d.key for d in deciding], combo)))
            sample = {k: v for k, v in sample.items() if k in FAMILY_DECIDING}
            try:
                fam = model_family(base.with_overrides(sample))
            except ConfigError:
                continue
            if fam not in found:
                found.append(fam)
        return found or [model_family(base)]

    def ranges(self) -> dict[str, dict]:
        """key -> its searched range, for every ordered dimension (the tuning certificate's input)."""
        return {d.key: d.range_spec() for d in self.dims if d.range_spec() is not None}

    def subspace(self, keep) -> "SearchSpace":
        """The dimensions whose key (and every condition's key) ``keep`` accepts; no families."""
        dims = [d for d in self.dims if keep(d.key) and all(keep(k) for k in d.when)]
        return SearchSpace(dims, self.source)

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
        sample: dict[str, Any] = {FAMILY_KEY: forced[FAMILY_KEY]} if FAMILY_KEY in forced else {}
        for d in self.dims:
            if d.key in forced:
                sample[d.key] = forced[d.key]
            elif self.applies(d, sample):
                sample[d.key] = d.extremes()[0]
        return sample

    def check_against(self, base: RunConfig) -> None:
        """Each dimension's extremes, with values of its conditions that let it apply, give
        a valid config (under each family): unknown keys and impossible values fail here,
        before Ray starts."""
        flat = base.flatten()
        for d in self.dims:
            if d.key not in flat:
                raise ConfigError(f"{self.source}: {d.key}: unknown config key (keys are the dotted fields of "
                                  "the config, e.g. model.sharing.strength)")
        for name, over in self.families.items():
            for k in over:
                if k not in flat:
                    raise ConfigError(f"{self.source}: families.{name}: {k}: unknown config key (keys are the "
                                      "dotted fields of the config, e.g. model.sharing.strength)")
            base.with_overrides(over, source=f"{self.source}: families.{name}")
        by_key = {d.key: d for d in self.dims}
        if self.families:
            by_key[FAMILY_KEY] = Dimension(FAMILY_KEY, "categorical", values=list(self.families))
        for d in self.dims:
            parent_choices = []
            for k, cond in d.when.items():
                ok = [v for v in by_key[k].extremes() if all(_holds(op, a, v) for op, a in cond.items())]
                if not ok:
                    raise ConfigError(f"{self.source}: {d.key}: the condition on {k} never holds for its "
                                      f"values {by_key[k].extremes()}")
                parent_choices.append([(k, v) for v in ok])
            for combo in itertools.product(*parent_choices):
                families = [dict(combo)[FAMILY_KEY]] if FAMILY_KEY in dict(combo) else (list(self.families) or [None])
                for fam in families:
                    for v in d.extremes():
                        forced = {**dict(combo), d.key: v, **({FAMILY_KEY: fam} if fam else {})}
                        sample = self._walk(forced)
                        over = dict(self.families.get(fam, {})) if fam else {}
                        over.update({k: list(x) if isinstance(x, tuple) else x for k, x in sample.items()
                                     if k != FAMILY_KEY})
                        where = f"{self.source}: " + (f"family {fam}: " if fam else "") + f"{d.key}={v!r}"
                        base.with_overrides(over, source=where)


class DefineByRun:
    """Optuna define-by-run function over a SearchSpace; a class (not a closure) so that
    Ray Tune can pickle the searcher into its experiment checkpoint for resumption."""

    def __init__(self, space: SearchSpace, constants: dict[str, Any]):
        self.space = space
        self.constants = constants

    def __call__(self, trial) -> Optional[dict[str, Any]]:
        sampled: dict[str, Any] = {}
        prefix = ""
        if self.space.families:
            # Families in turn: trial k goes to family k mod F, so each gets its share exactly.
            names = list(self.space.families)
            sampled[FAMILY_KEY] = names[trial.number % len(names)]
            prefix = sampled[FAMILY_KEY] + FAMILY_SEP
        for d in self.space.dims:
            if not self.space.applies(d, sampled):
                continue
            name = prefix + d.key
            if d.type == "categorical":
                sampled[d.key] = trial.suggest_categorical(name, d.values)
            elif d.type == "int":
                sampled[d.key] = trial.suggest_int(name, int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
            else:
                sampled[d.key] = trial.suggest_float(name, float(d.low), float(d.high), log=d.log, step=d.step)
        # Dimensions that do not apply are reported as NOT_APPLICABLE so that every trial has
        # every key (Tune's progress table and restored experiments look them all up).
        out = {d.key: NOT_APPLICABLE for d in self.space.dims if d.key not in sampled}
        if prefix:
            out.update(sampled)        # the config keys themselves, beside the per-family parameters
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
    tree = dict(tree)
    families = tree.pop("families", None) or {}
    if not isinstance(families, dict) or any(not isinstance(v, (dict, type(None))) for v in families.values()):
        raise ConfigError(f"{source}: families: expected a mapping of family names to config overrides")
    for name in families:
        if FAMILY_SEP in str(name) or not str(name):
            raise ConfigError(f"{source}: families: {name!r}: a family name must be non-empty and have no {FAMILY_SEP!r}")
    if not tree:
        raise ConfigError(f"{source}: expected dotted config keys with distributions beside families")
    dims: list[Dimension] = []
    seen = [FAMILY_KEY] if families else []
    for key, spec in tree.items():
        dims.append(_parse_dimension(str(key), spec, source, seen + [d.key for d in dims]))
    return SearchSpace(dims, source, {str(k): dict(v or {}) for k, v in families.items()})


def load_space(path: str | Path, base: Optional[RunConfig] = None) -> "SearchSpace | GridSpace":
    """A search space, or a fixed design (``variants:``/``grid:``, see search/grid.py)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such search-space file")
    tree = load_yaml(path.read_text(), str(path))
    space = parse_grid(tree, str(path)) if is_grid_tree(tree) else parse_space(tree, str(path))
    if base is not None:
        space.check_against(base)
    return space
