"""Inter-task affinity measured during training (Fifty et al. 2021, TAG's lookahead).

Every ``train.affinity_every`` steps, on that step's batch and before its update: for each
probed task u, one SGD step of the shared parameters on u's loss alone (learning rate
``train.affinity_lr``, default the optimizer's), then every task v's loss on the same batch
again: Z(u→v) = 1 − L_v(after) / L_v(before), averaged over probes. Z > 0: a step for u
lowers v's loss (u helps v); Z < 0: it hurts.

The probe runs the model in eval mode (no dropout, BatchNorm's running statistics), so the
before/after losses differ by the lookahead alone and training itself is untouched: a run
with probing follows exactly the same trajectory as one without. Masked labels are respected:
a task with no labelled sample in the batch is neither probed nor scored there, and the
fraction of u's labelled samples that v also labels is kept (`overlap`), since where it is
small the two losses are measured on different sequences and Z is noise.

Cost per probe: one forward, one backward per probed task (the per-task gradient machinery of
schedules/weighting.py) and one forward per probed task; ``train.affinity_max_tasks`` caps the
probed tasks per probe (they rotate, so every task is probed in turn; at T = 164 and a cap of
16 each task is probed every 11th probe).

The state (sums, counts, the rotation's cursor) goes into the run's checkpoints, so a resumed
run continues the same measurement. Grouping: tasks are clustered on the symmetrized matrix
(average linkage on max(S) − S), an approximation of TAG's exhaustive group search that
scales to 164 tasks.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score
from torch import nn

from mtlsweep import plots
from mtlsweep.schedules.weighting import per_task_gradients
from mtlsweep.training.loss import masked_bce_per_task

SPARSE_OVERLAP = 0.1   # below this shared-label fraction a pair's affinity is reported as noise
FILE = "affinity.json"
STAGES_FILE = "affinity_stages.npz"
# Per-epoch parts of the measurement are kept (for how affinity changes over training, and to
# resample it for the stability of its groups); past this many, neighbours are merged in pairs.
MAX_STAGES = 16


class TaskAffinity:
    def __init__(self, task_names: Sequence[str], every: int, max_tasks: int, lr: float, chunk: int = 32):
        if every < 1 or max_tasks < 1 or lr <= 0:
            raise ValueError(f"affinity: every={every}, max_tasks={max_tasks}, lr={lr}; all must be positive")
        self.tasks = list(task_names)
        self.every, self.max_tasks, self.lr, self.chunk = every, max_tasks, lr, chunk
        T = len(self.tasks)
        self.sum = np.zeros((T, T))
        self.count = np.zeros((T, T), dtype=np.int64)
        self.both = np.zeros((T, T))          # samples labelled for u and for v
        self.labelled = np.zeros(T)           # samples labelled for u
        self.cursor = 0
        self.probes = 0
        # (first epoch, last epoch, the sums and counts measured in them)
        self.stages: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        self.stage_width = 1
        self._at_stage = (np.zeros((T, T)), np.zeros((T, T), dtype=np.int64))

    def end_epoch(self, epoch: int) -> None:
        """Close the epoch's part of the measurement (nothing if it probed nothing). Stages span
        ``stage_width`` epochs; past MAX_STAGES, neighbours merge in pairs and the width doubles, so
        every stage spans the same number of epochs (the last one fewer)."""
        s0, c0 = self._at_stage
        if not (self.count > c0).any():
            return
        part = ((self.sum - s0).astype(np.float32), (self.count - c0).astype(np.int32))
        self._at_stage = (self.sum.copy(), self.count.copy())
        if self.stages and self.stages[-1][1] - self.stages[-1][0] + 1 < self.stage_width:
            a, _, x, c = self.stages[-1]
            self.stages[-1] = (a, epoch, x + part[0], c + part[1])
        else:
            self.stages.append((epoch, epoch, *part))
        if len(self.stages) > MAX_STAGES:
            pairs = [self.stages[i:i + 2] for i in range(0, len(self.stages), 2)]
            self.stages = [(p[0][0], p[-1][1], sum(x[2] for x in p), sum(x[3] for x in p)) for p in pairs]
            self.stage_width *= 2

    def due(self, global_step: int) -> bool:
        return global_step % self.every == 0

    def _probed(self, labelled: np.ndarray) -> list[int]:
        T = len(self.tasks)
        turn = [(self.cursor + i) % T for i in range(min(self.max_tasks, T))]
        self.cursor = (self.cursor + len(turn)) % T
        return [u for u in turn if labelled[u]]

    def probe(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
        named = dict(model.named_parameters())
        ids = {id(p) for p in model.shared_parameters()}
        shared = [(n, p) for n, p in named.items() if id(p) in ids]
        if not shared:
            raise ValueError("train.affinity_every measures affinity through shared layers; "
                             "this model has none (model.sharing.shared_layers 0)")
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                before, known = masked_bce_per_task(model(x).float(), y, mask)
            labelled = (known > 0).cpu().numpy()
            m = mask.to(torch.float64)
            self.both += (m.T @ m).cpu().numpy()
            self.labelled += m.sum(0).cpu().numpy()
            probed = self._probed(labelled)
            self.probes += 1
            if not probed:
                return
            params = [p for _, p in shared]
            g = per_task_gradients(before[probed], params, self.chunk)
            b = before.detach()
            ok = labelled & (b > 0).cpu().numpy()
            with torch.no_grad():
                for row, u in enumerate(probed):
                    moved, offset = {}, 0
                    for name, p in shared:
                        n = p.numel()
                        moved[name] = p - self.lr * g[row, offset:offset + n].view_as(p)
                        offset += n
                    after, _ = masked_bce_per_task(torch.func.functional_call(model, moved, (x,)).float(), y, mask)
                    z = (1.0 - after / b.clamp(min=1e-12)).double().cpu().numpy()
                    self.sum[u, ok] += z[ok]
                    self.count[u, ok] += 1
        finally:
            model.train(was_training)

    # ---- results -------------------------------------------------------------------------
    def matrix(self) -> np.ndarray:
        """Mean Z(u→v) [T, T], rows u (the task stepped on), columns v; NaN where never measured."""
        return mean_affinity(self.sum, self.count)

    def overlap(self) -> np.ndarray:
        """Fraction of u's labelled samples that v also labels [T, T]."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.labelled[:, None] > 0, self.both / np.maximum(self.labelled[:, None], 1), np.nan)

    def to_json(self) -> dict:
        ov = self.overlap()
        sparse = [[self.tasks[u], self.tasks[v], round(float(ov[u, v]), 4)]
                  for u in range(len(self.tasks)) for v in range(len(self.tasks))
                  if u != v and np.isfinite(ov[u, v]) and ov[u, v] < SPARSE_OVERLAP]
        return {"tasks": self.tasks, "affinity": _nan_list(self.matrix()), "count": self.count.tolist(),
                "overlap": _nan_list(ov), "sparse_pairs": sparse, "probes": self.probes, "every": self.every,
                "max_tasks": self.max_tasks, "lr": self.lr,
                "definition": "Z(u->v) = 1 - L_v(after one SGD step on u's loss) / L_v(before); rows u, columns v"}

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / FILE
        tmp = path.with_name(f".{path.name}.tmp")
        payload = self.to_json()
        payload["stages"] = [{"epochs": [a, b], "measurements": int(c.sum())} for a, b, _, c in self.stages]
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(path)
        if self.stages:
            np.savez_compressed(out_dir / STAGES_FILE, epochs=np.array([[a, b] for a, b, _, _ in self.stages]),
                                sum=np.stack([x[2] for x in self.stages]), count=np.stack([x[3] for x in self.stages]))
        Z = self.matrix()
        order = leaf_order(Z)
        names = [self.tasks[i] for i in order]
        shown = Z[np.ix_(order, order)].copy()
        np.fill_diagonal(shown, np.nan)          # self-affinity dwarfs the rest; the text keeps it
        fin = np.abs(shown[np.isfinite(shown)])
        lim = float(fin.max()) if fin.size and fin.max() > 0 else 1.0
        png = plots.heatmap(shown, names, names, out_dir / "affinity.png", cmap="RdBu_r", vmin=-lim, vmax=lim,
                            title=f"task affinity Z(u→v), clustered ({self.probes} probes)",
                            xlabel="v (loss measured)", ylabel="u (step taken)")
        return [path, png]

    # ---- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"sum": self.sum.copy(), "count": self.count.copy(), "both": self.both.copy(),
                "labelled": self.labelled.copy(), "cursor": self.cursor, "probes": self.probes,
                "stages": [(a, b, x.copy(), c.copy()) for a, b, x, c in self.stages], "stage_width": self.stage_width,
                "at_stage": (self._at_stage[0].copy(), self._at_stage[1].copy())}

    def load_state_dict(self, state: dict) -> None:
        self.sum, self.count = np.array(state["sum"]), np.array(state["count"])
        self.both, self.labelled = np.array(state["both"]), np.array(state["labelled"])
        self.cursor, self.probes = int(state["cursor"]), int(state["probes"])
        self.stages = [(int(a), int(b), np.array(x), np.array(c)) for a, b, x, c in state.get("stages", [])]
        self.stage_width = int(state.get("stage_width", 1))
        at = state.get("at_stage")
        self._at_stage = (np.array(at[0]), np.array(at[1])) if at is not None else (self.sum.copy(), self.count.copy())


