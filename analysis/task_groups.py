"""Task groups from a run's measured affinity (training/task_affinity.py): `mtlsweep affinity RUN`.

The run's ``mlflow_artifacts/affinity.json`` is clustered into K groups; K is the truth's
group count when a synthetic truth.json is given, else the K in 2..8 with the best silhouette
on the affinity distance. Against a truth the adjusted Rand index says how well the planted
groups were recovered (1 = exactly, ~0 = chance).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.metrics import silhouette_score

from mtlsweep.data.errors import DataError
from mtlsweep.training.sharing_groups import affinity_file, truth_groups
from mtlsweep.training.task_affinity import adjusted_rand, cluster, groups_of, read_affinity, symmetric


def silhouette_k(Z: np.ndarray, k_max: int = 8) -> int:
    S = symmetric(Z)
    T = S.shape[0]
    if T < 4:
        return 1
    D = np.maximum(S[~np.eye(T, dtype=bool)].max() - S, 0.0)
    np.fill_diagonal(D, 0.0)
    best, best_k = -np.inf, 2
    for k in range(2, min(k_max, T - 1) + 1):
        labels = cluster(Z, k)
        if len(set(labels.tolist())) < 2:
            continue
        score = silhouette_score(D, labels, metric="precomputed")
        if score > best:
            best, best_k = score, k
    return best_k


def describe_groups(run_dir: Path, k: Optional[int], truth: Optional[str]) -> str:
    path = affinity_file(run_dir, "mtlsweep affinity")
    tasks, Z, payload = read_affinity(path)
    truth_of = truth_groups(truth, tasks) if truth else None
    if k is None:
        k = int(truth_of.max()) + 1 if truth_of is not None else silhouette_k(Z)
    if not 1 <= k <= len(tasks):
        raise DataError(f"--groups {k}: allowed 1..{len(tasks)} (the run's task count)")
    labels = cluster(Z, k)
    S = symmetric(Z)
    off = ~np.eye(len(tasks), dtype=bool)
    same = (labels[:, None] == labels[None, :]) & off
    lines = [f"{path}: {len(tasks)} tasks, {payload['probes']} probes (every {payload['every']} steps, "
             f"{payload['max_tasks']} tasks each, lookahead lr {payload['lr']:g})",
             f"mean affinity within groups {S[same].mean() if same.any() else float('nan'):+.4f}, "
             f"between {S[off & ~same].mean() if (off & ~same).any() else float('nan'):+.4f}"]
    for i, g in enumerate(groups_of(labels, tasks)):
        lines.append(f"  group {i}: {', '.join(g)}")
    if truth_of is not None:
        lines.append(f"adjusted Rand index against {truth}: {adjusted_rand(truth_of, labels):.3f}")
    if payload["sparse_pairs"]:
        lines.append(f"{len(payload['sparse_pairs'])} task pairs share under 10% of their labelled samples; "
                     f"their affinity is noise (listed in {path.name}: sparse_pairs)")
    return "\n".join(lines)
