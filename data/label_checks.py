"""What a store's labels make of its tasks, said before training: a task too scarce in a split to
be judged there, and pairs of tasks that are each other's complement (every window positive for
exactly one of the two: what Basset's negatives give two TFs, and what no model can share)."""
from __future__ import annotations

import numpy as np

from mtlsweep.data.basset_hdf5 import open_h5
from mtlsweep.data.store import SplitArrays, Store, read_store_meta

# Fewer positives (or negatives) than this in a split make its AUROC for the task mostly noise.
MIN_TO_JUDGE = 10
# Rows both tasks must have known for a complement to count as one.
MIN_SHARED_ROWS = 20
_SAMPLE = 20_000                   # rows that propose candidates: ~0.2 s at T = 164


def scarce_tasks(store: Store, split: str) -> list[tuple[str, int, int]]:
    """(task, positives, negatives) of each task with a class below MIN_TO_JUDGE (but not absent) in ``split``."""
    lab = store.splits[split].labels
    pos, neg = (lab == 1).sum(0), (lab == 0).sum(0)
    return [(t, int(p), int(n)) for t, p, n in zip(store.task_names, pos, neg)
            if min(p, n) < MIN_TO_JUDGE and min(p, n) > 0]


def complementary_pairs(store: Store) -> list[tuple[str, str]]:
    """Task pairs whose known labels are exact complements in every split. Candidates come from
    a bounded sample of rows (a complement holds on any subset), then each is checked on every row."""
    T = len(store.task_names)
    if T < 2:
        return []
    sample = store.splits["valid" if "valid" in store.splits else next(iter(store.splits))].labels[:_SAMPLE]
    known, pos, neg = (m.astype(np.float32) for m in (sample >= 0, sample == 1, sample == 0))
    i, j = np.triu_indices(T, k=1)
    cand = ((known.T @ known)[i, j] > 0) & ((pos.T @ pos)[i, j] == 0) & ((neg.T @ neg)[i, j] == 0)
    pairs = []
    for a, b in zip(i[cand], j[cand]):
        shared, ok = 0, True
        for sp in store.splits.values():
            ya, yb = sp.labels[:, a], sp.labels[:, b]
            both = (ya >= 0) & (yb >= 0)
            shared += int(both.sum())
            ok &= bool((ya[both] + yb[both] == 1).all())
        if ok and shared >= MIN_SHARED_ROWS:
            pairs.append((store.task_names[a], store.task_names[b]))
    return pairs


def label_warnings(store: Store, source: str) -> list[str]:
    """One line per finding, naming the data file ``source``."""
    out = []
    pairs = complementary_pairs(store)
    if pairs:
        shown = ", ".join(f"{a}/{b}" for a, b in pairs[:5]) + (", ..." if len(pairs) > 5 else "")
        out.append(f"{source}: {len(pairs)} task pair(s) are exact complements (each window positive for exactly "
                   f"one): {shown}; one model of both learns one boundary twice (negatives from other tasks' "
                   "peaks do this; see data build --negatives background)")
    for split in ("valid", "test"):
        few = scarce_tasks(store, split) if split in store.splits else []
        if few:
            shown = ", ".join(f"{t} ({p}+/{n}-)" for t, p, n in few[:5]) + (", ..." if len(few) > 5 else "")
            out.append(f"{source}: {len(few)} task(s) have fewer than {MIN_TO_JUDGE} positives or negatives in "
                       f"{split}, so their {split} AUROC is mostly noise: {shown}")
    return out


def file_label_warnings(path) -> list[str]:
    """label_warnings of a store file, reading its names and labels only (not its sequences)."""
    with open_h5(path) as f:
        meta = read_store_meta(f, str(path))
        splits = {s: SplitArrays(codes=np.empty((0, 0), np.uint8), labels=f[s]["labels"][()])
                  for s in meta["splits"]}
    labels_only = Store(meta["task_names"], meta["track_names"], meta["seq_len"], meta["fingerprint"], splits)
    return label_warnings(labels_only, str(path))