def mean_affinity(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sums of Z over counts of measurements (a whole run's, or some stages'); NaN where never measured."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def within_between(Z: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """Mean symmetrized affinity of the pairs in one group, and of the pairs across groups (NaN if none)."""
    labels = np.asarray(labels)
    S = symmetric(Z)
    off = ~np.eye(len(labels), dtype=bool)
    same = (labels[:, None] == labels[None, :]) & off
    return (float(S[same].mean()) if same.any() else float("nan"),
            float(S[off & ~same].mean()) if (off & ~same).any() else float("nan"))


def _nan_list(a: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else round(float(v), 6) for v in row] for row in a]


def read_affinity(path: Path) -> tuple[list[str], np.ndarray, dict]:
    """(tasks, Z, the whole payload) from an affinity.json."""
    d = json.loads(Path(path).read_text())
    Z = np.array([[np.nan if v is None else v for v in row] for row in d["affinity"]], dtype=np.float64)
    return list(d["tasks"]), Z, d


def symmetric(Z: np.ndarray) -> np.ndarray:
    """(Z + Zᵀ)/2 where both directions were measured, the measured one elsewhere, 0 if neither."""
    with np.errstate(invalid="ignore"):
        S = np.nanmean(np.stack([Z, Z.T]), axis=0)
    return np.nan_to_num(S, nan=0.0)


def _linkage(Z: np.ndarray):
    S = symmetric(Z)
    T = S.shape[0]
    off = S[~np.eye(T, dtype=bool)]
    D = (off.max() if off.size else 0.0) - S
    np.fill_diagonal(D, 0.0)
    return linkage(squareform(np.maximum(D, 0.0), checks=False), method="average")


def cluster(Z: np.ndarray, k: int) -> np.ndarray:
    """Group label (0..k-1, numbered by first task) of each task: k groups of high mutual affinity."""
    T = Z.shape[0]
    if not 1 <= k <= T:
        raise ValueError(f"groups: k={k}; allowed 1..{T} (the number of tasks)")
    if k == T:
        return np.arange(T)
    if k == 1 or T < 2:
        return np.zeros(T, dtype=int)
    raw = fcluster(_linkage(Z), t=k, criterion="maxclust")
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(c), len(first)) for c in raw])


def leaf_order(Z: np.ndarray) -> list[int]:
    """Tasks in dendrogram order, so groups sit together in the heatmap."""
    if Z.shape[0] < 3:
        return list(range(Z.shape[0]))
    return [int(i) for i in leaves_list(_linkage(Z))]


def groups_of(labels: np.ndarray, tasks: Sequence[str]) -> list[list[str]]:
    return [[t for t, g in zip(tasks, labels) if g == k] for k in range(int(labels.max()) + 1)]


def adjusted_rand(a: Sequence[int], b: Sequence[int]) -> float:
    return float(adjusted_rand_score(list(a), list(b)))


def affinity_from_config(cfg, task_names: Sequence[str]) -> Optional[TaskAffinity]:
    t = cfg.train
    if not t.affinity_every:
        return None
    return TaskAffinity(task_names, t.affinity_every, t.affinity_max_tasks,
                        t.affinity_lr if t.affinity_lr is not None else cfg.optim.lr,
                        chunk=cfg.schedule.per_task_grad_chunk)


# ---- TAG's group selection -------------------------------------------------------------------
def total_affinity(Z: np.ndarray, labels: Sequence[int]) -> float:
    """TAG's score of a partition (Fifty et al. 2021, eq. 4): the affinity onto each task from the
    other members of its group, averaged over them, summed over tasks; a task alone adds 0.
    Pairs never measured count 0."""
    A = np.nan_to_num(np.asarray(Z, dtype=np.float64), nan=0.0)
    labels = np.asarray(labels)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    others = same.sum(0)
    onto = (A * same).sum(0)                  # column v: sum over u in v's group of Z(u -> v)
    return float(np.sum(np.where(others > 0, onto / np.maximum(others, 1), 0.0)))


def _partitions(n: int, k: int):
    """Every partition of n items into at most k blocks, as restricted growth strings."""
    labels = [0] * n

    def grow(i: int, used: int):
        if i == n:
            yield labels
            return
        for g in range(min(used + 1, k)):
            labels[i] = g
            yield from grow(i + 1, max(used, g + 1))
    yield from grow(1, 1) if n else iter([labels])


@functools.lru_cache(maxsize=16)
def _all_partitions(n: int, k: int) -> np.ndarray:
    """_partitions as one array [partitions, n], built once per (n, k): resampled matrices reuse it."""
    return np.array([list(p) for p in _partitions(n, k)], dtype=np.int64)


def _scores(Z: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """total_affinity of every row of ``parts`` at once."""
    A = np.nan_to_num(np.asarray(Z, dtype=np.float64), nan=0.0)
    same = (parts[:, :, None] == parts[:, None, :]) & ~np.eye(parts.shape[1], dtype=bool)
    onto = np.einsum("nuv,uv->nv", same, A)
    others = same.sum(1)
    return np.where(others > 0, onto / np.maximum(others, 1), 0.0).sum(1)


# Up to this many tasks every partition is scored (S(10, <=4) = 43,947); above it, local search.
EXACT_MAX_TASKS = 10


def select_groups(Z: np.ndarray, k: int, *, restarts: int = 8, seed: int = 0) -> np.ndarray:
    """TAG's group selection under a budget of ``k`` groups: the partition of the tasks into at
    most k groups with the highest ``total_affinity``. Exact (every partition scored) up to
    EXACT_MAX_TASKS tasks; above, the best of single-task moves from the average-linkage clusters
    and from ``restarts`` random partitions (a local optimum, seeded). Labels numbered by first task."""
    T = Z.shape[0]
    if not 1 <= k <= T:
        raise ValueError(f"groups: k={k}; allowed 1..{T} (the number of tasks)")
    if T <= EXACT_MAX_TASKS:
        parts = _all_partitions(T, k)
        best, best_score = 0, -np.inf
        for i, s in enumerate(_scores(Z, parts).tolist()):
            if s > best_score + 1e-12:
                best, best_score = i, s
        return _first_numbered(parts[best])
    rng = np.random.default_rng(seed)
    starts = [cluster(Z, k)] + [rng.integers(0, k, T) for _ in range(restarts)]
    best = max((_improve(Z, s.copy(), k) for s in starts), key=lambda lab: total_affinity(Z, lab))
    return _first_numbered(best)


def _improve(Z: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Move one task at a time to the group (or an empty one, within k) that raises the score most.
    Each move's change of score is computed from the affected groups' sums (O(T·k) per task, not a
    rescoring of the partition per candidate group), so a pass over 164 tasks takes milliseconds."""
    A = np.nan_to_num(np.asarray(Z, dtype=np.float64), nan=0.0)
    np.fill_diagonal(A, 0.0)
    T = len(labels)
    onto = A.T @ np.eye(k)[labels]            # onto[v, h]: affinity onto v from the members of group h
    score = total_affinity(Z, labels)
    while True:
        moved = False
        for t in range(T):
            a = labels[t]
            n = np.bincount(labels, minlength=k).astype(np.float64)
            own = onto[np.arange(T), labels]
            contrib = np.where(n[labels] > 1, own / np.maximum(n[labels] - 1, 1), 0.0)
            # Leaving a: its other members lose t's affinity and one mate; t's own share goes.
            mates = (labels == a) & (np.arange(T) != t)
            left = np.where(n[a] > 2, (own[mates] - A[t, mates]) / max(n[a] - 2, 1), 0.0).sum()
            leave = left - contrib[mates].sum() - contrib[t]
            # Joining h: its members gain t's affinity and one mate; t takes the affinity of h onto it.
            members_onto = np.bincount(labels, weights=own, minlength=k)
            members_from_t = np.bincount(labels, weights=A[t], minlength=k)
            with np.errstate(invalid="ignore", divide="ignore"):
                join = np.where(n > 0, (members_onto + members_from_t + onto[t]) / n, 0.0)
            join -= np.bincount(labels, weights=contrib, minlength=k)
            best, keep = score, a
            for g in range(k):
                if g != a and score + leave + join[g] > best + 1e-12:
                    best, keep = score + leave + join[g], g
            if keep != a:
                labels[t] = keep
                onto[:, a] -= A[t]
                onto[:, keep] += A[t]
                score, moved = total_affinity(Z, labels), True
        if not moved:
            return labels


def _first_numbered(labels: np.ndarray) -> np.ndarray:
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(c), len(first)) for c in labels])
