"""Where gradients die: per-task gradient norms at the shared layers during training.

Every ``train.grad_flow_every`` steps, on the batch just trained on, each task's loss is
differentiated with respect to the output of every shared trunk layer in ONE vectorized
backward pass over one-hot cotangents of the per-task loss vector
(``autograd.grad(is_grads_batched=True)``), in chunks of tasks that fit a memory budget.
From those gradients:

- the norm per task and layer; a task is *dead* at a layer when its norm falls below
  ``train.grad_flow_threshold`` times its own early level (the mean of its first
  ``early`` measurements); the step it died is where its final run of dead measurements began;
- the task-gradient cosine matrix per shared layer and the fraction of task pairs in conflict
  (negative cosine). Gradients larger than ``sketch_dim`` values are compared through a fixed
  count sketch (an unbiased inner-product estimate, cosine error ~ 1/sqrt(sketch_dim));
- per-task gradients with respect to the parameters of the layers in
  ``train.grad_flow_param_layers`` (shared layers only; others are skipped);
- the dead-ReLU fraction of every trunk layer (units never active over the batch).

With no shared layer (k = 0) there is no common representation; each task is then measured at
the output of *its own tower's* first layer (scope "tower"), which makes single-task models
comparable, and no cosines are reported (the towers' gradients live in different spaces).

A measurement costs about T backward passes of the layers above the lowest shared layer (one
vectorized call, not T Python-level passes): choose ``grad_flow_every`` accordingly.

The measurement leaves training untouched: it runs on the model with autograd.grad (no
``.grad`` is written, the optimizer is not involved), restores the train/eval mode and every
buffer (BatchNorm running statistics), and draws dropout masks from *copies* of the model's
per-task generators, so a run with grad flow on follows the same trajectory as with it off.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from mtlsweep import plots
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.tags import ARTIFACT_DIR
from mtlsweep.models.arch import layer_names
from mtlsweep.models.seeding import SHARED, make_generator, stable_seed, stream_name
from mtlsweep.plots import save_figure, subplots
from mtlsweep.training.callbacks import Callback
from mtlsweep.training.loss import masked_bce_per_task

MODES = ("train", "eval")


# ---- forward with every layer output in the graph -------------------------------------------
def dropout_generators(model, device: torch.device) -> dict[str, torch.Generator]:
    """Fresh generators holding the model's current dropout states: the extra forward draws
    the masks the next training step will draw, without advancing the model's own streams."""
    states = model.rng_state()
    gens = {}
    for name in [SHARED, *(stream_name(t) for t in model.tasks)]:
        g = make_generator(model.seed, name, "dropout", device)
        state = states.get(f"{device}|{name}")
        if state is not None:
            g.set_state(state)
        gens[name] = g
    return gens


# ---- one measurement ------------------------------------------------------------------------
@dataclass
class Measurement:
    scope: str                                   # "shared" or "tower" (k = 0)
    norms: dict[str, np.ndarray]                 # layer -> [T] (NaN: task has no label in the batch)
    param_norms: dict[str, np.ndarray] = field(default_factory=dict)
    cosine: dict[str, np.ndarray] = field(default_factory=dict)        # layer -> [T, T]
    param_cosine: dict[str, np.ndarray] = field(default_factory=dict)
    dead_relu: dict[str, float] = field(default_factory=dict)          # every trunk layer


