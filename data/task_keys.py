"""Task names as MLflow metric-key segments (`val/auroc/<key>`), reversibly: the data layer names tasks for every tracker.

MLflow 3.17 (mlflow/utils/validation.py) accepts keys matching `^[/\\w.\\- :]*$` (no colon on
Windows) whose `posixpath.normpath` is the key itself, of at most 250 characters. A key
segment here keeps ASCII letters, digits, `_`, `-`, `.` and spaces; everything else (slashes,
which would nest keys, colons, which Windows servers refuse, non-ASCII letters) becomes `_`.
The caller writes the returned mapping as the artifact `task_names.json`, which is how a key
is turned back into the task's real name.
"""

from __future__ import annotations

import re

from mtlsweep.data.errors import DataError

# Room left for the longest prefix in use ("val/delta_auroc/" is 16) under MLflow's 250 limit.
MAX_KEY_LEN = 200
_BAD = re.compile(r"[^A-Za-z0-9_.\- ]")


def _clean(name: str) -> str:
    key = _BAD.sub("_", name).strip()
    if not key or set(key) == {"."}:
        # Empty, ".", ".." would vanish or climb when MLflow normalises the key as a path.
        key = "_" + key
    return key[:MAX_KEY_LEN]


def is_valid_key(name: str) -> bool:
    return isinstance(name, str) and _clean(name) == name


def sanitize_names(names) -> dict[str, str]:
    """Map each task name to a unique metric-key segment; valid names map to themselves.

    Uniqueness is case-insensitive because some SQL backends (MySQL's default collation)
    compare metric keys that way. Collisions get `_2`, `_3`, ... in input order.
    """
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"task names: {dup!r} appears more than once; names must be unique")
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    # Names that are already valid keys keep them, so renamed tasks cannot steal them.
    for n in names:
        if is_valid_key(n) and n.lower() not in taken:
            mapping[n] = n
            taken.add(n.lower())
    for n in names:
        if n in mapping:
            continue
        base = _clean(n)
        key, i = base, 2
        while key.lower() in taken:
            suffix = f"_{i}"
            key = base[: MAX_KEY_LEN - len(suffix)] + suffix
            i += 1
        mapping[n] = key
        taken.add(key.lower())
    return {n: mapping[n] for n in names}


def invert(mapping: dict[str, str]) -> dict[str, str]:
    """Key segment -> original task name (the reading side of task_names.json)."""
    return {v: k for k, v in mapping.items()}
