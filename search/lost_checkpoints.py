"""Before a killed sweep is restored: the checkpoint its experiment snapshot names for each trial,
given back where Tune has deleted it since.

Tune keeps the last ``num_to_keep`` checkpoints of a trial, deleting older ones as new ones come,
and writes its experiment snapshot at most every second. A driver killed after a trial's
checkpoints moved on, but before the next snapshot, leaves a snapshot naming a checkpoint that
is gone; Tune then fails that trial on every retry ("does not exist on storage anymore"). The
name is given a copy of the trial's newest checkpoint instead, so the trial continues from the
last epoch it reported, which is also the last its MLflow run holds.

The snapshot names a trial's checkpoints in two places: its last result, and its checkpoint
manager's kept checkpoints (pickled, hex-encoded), which Tune deletes as newer ones come, failing
with "Path not found" when one is already gone. Every name in either is filled in.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path


def restore_lost_checkpoints(experiment_dir: str) -> list[str]:
    """Fill in the checkpoints the newest snapshot of ``experiment_dir`` names that no longer
    exist (local or mounted storage; an ``s3://`` experiment is left to Tune). Returns the
    checkpoint paths filled in."""
    root = Path(experiment_dir)
    if "://" in experiment_dir or not root.is_dir():
        return []
    states = sorted(root.glob("experiment_state-*.json"))
    if not states:
        return []
    filled = []
    for trial_json, meta_json in json.loads(states[-1].read_text()).get("trial_data", []):
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        trial_dir = root / (trial.get("relative_logdir") or "")
        if trial_dir == root:
            continue
        missing = [n for n in _named(meta) if not (trial_dir / n).exists()]
        kept = sorted(trial_dir.glob("checkpoint_*"))
        if not missing or not kept:
            continue
        for name in missing:
            shutil.copytree(kept[-1], trial_dir / name)
            filled.append(str(trial_dir / name))
    return filled


CHECKPOINT = re.compile(rb"checkpoint_\d{6}")


def _named(meta: dict) -> list[str]:
    """The checkpoint directory names a trial's snapshot metadata holds, in order."""
    names = [(meta.get("last_result") or {}).get("checkpoint_dir_name")]
    manager = meta.get("checkpoint_manager")
    if isinstance(manager, dict) and isinstance(manager.get("value"), str):
        try:
            names += [m.decode() for m in CHECKPOINT.findall(bytes.fromhex(manager["value"]))]
        except ValueError:
            pass          # not hex: a format this Ray does not write; its last result is still read
    return list(dict.fromkeys(n for n in names if n))
