"""Initializations (InitConfig.kind), applied to a freshly built model.

- ``random``: nothing to do; build_model already drew Kaiming-normal weights (zero biases)
  from the per-tower streams.
- ``checkpoint``: copy layers from any earlier checkpoint. Shared -> shared, shared -> every
  tower, tower -> tower matched by task name, and output units by task name. With
  ``init.layers`` null every layer that fits is copied and the rest stay random; named layers
  must fit.
- ``from_hard``: the checkpoint is a hard model (its layers shared); shared layers are copied
  as shared, every tower starts as a copy of the corresponding hard layer, and the output unit
  of each task present by name gets its row of the hard output layer. Every layer must fit.
- ``from_single``: the checkpoint has per-task towers (shared_layers 0, or a single task);
  the shared trunk and every tower start from the tower of the warm-start task ``init.task``
  (name or index in the checkpoint's tasks), as does that task's output unit when this model
  has it. The other output units stay random.
- ``motifs``: first-layer filters i < number of motifs become the log-odds of JASPAR motif i
  (sorted by matrix id), centred in the filter; motifs longer than the filter keep their most
  informative window. Extra input channels (tracks) get zero weights in those filters.

A copied layer brings all its tensors: weights, biases, BatchNorm affine and running stats.

Checkpoints are dicts saved with torch.save holding "model" (state_dict), "model_config"
(ModelConfig.model_dump()), "task_names", "in_channels" and "seq_len":
MultiTaskNet.checkpoint_payload() builds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from mtlsweep.config.run import InitConfig, ModelConfig
from mtlsweep.data.jaspar import load_motifs, log_odds

from .arch import layer_names as arch_layer_names
from .net import MultiTaskNet

CHECKPOINT_KEYS = ("model", "model_config", "task_names", "in_channels", "seq_len")
OUT = "out"


@dataclass
class Source:
    path: str
    state: dict[str, Tensor]
    cfg: ModelConfig
    tasks: list[str]
    in_channels: Optional[int]
    seq_len: Optional[int]

    @property
    def layer_names(self) -> list[str]:
        return arch_layer_names(self.cfg)

    @property
    def shared_layers(self) -> int:
        return self.cfg.n_shared

    def is_shared(self, name: str) -> bool:
        return self.layer_names.index(name) < self.shared_layers

    def tensors(self, name: str) -> dict[str, Tensor]:
        prefix = f"layers.{name}."
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}

    def describe(self) -> str:
        return (f"checkpoint {self.path} (shared_layers={self.shared_layers} of {len(self.layer_names)}, "
                f"{len(self.tasks)} task(s))")


def read_checkpoint(path: Optional[str], loader: Callable = torch.load) -> Source:
    if not path:
        raise ValueError("init.checkpoint: a checkpoint path is required for this init.kind")
    if loader is torch.load:
        if not Path(path).is_file():
            raise ValueError(f"init.checkpoint: {path}: no such file")
        try:
            # Run checkpoints also hold optimizer/schedule state with numpy objects; they are the
            # user's own files, trusted as for a resume (training.checkpoint loads them alike).
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch raises several types for foreign files
            raise ValueError(f"init.checkpoint: {path}: not a torch checkpoint ({type(exc).__name__})") from None
    else:
        payload = loader(path)
    missing = [k for k in ("model", "model_config", "task_names") if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise ValueError(f"init.checkpoint: {path}: not a model checkpoint; missing keys {missing} "
                         f"(expected a dict with {', '.join(CHECKPOINT_KEYS)})")
    try:
        cfg = ModelConfig.model_validate(payload["model_config"])
    except Exception as exc:
        raise ValueError(f"init.checkpoint: {path}: model_config is not a valid model config: "
                         f"{str(exc).splitlines()[0]}") from None
    return Source(str(path), dict(payload["model"]), cfg, [str(t) for t in payload["task_names"]],
                  payload.get("in_channels"), payload.get("seq_len"))


# ---- layer copying ------------------------------------------------------------------------
def _dst_tensors(model: MultiTaskNet, name: str) -> dict[str, Tensor]:
    module = model.layers[name]
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _misfit(name: str, src: Source, src_t: dict[str, Tensor], dst_t: dict[str, Tensor],
            src_role: str, dst_role: str) -> Optional[str]:
    if set(src_t) != set(dst_t):
        return (f"layer {name}: {src.describe()} stores {sorted(src_t)}, this model needs {sorted(dst_t)}")
    for key in ("weight", *sorted(k for k in dst_t if k != "weight")):
        a, b = tuple(src_t[key].shape[1:]), tuple(dst_t[key].shape[1:])
        if a != b:
            return (f"layer {name}: {key} has shape {list(a)} per {src_role} in {src.describe()}, "
                    f"this model needs {list(b)} per {dst_role} (different arch, width or in_channels?)")
    return None


def _stack_map(kind: str, name: str, src: Source, model: MultiTaskNet,
               warm: Optional[int]) -> Union[dict[int, int], str]:
    """dst stack -> src stack, or the reason the layer cannot be copied."""
    dst_shared = name in model.shared_layer_names
    n_dst = 1 if dst_shared else model.n_tasks
    src_shared = src.is_shared(name)
    if kind == "from_single":
        if src_shared and len(src.tasks) > 1:
            return (f"layer {name}: from_single needs per-task towers but it is shared in {src.describe()}; "
                    f"train the single-task models with shared_layers 0")
        return {j: (0 if src_shared else warm) for j in range(n_dst)}
    if src_shared:
        return {j: 0 for j in range(n_dst)}
    if kind == "from_hard":
        return (f"layer {name}: from_hard needs a hard model but the layer is a per-task tower in "
                f"{src.describe()}; use init.kind checkpoint or from_single")
    if dst_shared:
        if len(src.tasks) == 1:
            return {0: 0}
        return (f"layer {name}: per-task in {src.describe()} but shared here; "
                f"init.kind from_single picks the task to start it from")
    mapping = {j: src.tasks.index(t) for j, t in enumerate(model.tasks) if t in src.tasks}
    if not mapping:
        return f"layer {name}: none of this model's tasks has a tower in {src.describe()}"
    return mapping


def _copy_layer(kind: str, name: str, src: Source, model: MultiTaskNet, warm: Optional[int]) -> Optional[str]:
    if name not in src.layer_names:
        return f"layer {name}: not in {src.describe()}, whose layers are {src.layer_names}"
    mapping = _stack_map(kind, name, src, model, warm)
    if isinstance(mapping, str):
        return mapping
    src_t, dst_t = src.tensors(name), _dst_tensors(model, name)
    roles = ("shared layer" if src.is_shared(name) else "tower",
             "shared layer" if name in model.shared_layer_names else "tower")
    reason = _misfit(name, src, src_t, dst_t, *roles)
    if reason:
        return reason
    with torch.no_grad():
        for key, dst in dst_t.items():
            for j, i in mapping.items():
                dst[j].copy_(src_t[key][i])
    return None


def _copy_out(src: Source, model: MultiTaskNet, tasks: list[str]) -> Union[list[str], str]:
    """Output units of ``tasks`` (by name), whichever layout (hard row or tower unit) each side has."""
    w_src, b_src = src.state.get("out.weight"), src.state.get("out.bias")
    if w_src is None or b_src is None:
        return f"layer out: {src.describe()} has no output layer (out.weight, out.bias)"
    t_src = len(src.tasks)
    w_src, b_src = w_src.reshape(t_src, -1), b_src.reshape(t_src)
    w_dst = model.out.weight.view(model.n_tasks, -1)
    b_dst = model.out.bias.view(model.n_tasks)
    if w_src.shape[1] != w_dst.shape[1]:
        return (f"layer out: output units read {w_src.shape[1]} features in {src.describe()}, "
                f"this model's read {w_dst.shape[1]} (different arch, width or seq_len?)")
    copied = [t for t in tasks if t in src.tasks and t in model.tasks]
    with torch.no_grad():
        for t in copied:
            j, i = model.tasks.index(t), src.tasks.index(t)
            w_dst[j].copy_(w_src[i])
            b_dst[j].copy_(b_src[i])
    return copied


def _warm_task(task, src: Source) -> int:
    if isinstance(task, bool):
        task = int(task)
    if isinstance(task, int):
        if 0 <= task < len(src.tasks):
            return task
        raise ValueError(f"init.task: index {task} is out of range; {src.describe()} has tasks 0..{len(src.tasks) - 1}")
    if task in src.tasks:
        return src.tasks.index(task)
    if isinstance(task, str) and task.isdigit() and int(task) < len(src.tasks):
        return int(task)
    shown = ", ".join(src.tasks[:10]) + (", ..." if len(src.tasks) > 10 else "")
    raise ValueError(f"init.task: {task!r} is not a task of {src.describe()}; its tasks are {shown}")


def _selected_layers(model: MultiTaskNet, layers: Optional[list[str]]) -> list[str]:
    allowed = [*model.layer_names, OUT]
    if layers is None:
        return allowed
    for name in layers:
        if name not in allowed:
            raise ValueError(f"init.layers: unknown layer {name!r}; this model's layers are {allowed}")
    return [name for name in allowed if name in layers]


def copy_from_checkpoint(model: MultiTaskNet, kind: str, src: Source, layers: Optional[list[str]],
                         task=None) -> dict:
    if kind not in ("checkpoint", "from_hard", "from_single"):
        raise ValueError(f"init.kind: {kind!r} does not copy from a checkpoint")
    strict = layers is not None or kind != "checkpoint"
    warm = _warm_task(task, src) if kind == "from_single" else None
    copied, skipped = [], {}
    for name in _selected_layers(model, layers):
        if name == OUT:
            out_tasks = [src.tasks[warm]] if kind == "from_single" else list(model.tasks)
            result = _copy_out(src, model, out_tasks)
            if isinstance(result, str):
                reason = result
            elif result:
                copied.append(OUT)
                continue
            else:
                reason = f"layer out: no task has an output unit both here and in {src.describe()}"
                if kind != "checkpoint":  # from_hard/from_single copy units only "when the task is present"
                    skipped[OUT] = reason
                    continue
        else:
            reason = _copy_layer(kind, name, src, model, warm)
            if reason is None:
                copied.append(name)
                continue
        if strict:
            raise ValueError(f"init.kind={kind}: {reason}")
        skipped[name] = reason
    if not copied:
        raise ValueError(f"init.kind={kind}: nothing in {src.describe()} fits this model: "
                         + "; ".join(skipped.values()))
    return {"kind": kind, "checkpoint": src.path, "copied": copied, "skipped": skipped,
            "warm_task": src.tasks[warm] if warm is not None else None}


# ---- motifs -------------------------------------------------------------------------------
def _information(pfm: np.ndarray) -> np.ndarray:
    p = np.asarray(pfm, dtype=np.float64)
    return 2.0 + np.sum(p * np.log2(np.where(p > 0, p, 1.0)), axis=0)


def fit_motif(lo: np.ndarray, pfm: np.ndarray, width: int) -> np.ndarray:
    """[4, W] log-odds -> [4, width]: centred with zero (background) padding, or the most
    informative ``width`` consecutive columns when the motif is longer."""
    w_m = lo.shape[1]
    if w_m <= width:
        out = np.zeros((4, width))
        off = (width - w_m) // 2
        out[:, off:off + w_m] = lo
        return out
    ic = np.concatenate([[0.0], np.cumsum(_information(pfm))])
    start = int(np.argmax(ic[width:] - ic[:-width]))
    return lo[:, start:start + width]


def seed_motifs(model: MultiTaskNet, collection: str, tax_group: str) -> dict:
    first = model.layer_names[0]
    if model.in_channels < 4:
        raise ValueError(f"init.kind=motifs: {first} needs the 4 one-hot channels A,C,G,T as its first inputs; "
                         f"this model has in_channels={model.in_channels}")
    motifs = load_motifs(collection=collection, tax_group=tax_group)
    weight = model.layers[first].weight  # [S, filters, in_channels, width]
    n = min(len(motifs), weight.shape[1])
    with torch.no_grad():
        for i, motif in enumerate(motifs[:n]):
            filt = fit_motif(log_odds(motif.pfm), motif.pfm, weight.shape[3])
            weight[:, i, :4, :] = torch.as_tensor(filt, dtype=weight.dtype)
            weight[:, i, 4:, :] = 0.0
    return {"kind": "motifs", "layer": first, "filters": n,
            "motifs": [m.matrix_id for m in motifs[:n]]}


def apply_init(model: MultiTaskNet, init_cfg: InitConfig, checkpoint_loader: Callable = torch.load) -> dict:
    """Apply ``init_cfg`` to ``model`` in place; returns a summary (layers copied, motifs used)."""
    kind = init_cfg.kind
    if kind == "random":
        return {"kind": "random", "copied": []}
    if kind == "motifs":
        return seed_motifs(model, init_cfg.motif_collection, init_cfg.motif_tax_group)
    src = read_checkpoint(init_cfg.checkpoint, checkpoint_loader)
    return copy_from_checkpoint(model, kind, src, init_cfg.layers, init_cfg.task)
