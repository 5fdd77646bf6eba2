"""Task groups from a run's measured affinity (training/task_affinity.py): `mtlsweep affinity RUN`.

The run's ``mlflow_artifacts/affinity.json`` is grouped into K groups twice, by average-linkage
clustering and by TAG's selection (the partition with the most affinity onto each task); K is the truth's
group count when a synthetic truth.json is given, else the K in 2..8 with the best silhouette
on the affinity distance. Against a truth the adjusted Rand index says how well the planted
groups were recovered (1 = exactly, ~0 = chance).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.metrics import silhouette_score

from mtlsweep.config import tags as tag
from mtlsweep.data.errors import DataError
from mtlsweep.training.sharing_groups import affinity_file, truth_groups
from mtlsweep.training.task_affinity import (
    STAGES_FILE,
    adjusted_rand,
    cluster,
    groups_of,
    mean_affinity,
    read_affinity,
    select_groups,
    symmetric,
    total_affinity,
    within_between,
)


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


# Resamples of the measurement's stages (epochs) behind each stability figure.
BOOTSTRAP = 200


def _stages(path: Path) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z["epochs"], z["sum"].astype(np.float64), z["count"].astype(np.float64)


def bootstrap_groups(sums: np.ndarray, counts: np.ndarray, k: int, *, tag: bool = False, n: int = BOOTSTRAP,
                     seed: int = 0) -> list[np.ndarray]:
    """The groups of ``n`` resamples of the measurement: its stages drawn with replacement."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pick = rng.integers(0, len(sums), len(sums))
        Z = mean_affinity(sums[pick].sum(0), counts[pick].sum(0))
        out.append(select_groups(Z, k, restarts=2) if tag else cluster(Z, k))
    return out


def stability(sums: np.ndarray, counts: np.ndarray, labels: np.ndarray, k: int, *, tag: bool = False,
              n: int = BOOTSTRAP) -> tuple[np.ndarray, float]:
    """How stable ``labels`` are: the adjusted Rand index with them of the groups of ``n`` resampled
    measurements, and how often the pairs grouped in ``labels`` are grouped together there."""
    boot = bootstrap_groups(sums, counts, k, tag=tag, n=n)
    ari = np.array([adjusted_rand(labels, b) for b in boot])
    together = np.mean([(b[:, None] == b[None, :]) for b in boot], axis=0)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    return ari, float(together[same].mean()) if same.any() else float("nan")


def stability_line(stages_path: Path, labels: np.ndarray, k: int, tag: bool = False) -> str:
    st = _stages(stages_path)
    if st is None or len(st[0]) < 2:
        return "stability: unknown (needs the measurement's stages from at least 2 epochs: affinity_stages.npz)"
    epochs, sums, counts = st
    ari, kept = stability(sums, counts, labels, k, tag=tag)
    return (f"stability over {len(ari)} resamples of its {len(epochs)} stages: adjusted Rand index with these groups "
            f"{ari.mean():.3f} ± {ari.std(ddof=1):.3f}; pairs grouped here are grouped together in {kept:.0%} of them")


def stage_lines(stages_path: Path, k: int, truth_of: Optional[np.ndarray]) -> list[str]:
    """Affinity per stage of training: within − between the groups (the truth's, else its own
    clusters'), and, against a truth, the adjusted Rand index of the stage's clusters."""
    st = _stages(stages_path)
    if st is None:
        return []
    lines = ["by stage of training (epochs: mean affinity within − between groups"
             + (", adjusted Rand index of the stage's clusters against the truth)" if truth_of is not None else ")")]
    for (a, b), x, c in zip(*st):
        Z = mean_affinity(x, c)
        labels = cluster(Z, k)
        within, between = within_between(Z, truth_of if truth_of is not None else labels)
        line = f"  epochs {a}-{b}: {within - between:+.4f}"
        if truth_of is not None:
            line += f", ARI {adjusted_rand(truth_of, labels):.3f}"
        lines.append(line)
    return lines


def probe_line(run_dir: Path) -> str:
    """What the affinity was measured on: the run's validation AUROC and whether it converged. A
    model that has not learned the tasks measures noise around a weak signal."""
    path = run_dir / tag.METRICS_FILE
    if not path.is_file():
        return "the probe: no metrics.json beside the matrix; whether it learned is unknown"
    m = json.loads(path.read_text())
    cert = m.get("convergence") or {}
    state = ("converged" if cert.get("converged") else f"NOT converged ({cert.get('detail', '')})") if cert \
        else "no convergence certificate"
    return (f"the probe: validation AUROC {float(m.get('best_val_auroc') or float('nan')):.3f} at its best epoch "
            f"{m.get('best_epoch', '?')} of {m.get('epochs_run', '?')}, {state}")


def describe_groups(run_dir: Path, k: Optional[int], truth: Optional[str]) -> str:
    path = affinity_file(run_dir, "mtlsweep affinity")
    tasks, Z, payload = read_affinity(path)
    truth_of = truth_groups(truth, tasks) if truth else None
    if k is None:
        k = int(truth_of.max()) + 1 if truth_of is not None else silhouette_k(Z)
    if not 1 <= k <= len(tasks):
        raise DataError(f"--groups {k}: allowed 1..{len(tasks)} (the run's task count)")
    lines = [f"{path}: {len(tasks)} tasks, {payload['probes']} probes (every {payload['every']} steps, "
             f"{payload['max_tasks']} tasks each, lookahead lr {payload['lr']:g})", probe_line(path.parent.parent)]
    for how, labels in (("average linkage (auto:K)", cluster(Z, k)), ("TAG's selection (tag:K)", select_groups(Z, k))):
        within, between = within_between(Z, labels)
        lines.append(f"{how}: {int(labels.max()) + 1} groups, total affinity onto tasks {total_affinity(Z, labels):+.4f}; "
                     f"mean affinity within groups {within:+.4f}, between {between:+.4f}"
                     + (f"; adjusted Rand index against {truth}: {adjusted_rand(truth_of, labels):.3f}"
                        if truth_of is not None else ""))
        for i, g in enumerate(groups_of(labels, tasks)):
            lines.append(f"  group {i}: {', '.join(g)}")
        lines.append("  " + stability_line(path.parent / STAGES_FILE, labels, k, tag=how.startswith("TAG")))
    lines += stage_lines(path.parent / STAGES_FILE, k, truth_of)
    if payload["sparse_pairs"]:
        lines.append(f"{len(payload['sparse_pairs'])} task pairs share under 10% of their labelled samples; "
                     f"their affinity is noise (listed in {path.name}: sparse_pairs)")
    return "\n".join(lines)
