"""Per-tower random streams.

Every random draw of a tower (its initial weights, its dropout masks) comes from a generator
seeded only by (seed, task name). A tower therefore sees the same numbers whether it is built
alone (a single-task model) or next to other towers, in any task order: that is what makes
``shared_layers = 0, strength = 0`` exactly T single-task models. The shared trunk has its own
stream, and so has the common tower draw (``tower_init: common``), which a single-task model
makes just the same. Seeds come from SHA-256, not Python's ``hash``, which is salted per process.
"""
from __future__ import annotations

import hashlib

import torch

SHARED = "shared"
TOWERS = "towers"   # the one stream every tower's layers draw from with tower_init: common


def stream_name(task: str | None) -> str:
    """The stream of a task's tower, or of the shared trunk when ``task`` is None.

    Tasks are prefixed so that a task called "shared" does not reuse the trunk's stream.
    """
    return SHARED if task is None else f"task:{task}"


def stable_seed(seed: int, name: str, purpose: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, name: str, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_seed(seed, name, purpose))
    return gen
