"""YAML as users write it: a key given twice in one mapping (a second `train:` section) is refused,
naming the key and both lines, where PyYAML would let the later one silently replace the earlier."""
from __future__ import annotations

from typing import Any

import yaml

from mtlsweep.config.errors import ConfigError


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first:
                raise _DuplicateKey(problem=f"{key!r} at lines {first[key]} and {line}",
                                    problem_mark=key_node.start_mark)
            first[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` read from ``source``; a duplicate key or a syntax error is one ConfigError line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: key {exc.problem} (a key may appear once per section; merge them)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