class _Sketch:
    """Count sketch: a fixed random hash and sign per coordinate; inner products of sketches
    estimate inner products of the vectors without bias. A vector in several parts is sketched
    part by part (each its own hash) and the sketches summed, which is a sketch of the whole."""

    def __init__(self, dim: int, seed: int = 0):
        self.dim = dim
        self.seed = seed
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __call__(self, parts: Sequence[tuple[str, Tensor]]) -> Tensor:
        """parts: (key, [rows, D_i]) pieces of one [rows, ΣD_i] matrix -> [rows, dim], or the
        exact matrix when it is no larger than the sketch."""
        if sum(f.shape[1] for _, f in parts) <= self.dim:
            return torch.cat([f.detach().float() for _, f in parts], dim=1)
        rows, device = parts[0][1].shape[0], parts[0][1].device
        out = torch.zeros((rows, self.dim), dtype=torch.float32, device=device)
        for key, flat in parts:
            idx, sign = self._hash(key, flat.shape[1], device)
            out.index_add_(1, idx, flat.detach().float() * sign)
        return out

    def _hash(self, key: str, d_in: int, device) -> tuple[Tensor, Tensor]:
        ck = (key, d_in, str(device))
        if ck not in self._cache:
            g = torch.Generator().manual_seed(stable_seed(self.seed, key, "sketch"))
            idx = torch.randint(0, self.dim, (d_in,), generator=g)
            sign = torch.randint(0, 2, (d_in,), generator=g).float() * 2 - 1
            self._cache[ck] = (idx.to(device), sign.to(device))
        return self._cache[ck]


def cosine_matrix(vectors: Tensor) -> np.ndarray:
    """[T, D] -> [T, T] cosines; rows with zero norm give NaN."""
    v = vectors.double()
    norms = v.norm(dim=1)
    gram = v @ v.T
    den = norms[:, None] * norms[None, :]
    cos = torch.where(den > 0, gram / den.clamp(min=1e-300), torch.full_like(gram, math.nan))
    return cos.clamp(-1, 1).cpu().numpy()


def conflict_fraction(cos: np.ndarray) -> float:
    """Share of task pairs (both with a gradient) whose gradients point apart."""
    iu = np.triu_indices(cos.shape[0], k=1)
    vals = cos[iu]
    vals = vals[np.isfinite(vals)]
    return float((vals < 0).mean()) if vals.size else math.nan


def dead_relu_fraction(out) -> float:
    """Share of units (conv channels, dense units) never above zero over the batch."""
    parts = out if isinstance(out, list) else [out]
    active = [(p.detach() > 0).flatten(2).any(2).any(0) if p.dim() == 3 else (p.detach() > 0).any(0)
              for p in parts]
    a = torch.cat(active)
    return float((~a).float().mean())


