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
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan)

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
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)
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
                "labelled": self.labelled.copy(), "cursor": self.cursor, "probes": self.probes}

    def load_state_dict(self, state: dict) -> None:
        self.sum, self.count = np.array(state["sum"]), np.array(state["count"])
        self.both, self.labelled = np.array(state["both"]), np.array(state["labelled"])
        self.cursor, self.probes = int(state["cursor"]), int(state["probes"])


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