def _chunk_size(n_tasks: int, per_task_values: int, budget_mb: float) -> int:
    per_task_bytes = max(1, per_task_values) * 4
    return int(max(1, min(n_tasks, budget_mb * 2**20 // per_task_bytes)))


def measure(model, x: Tensor, y: Tensor, mask: Tensor, *, param_layers: Sequence[str] = (),
            mode: str = "train", chunk: Optional[int] = None, budget_mb: float = 512.0,
            sketch: Optional[_Sketch] = None) -> Measurement:
    """Per-task gradient norms (and cosines) at the shared layers for one batch.

    ``mode`` "train" differentiates the forward the optimizer sees (batch statistics, the next
    step's dropout masks); "eval" uses running statistics and no dropout. Either way the model
    is left exactly as it was."""
    if mode not in MODES:
        raise ValueError(f"grad flow mode must be one of {MODES}, got {mode!r}")
    sketch = sketch or _Sketch(4096)
    was_training = model.training
    saved = [b.detach().clone() for b in model.buffers()]
    model.train(mode == "train")
    try:
        gens = dropout_generators(model, x.device)
        with torch.enable_grad():
            outs, logits = model.trace(x, gens)
            losses, known = masked_bce_per_task(logits.float(), y, mask)
            if model.shared_layer_names:
                m = _shared_grads(model, outs, losses, param_layers, chunk, budget_mb, sketch)
            else:
                m = _tower_grads(model, outs, losses, chunk, budget_mb)
        missing = (known == 0).cpu().numpy()
        for d in (m.norms, m.param_norms):
            for v in d.values():
                v[missing] = math.nan
        for d in (m.cosine, m.param_cosine):
            for v in d.values():
                v[missing, :] = math.nan
                v[:, missing] = math.nan
        m.dead_relu = {name: dead_relu_fraction(o) for name, o in outs.items()}
        return m
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)


def _shared_grads(model, outs, losses, param_layers, chunk, budget_mb, sketch) -> Measurement:
    names = list(model.shared_layer_names)
    targets: list[Tensor] = [outs[n] for n in names]
    owners: list[tuple[str, bool]] = [(n, False) for n in names]
    for name in param_layers:
        for p in model.layers[name].parameters():
            targets.append(p)
            owners.append((name, True))
    n = losses.shape[0]
    c = chunk or _chunk_size(n, sum(t.numel() for t in targets), budget_mb)
    eye = torch.eye(n, device=losses.device, dtype=losses.dtype)
    sq: dict[tuple[str, bool], list[Tensor]] = {k: [] for k in dict.fromkeys(owners)}   # squared norms
    sk: dict[tuple[str, bool], list[Tensor]] = {k: [] for k in dict.fromkeys(owners)}   # sketches
    for start in range(0, n, c):
        cot = eye[start:start + c]
        grads = torch.autograd.grad(losses, targets, grad_outputs=cot, is_grads_batched=True,
                                    retain_graph=True, allow_unused=True)
        rows = cot.shape[0]
        parts: dict[tuple[str, bool], list[tuple[str, Tensor]]] = {}
        for k, (g, t, owner) in enumerate(zip(grads, targets, owners)):
            g = torch.zeros((rows, *t.shape), device=t.device) if g is None else g
            parts.setdefault(owner, []).append((f"{owner[0]}:{owner[1]}:{k}", g.reshape(rows, -1)))
        for owner, ps in parts.items():
            sq[owner].append(sum(torch.linalg.vector_norm(f, dim=1).double() ** 2 for _, f in ps))
            sk[owner].append(sketch(ps))
    m = Measurement("shared", {})
    for (name, is_param), chunks in sq.items():
        norms = torch.cat(chunks).sqrt().cpu().numpy()
        cos = cosine_matrix(torch.cat(sk[(name, is_param)]))
        (m.param_norms if is_param else m.norms)[name] = norms
        (m.param_cosine if is_param else m.cosine)[name] = cos
    return m


def _tower_grads(model, outs, losses, chunk, budget_mb) -> Measurement:
    """k = 0: task t's gradient at the output of its own tower's first layer. With cross-stitch
    units every task reaches every tower: the cotangents of a chunk of tasks are then pushed back
    to those tasks' towers in one vectorized pass and the diagonal is kept."""
    first = model.layer_names[0]
    hs: list[Tensor] = outs[first]
    n = losses.shape[0]
    if model.cross_stitch is None:
        # Independent towers: task t's loss reaches only tower t, so one backward pass of the
        # summed loss hands every tower exactly its own task's gradient.
        grads = torch.autograd.grad(losses.sum(), hs, retain_graph=True, allow_unused=True)
        norms = [0.0 if g is None else float(torch.linalg.vector_norm(g).double()) for g in grads]
        return Measurement("tower", {first: np.asarray(norms, dtype=np.float64)})
    c = chunk or _chunk_size(n, hs[0].numel() * n, budget_mb)
    eye = torch.eye(n, device=losses.device, dtype=losses.dtype)
    norms = []
    for start in range(0, n, c):
        stop = min(n, start + c)
        grads = torch.autograd.grad(losses, hs[start:stop], grad_outputs=eye[start:stop],
                                    is_grads_batched=True, retain_graph=True, allow_unused=True)
        for j, g in enumerate(grads):
            norms.append(0.0 if g is None else float(torch.linalg.vector_norm(g[j]).double()))
    return Measurement("tower", {first: np.asarray(norms, dtype=np.float64)})


# ---- history over training ------------------------------------------------------------------
class GradFlowRecorder:
    """Measurements over training and what they say: dead tasks, death steps, conflicts."""

    def __init__(self, tasks: Sequence[str], threshold: float, early: int = 3):
        if early < 1:
            raise ValueError(f"early must be >= 1, got {early}")
        self.tasks = list(tasks)
        self.threshold = threshold
        self.early = early
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.scope = ""
        self.norms: dict[str, list[np.ndarray]] = {}
        self.param_norms: dict[str, list[np.ndarray]] = {}
        self.conflict: dict[str, list[float]] = {}
        self.param_conflict: dict[str, list[float]] = {}
        self.cos_sum: dict[str, np.ndarray] = {}
        self.cos_n: dict[str, np.ndarray] = {}
        self.dead_relu: dict[str, list[float]] = {}

    def add(self, step: int, epoch: int, m: Measurement) -> None:
        self.steps.append(int(step))
        self.epochs.append(int(epoch))
        self.scope = m.scope
        for name, v in m.norms.items():
            self.norms.setdefault(name, []).append(np.asarray(v, dtype=np.float64))
        for name, v in m.param_norms.items():
            self.param_norms.setdefault(name, []).append(np.asarray(v, dtype=np.float64))
        for name, cos in m.cosine.items():
            self.conflict.setdefault(name, []).append(conflict_fraction(cos))
            ok = np.isfinite(cos)
            self.cos_sum[name] = self.cos_sum.get(name, 0) + np.where(ok, cos, 0.0)
            self.cos_n[name] = self.cos_n.get(name, 0) + ok
        for name, cos in m.param_cosine.items():
            self.param_conflict.setdefault(name, []).append(conflict_fraction(cos))
        for name, v in m.dead_relu.items():
            self.dead_relu.setdefault(name, []).append(float(v))

    @property
    def layers(self) -> list[str]:
        return list(self.norms)

    def matrix(self, layer: str) -> np.ndarray:
        """[steps, T] gradient norms."""
        return np.stack(self.norms[layer]) if self.norms.get(layer) else np.zeros((0, len(self.tasks)))

    def early_level(self, layer: str) -> np.ndarray:
        """Per task: mean of its first ``early`` measured norms (NaN until it has that many)."""
        mat = self.matrix(layer)
        out = np.full(len(self.tasks), math.nan)
        for t in range(len(self.tasks)):
            vals = mat[:, t][np.isfinite(mat[:, t])][: self.early]
            if len(vals) == self.early and vals.mean() > 0:
                out[t] = vals.mean()
        return out

    def dead(self, layer: str) -> np.ndarray:
        """[steps, T] bool: below threshold × early level; a step without labels for a task
        repeats the task's previous state."""
        mat = self.matrix(layer)
        below = mat < self.threshold * self.early_level(layer)[None, :]
        # Forward fill: the row of each task's latest finite measurement, -1 before its first.
        last = np.where(np.isfinite(mat), np.arange(mat.shape[0])[:, None], -1)
        np.maximum.accumulate(last, axis=0, out=last)
        filled = below[np.clip(last, 0, None), np.arange(mat.shape[1])[None, :]]
        return np.where(last >= 0, filled, False)

    def death_steps(self, layer: str) -> list[Optional[int]]:
        """Per task, the step where its final run of dead measurements began (None: alive at
        its last measurement)."""
        dead = self.dead(layer)
        out: list[Optional[int]] = []
        for t in range(dead.shape[1]):
            col = dead[:, t]
            if not col.size or not col[-1]:
                out.append(None)
                continue
            i = len(col) - 1
            while i > 0 and col[i - 1]:
                i -= 1
            out.append(self.steps[i])
        return out

    def all_dead_steps(self, layer: str) -> list[int]:
        dead = self.dead(layer)
        return [self.steps[i] for i in np.flatnonzero(dead.all(axis=1))] if dead.size else []

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        idx = [i for i, e in enumerate(self.epochs) if e == epoch]
        if not idx:
            return {}
        out: dict[str, float] = {}
        for layer in self.layers:
            mat = self.matrix(layer)[idx]
            dead = self.dead(layer)[idx[-1]]
            out[f"grad/{layer}/norm_mean"] = _nanmean(mat)
            out[f"grad/{layer}/dead_tasks"] = float(dead.sum())
            out[f"grad/{layer}/all_dead"] = float(bool(dead.all()))
            if layer in self.conflict:
                out[f"grad/{layer}/conflict_frac"] = _nanmean(np.asarray(self.conflict[layer])[idx])
        for layer, vals in self.param_norms.items():
            out[f"grad/{layer}/param_norm_mean"] = _nanmean(np.stack(vals)[idx])
            out[f"grad/{layer}/param_conflict_frac"] = _nanmean(np.asarray(self.param_conflict[layer])[idx])
        for layer, vals in self.dead_relu.items():
            out[f"grad/{layer}/dead_relu_frac"] = _nanmean(np.asarray(vals)[idx])
        return out

    def mean_cosine(self, layer: str) -> np.ndarray:
        n = self.cos_n[layer]
        return np.where(n > 0, self.cos_sum[layer] / np.maximum(n, 1), math.nan)

    def to_json(self) -> dict:
        layers = {}
        for layer in self.layers:
            deaths = self.death_steps(layer)
            entry = {
                "norms": _clean(self.matrix(layer).tolist()),
                "early_level": _clean(self.early_level(layer).tolist()),
                "dead_at_end": [bool(v) for v in (self.dead(layer)[-1] if self.steps else [])],
                "death_step": {t: s for t, s in zip(self.tasks, deaths)},
                "all_dead_steps": self.all_dead_steps(layer),
                "dead_relu_frac": _clean(self.dead_relu.get(layer, [])),
            }
            if layer in self.conflict:
                entry["conflict_frac"] = _clean(self.conflict[layer])
                entry["mean_cosine"] = _clean(self.mean_cosine(layer).tolist())
            if layer in self.param_norms:
                entry["param_norms"] = _clean(np.stack(self.param_norms[layer]).tolist())
                entry["param_conflict_frac"] = _clean(self.param_conflict[layer])
            layers[layer] = entry
        for layer, vals in self.dead_relu.items():
            layers.setdefault(layer, {"dead_relu_frac": _clean(vals)})
        return {"tasks": self.tasks, "scope": self.scope, "threshold": self.threshold,
                "early_measurements": self.early, "steps": self.steps, "epochs": self.epochs,
                "layers": layers}


def _nanmean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def _clean(v):
    """NaN -> None, recursively: grad_flow.json is strict JSON."""
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ---- the training callback ------------------------------------------------------------------
class GradFlowCallback(Callback):
    """Measures every ``every`` steps, adds ``grad/<layer>/...`` metrics at each epoch end and
    writes grad_flow.json and plots into <run_dir>/mlflow_artifacts at the end.

    Register it BEFORE a metrics logger so that the logger sees the added keys. ``publish``
    (optional) receives the written files, e.g. an MLflow artifact uploader."""

    def __init__(self, every: int, threshold: float, param_layers: Sequence[str] = (), *, early: int = 3,
                 mode: str = "train", chunk: Optional[int] = None, budget_mb: float = 512.0,
                 sketch_dim: int = 4096, publish: Optional[Callable[[list[Path]], None]] = None):
        if every < 1:
            raise ValueError(f"grad flow: every must be >= 1, got {every}")
        if mode not in MODES:
            raise ValueError(f"grad flow mode must be one of {MODES}, got {mode!r}")
        self.every = every
        self.threshold = threshold
        self.param_layers = list(param_layers)
        self.early = early
        self.mode = mode
        self.chunk = chunk
        self.budget_mb = budget_mb
        self.sketch = _Sketch(sketch_dim)
        self.publish = publish
        self.recorder: Optional[GradFlowRecorder] = None
        self.skipped_param_layers: list[str] = []
        self._written: list[Path] = []

    def on_train_start(self, info):
        self.recorder = GradFlowRecorder(info.task_names, self.threshold, self.early)
        self._written = []

    def on_batch_end(self, trainer, epoch, step, batch):
        global_step = (epoch - 1) * trainer.steps_per_epoch + step
        if global_step % self.every:
            return
        model = trainer.model
        if self.recorder is None:
            self.recorder = GradFlowRecorder(model.tasks, self.threshold, self.early)
        shared = set(model.shared_layer_names)
        layers = [n for n in self.param_layers if n in shared]
        self.skipped_param_layers = [n for n in self.param_layers if n not in shared]
        x, y, mask = batch
        m = measure(model, x, y, mask, param_layers=layers, mode=self.mode, chunk=self.chunk,
                    budget_mb=self.budget_mb, sketch=self.sketch)
        self.recorder.add(global_step, epoch, m)

    def on_epoch_end(self, report):
        if self.recorder is not None:
            report.metrics.update(self.recorder.epoch_metrics(report.epoch))

    def on_train_end(self, result):
        if self.recorder is None or not self.recorder.steps:
            return
        self._written = self.write(Path(result.run_dir) / ARTIFACT_DIR)
        if self.publish is not None:
            self.publish(list(self._written))

    def artifact_paths(self) -> list[Path]:
        return list(self._written)

    def write(self, out_dir: Path) -> list[Path]:
        rec = self.recorder
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = rec.to_json()
        payload["mode"] = self.mode
        payload["param_layers_skipped"] = self.skipped_param_layers
        path = out_dir / "grad_flow.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(path)
        files = [path]
        for layer in rec.layers:
            files.append(norm_heatmap(rec, layer, out_dir / f"grad_flow_{layer}.png"))
            if layer in rec.conflict:
                cos = rec.mean_cosine(layer)
                np.fill_diagonal(cos, np.nan)
                off = np.abs(cos[np.isfinite(cos)])
                lim = float(max(0.05, off.max())) if off.size else 1.0
                files.append(plots.heatmap(
                    cos, rec.tasks, rec.tasks, out_dir / f"grad_cosine_{layer}.png", cmap="RdBu_r", vmin=-lim,
                    vmax=lim, title=f"mean task-gradient cosine at {layer}\n"
                                    f"mean share of task pairs in conflict: {_nanmean(rec.conflict[layer]):.0%}"))
        return files


def norm_heatmap(rec: GradFlowRecorder, layer: str, path: Path) -> Path:
    """Tasks × steps, log10 gradient norm; a red × where a task died (its final dead run began)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logn = np.log10(rec.matrix(layer).T)
    logn[~np.isfinite(logn)] = np.nan
    steps = np.asarray(rec.steps, dtype=float)
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    n_t = len(rec.tasks)
    fig, ax = subplots(figsize=(min(14.0, 4.5 + 0.06 * len(steps)), max(2.6, 0.22 * n_t + 1.4)))
    im = ax.imshow(logn, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(steps[0] - half, steps[-1] + half, n_t - 0.5, -0.5))
    for t, step in enumerate(rec.death_steps(layer)):
        if step is not None:
            ax.plot([step], [t], marker="x", color="red", ms=7, mew=2)
    for i in range(1, len(rec.epochs)):
        if rec.epochs[i] != rec.epochs[i - 1]:
            ax.axvline((steps[i - 1] + steps[i]) / 2, color="white", lw=0.6, alpha=0.7)
    if n_t <= 40:
        ax.set_yticks(range(n_t), rec.tasks, fontsize=6)
    ax.set_xlabel("step (white lines: epochs)")
    ax.set_ylabel("task")
    dead = int(rec.dead(layer)[-1].sum()) if rec.steps else 0
    ax.set_title(f"log10 gradient norm at {layer} ({rec.scope}); dead at the end: {dead}/{n_t} "
                 f"(< {rec.threshold:g} × early level)", fontsize=9)
    fig.colorbar(im, ax=ax, label="log10 norm")
    return save_figure(fig, path)


def maybe_grad_flow(cfg, publish: Optional[Callable[[list[Path]], None]] = None) -> Optional[GradFlowCallback]:
    """The callback a run config asks for (train.grad_flow_every > 0), else None."""
    t = cfg.train
    if not t.grad_flow_every:
        return None
    names = layer_names(cfg.model)
    for n in t.grad_flow_param_layers:
        if n not in names:
            raise ConfigError(f"train.grad_flow_param_layers: unknown layer {n!r}; the model's layers are {names}")
    return GradFlowCallback(t.grad_flow_every, t.grad_flow_threshold, t.grad_flow_param_layers, publish=publish)
