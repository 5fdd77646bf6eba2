"""MultiTaskNet: one model family for the whole sharing continuum.

A trunk of L = n_conv + n_dense layers serves T tasks. The first k = shared_layers layers are
shared; the others are per-task towers, each ending in its own output unit. k = L is the hard
multi-task model (Basset: the trunk then Linear(dense[-1], T)); k = 0 is T independent networks,
and with no coupling it is exactly T single-task models (per-tower BatchNorm, dropout masks
from per-tower generators, per-unit max-norm). With task groups (``sharing.groups``) the m =
``sharing.group_layers`` layers after the shared ones are shared within each group
(Vandenhende et al. 2020's branched trunk); m = 0 is the model above, unchanged.

state_dict layout (the same for both backends, so checkpoints move between CPU and GPU)::

    layers.<name>.weight                      conv [S, out, in, width]; dense [S, out, in]
    layers.<name>.bias                        [S, out]
    layers.<name>.bn.weight / .bn.bias        [S, out]   (BatchNorm affine)
    layers.<name>.bn.running_mean / _var      [S, out]
    out.weight                                [S_out, U, D]
    out.bias                                  [S_out, U]
    cross_stitch.alpha.<name>                 [T, T]     (coupling cross_stitch; tower layers)

<name> runs over ``layer_names`` ("conv1", ..., "fc1", ...). S = 1 for a shared layer,
S = G for a group layer (stack g serving the tasks of group g, ``groups``) and S = T for a
tower layer, stack s belonging to ``tasks[s]``. The output is S_out = 1, U = T when
all layers are shared, else S_out = T, U = 1; either way the unit of task t is weight row t of
``out.weight.reshape(T, D)``. Dense layers read conv output flattened channel-major
([C, L] -> C*L), as ``x.flatten(1)`` does. Copying a layer between models therefore means
copying these tensors stack by stack (see models.initialization).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mtlsweep.config.registry import COUPLINGS
from mtlsweep.config.run import ModelConfig

from . import flops as _flops
from .arch import plan
from .capacity import match_towers
from .couplings import check_coupling, nuclear, spread, unfold
from .layers import StackedConv, StackedDense, StackedHead
from .seeding import SHARED, TOWERS, make_generator, stable_seed, stream_name

BACKENDS = ("auto", "loop", "batched")


def auto_backend(device: torch.device) -> str:
    """Loop on CPU, batched on CUDA. bench/towers.py on this 2-core CPU (32-filter towers,
    L = 200, batch 64): the loop backend takes 0.83-0.93x the time of T separately trained
    models at T = 4, 16, 64 (1 or 2 threads); batched is 0.73-0.93x at T <= 16 but 1.0-1.1x at
    T = 64, where its [B, T*C, L] activations leave the cache. Grouped convolutions and bmm
    are the fast path on GPUs."""
    return "batched" if device.type == "cuda" else "loop"


class MultiTaskNet(nn.Module):
    def __init__(self, cfg: ModelConfig, task_names: Sequence[str], in_channels: int, seq_len: int,
                 seed: int, task_channels: int = 0, groups: Optional[Sequence[int]] = None):
        """`task_channels`: 0, or n_tasks when the last n_tasks input channels are per-task tracks
        (channel in_channels - n_tasks + t belongs to task t): tower t then sees the other
        channels and its own track only, as one "own track" channel in the same slot of every
        tower. That needs a first layer per task (shared_layers 0).
        `groups`: the group index (0..G-1) of each task, for sharing.group_layers."""
        super().__init__()
        self.cfg = cfg
        self.tasks: list[str] = list(task_names)
        self.n_tasks = len(self.tasks)
        self.in_channels = in_channels
        self.seq_len = seq_len
        self.seed = seed
        if task_channels not in (0, self.n_tasks):
            raise ValueError(f"task_channels is {task_channels}; allowed: 0 or one per task ({self.n_tasks})")
        if task_channels and cfg.n_shared > 0:
            raise ValueError(f"data.task_tracks gives each task its own track, but model.sharing.shared_layers="
                             f"{cfg.n_shared} shares the first layer, which would see every task's "
                             f"track; per-task tracks need shared_layers 0 (towers or a soft coupling), or give "
                             f"the tracks to all tasks with data.tracks")
        self.task_channels = task_channels
        self.common_channels = in_channels - task_channels
        self.groups = self._check_groups(cfg, groups)
        if task_channels and self.groups is not None:
            raise ValueError("data.task_tracks gives each task its own track, which a group layer would mix; "
                             "use per-task tracks without model.sharing.group_layers")
        n_groups = max(self.groups) + 1 if self.groups is not None else 0
        layer_in = self.common_channels + (1 if task_channels else 0)
        self.cfg = cfg = match_towers(cfg, self.n_tasks, layer_in, seq_len, n_groups)
        self.specs, self.head_spec = plan(cfg, self.n_tasks, layer_in, seq_len, n_groups)
        self.layer_names: list[str] = [s.name for s in self.specs]
        self.shared_layers: int = cfg.n_shared
        m = cfg.n_group if self.groups is not None else 0
        self.shared_layer_names = self.layer_names[:self.shared_layers]
        self.group_layer_names = self.layer_names[self.shared_layers:self.shared_layers + m]
        self.tower_layer_names = self.layer_names[self.shared_layers + m:]
        self._group_streams = [f"group:{g}" for g in range(n_groups)]
        # Which group's output each task reads; a buffer, so it moves with the model (not in state_dict).
        self.register_buffer("_group_index", torch.tensor(self.groups or [], dtype=torch.long), persistent=False)
        self.hard = not self.tower_layer_names and not self.group_layer_names
        self.backend = cfg.backend
        self.coupling = cfg.sharing.coupling
        self.strength = cfg.sharing.strength
        check_coupling(self.coupling, self.n_tasks, self.shared_layers, len(self.specs))

        self.layers = nn.ModuleDict(
            {s.name: (StackedConv(s) if s.kind == "conv" else StackedDense(s)) for s in self.specs})
        self.out = StackedHead(self.head_spec)
        coupling = COUPLINGS[self.coupling]
        # A mixing coupling is a module between tower layers; a penalty coupling a term of the loss.
        self.cross_stitch = (coupling.load().from_config(cfg.sharing, self.tower_layer_names, self.n_tasks)
                             if coupling.kind == "mixing" else None)
        self._penalty = coupling.load() if coupling.kind == "penalty" else None
        self._tower_streams = [stream_name(t) for t in self.tasks]
        # Seeds hashed once here, so that forward (and torch.compile) never runs hashlib.
        self._dropout_seeds = {name: stable_seed(seed, name, "dropout")
                               for name in [SHARED, *self._group_streams, *self._tower_streams]}
        self._dropout_gens: dict[torch.device, dict[str, torch.Generator]] = {}
        self._init_random()

    def _check_groups(self, cfg: ModelConfig, groups: Optional[Sequence[int]]) -> Optional[list[int]]:
        if not cfg.n_group:
            return None
        if groups is None:
            raise ValueError("model.sharing.group_layers needs the group of every task (model.sharing.groups)")
        g = [int(v) for v in groups]
        if len(g) != self.n_tasks or sorted(set(g)) != list(range(max(g) + 1)):
            raise ValueError(f"groups: one group index per task ({self.n_tasks}), numbered 0..G-1 without gaps; "
                             f"got {g}")
        return g

    # ---- random streams -----------------------------------------------------------------
    def _stack_streams(self, shared: bool, grouped: bool = False) -> list[str]:
        if grouped:
            return self._group_streams
        return [SHARED] if shared else self._tower_streams

    def _init_random(self) -> None:
        """Kaiming normal weights, zero biases, layer by layer. Shared layers draw from the
        shared stream; tower layers from the common tower stream (``tower_init: common``: every
        tower the same draw) or from their task's stream (``independent``); output units always
        from their task's stream. Either way a tower's draws do not depend on the other tasks."""
        gens = {name: make_generator(self.seed, name, "init") for name in [SHARED, TOWERS, *self._tower_streams]}
        common = self.cfg.sharing.tower_init == "common"
        gens.update({name: make_generator(self.seed, name, "init") for name in self._group_streams})
        for spec in self.specs:
            layer = self.layers[spec.name]
            if spec.shared or spec.grouped or not common:
                layer.reset([gens[n] for n in self._stack_streams(spec.shared, spec.grouped)])
                continue
            clones = []
            for _ in range(spec.stacks):
                g = torch.Generator()
                g.set_state(gens[TOWERS].get_state())
                clones.append(g)
            layer.reset(clones)
            gens[TOWERS].set_state(clones[0].get_state())
        self.out.reset([gens[n] for n in self._stack_streams(self.hard)])

    def _generators(self, device: torch.device) -> dict[str, torch.Generator]:
        gens = self._dropout_gens.get(device)
        if gens is None:
            gens = {}
            for name, seed in self._dropout_seeds.items():
                gens[name] = torch.Generator(device=device)
                gens[name].manual_seed(seed)
            self._dropout_gens[device] = gens
        return gens

    def rng_state(self) -> dict[str, Tensor]:
        """Dropout generator states ("<device>|<stream>" -> state) for exact resumes."""
        if not self._dropout_gens:
            self._generators(self.out.weight.device)
        return {f"{dev}|{name}": g.get_state()
                for dev, gens in self._dropout_gens.items() for name, g in gens.items()}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        for key, value in state.items():
            dev, name = key.split("|", 1)
            gens = self._generators(torch.device(dev))
            if name not in gens:
                raise ValueError(f"rng state: unknown stream {name!r}; this model's streams are {sorted(gens)}")
            gens[name].set_state(value)

    # ---- forward ------------------------------------------------------------------------
    def resolved_backend(self, device: torch.device) -> str:
        return auto_backend(device) if self.backend == "auto" else self.backend

    def shared_representation(self, x: Tensor) -> Tensor:
        """Output of the last shared layer (the input itself when k = 0)."""
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"model input must be [batch, {self.in_channels}, length], got {list(x.shape)}")
        gens = self._generators(x.device)
        h = x
        for name in self.shared_layer_names:
            h = self.layers[name].forward_batched(h, True, [gens[SHARED]])
        return h

    def _tower_inputs(self, x: Tensor) -> list[Tensor]:
        """Per-task inputs: the common channels and the task's own track (task_channels)."""
        c = self.common_channels
        return [torch.cat([x[:, :c], x[:, c + t:c + t + 1]], dim=1) for t in range(self.n_tasks)]

    def _group_loop(self, h: Tensor, gens: dict) -> list[Tensor]:
        """Through the group layers (loop form); each task then gets its group's output."""
        hs = h
        for name in self.group_layer_names:
            hs = self.layers[name].forward_loop(hs, [gens[n] for n in self._group_streams])
        return [hs[g] for g in self.groups]

    def _group_batched(self, h: Tensor, gens: dict) -> Tensor:
        shared_in = True
        for name in self.group_layer_names:
            h = self.layers[name].forward_batched(h, shared_in, [gens[n] for n in self._group_streams])
            shared_in = False
        G = len(self._group_streams)
        return h.reshape(h.shape[0], G, -1, *h.shape[2:])[:, self._group_index].reshape(h.shape[0], -1, *h.shape[2:])

    def from_shared(self, h: Tensor) -> Tensor:
        """Logits [B, T] from the shared representation."""
        if self.hard:
            return self.out.forward_batched(h, True)
        gens = self._generators(h.device)
        tower_gens = [gens[n] for n in self._tower_streams]
        cs = self.cross_stitch
        if self.resolved_backend(h.device) == "loop":
            hs = self._tower_inputs(h) if self.task_channels else h
            if self.group_layer_names:
                hs = self._group_loop(h, gens)
            for name in self.tower_layer_names:
                hs = self.layers[name].forward_loop(hs, tower_gens)
                if cs is not None:
                    hs = cs.mix_loop(name, hs)
            return self.out.forward_loop(hs)
        shared_in = True
        if self.task_channels:
            h, shared_in = torch.cat(self._tower_inputs(h), dim=1), False
        if self.group_layer_names:
            h, shared_in = self._group_batched(h, gens), False
        for name in self.tower_layer_names:
            h = self.layers[name].forward_batched(h, shared_in, tower_gens)
            shared_in = False
            if cs is not None:
                h = cs.mix_batched(name, h)
        return self.out.forward_batched(h, False)

    def forward(self, x: Tensor, return_shared: bool = False):
        """Logits [B, T] (the loss applies the sigmoid). With ``return_shared`` also the shared
        representation, still in the graph, for per-task gradients with respect to it."""
        rep = self.shared_representation(x)
        logits = self.from_shared(rep)
        return (logits, rep) if return_shared else logits

    def trace(self, x: Tensor, generators: Optional[dict[str, torch.Generator]] = None):
        """(outputs, logits) of the loop-form forward, with every layer's output kept in the graph:
        ``outputs[name]`` is a shared layer's output tensor or, for a group (tower) layer, the list
        of its G per-group (T per-task) outputs (the logits depend on these very tensors, so
        gradients can be taken with respect to them). ``generators`` (stream name -> generator) draws the dropout masks
        instead of the model's own streams, so an extra forward need not advance them; the
        values are those of ``forward`` (to float tolerance on the batched backend)."""
        gens = generators if generators is not None else self._generators(x.device)
        outs: dict[str, object] = {}
        h = x
        for name in self.shared_layer_names:
            h = outs[name] = self.layers[name].forward_batched(h, True, [gens[SHARED]])
        if self.hard:
            return outs, self.out.forward_batched(h, True)
        tower_gens = [gens[n] for n in self._tower_streams]
        hs = self._tower_inputs(h) if self.task_channels else h
        for name in self.group_layer_names:
            hs = outs[name] = self.layers[name].forward_loop(hs, [gens[n] for n in self._group_streams])
        if self.group_layer_names:
            hs = [hs[g] for g in self.groups]
        for name in self.tower_layer_names:
            hs = self.layers[name].forward_loop(hs, tower_gens)
            if self.cross_stitch is not None:
                hs = self.cross_stitch.mix_loop(name, hs)
            outs[name] = hs
        return outs, self.out.forward_loop(hs)

    def layer_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Every layer's output: shared layers [B, C, L] / [B, D], group layers with a group axis
        [B, G, C, L] / [B, G, D], tower layers with a task axis [B, T, C, L] / [B, T, D], and
        "out" the logits. For representation analyses."""
        outs, logits = self.trace(x)
        stacked = {name: torch.stack(o, dim=1) if isinstance(o, list) else o for name, o in outs.items()}
        return {**stacked, "out": logits}

    # ---- couplings, constraints, optimizer ----------------------------------------------
    def _tower_mats(self) -> list[Tensor]:
        return [unfold(self.layers[name]) for name in self.tower_layer_names]

    def _zero(self) -> Tensor:
        return self.out.weight.new_zeros(())

    def coupling_penalty(self) -> Tensor:
        if self._penalty is None or self.strength == 0:
            return self._zero()
        return self.strength * self._penalty(self._tower_mats())

    def tower_distance(self) -> Tensor:
        """Σ_layers Σ_t ‖W_t − mean_t W‖² over tower layers (0 without towers or with T = 1)."""
        return spread(self._tower_mats()) if not self.hard else self._zero()

    def tower_trace_norm(self) -> Tensor:
        return nuclear(self._tower_mats()) if not self.hard else self._zero()

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> None:
        """Rescale every unit whose incoming weight vector has L2 norm above ``max_norm`` (as
        torch.renorm: conv per output channel, dense and output per row), each tower alone."""
        for module in [*self.layers.values(), self.out]:
            w = module.weight
            units = w.shape[0] * w.shape[1]
            w.view(units, -1).renorm_(2, 0, max_norm)

    def cross_stitch_parameters(self) -> list[nn.Parameter]:
        return list(self.cross_stitch.parameters()) if self.cross_stitch is not None else []

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the shared trunk layers (empty when k = 0)."""
        return [p for name in self.shared_layer_names for p in self.layers[name].parameters()]

    def group_parameters(self) -> list[nn.Parameter]:
        """Parameters of the group layers (empty without sharing.group_layers)."""
        return [p for name in self.group_layer_names for p in self.layers[name].parameters()]

    def tower_parameters(self) -> list[nn.Parameter]:
        """Task-specific parameters: tower layers and output units (Basset's output layer too).
        shared + group + tower + cross-stitch parameters are all the parameters."""
        return [p for name in self.tower_layer_names for p in self.layers[name].parameters()] + \
               list(self.out.parameters())

    def param_groups(self, base_lr: float) -> list[dict]:
        cs = self.cross_stitch_parameters()
        groups = [{"name": "model", "params": self.shared_parameters() + self.group_parameters()
                   + self.tower_parameters(),
                   "lr": base_lr}]
        if cs:
            lr = self.cfg.sharing.cross_stitch_lr or base_lr
            groups.append({"name": "cross_stitch", "params": cs, "lr": lr})
        return groups

    # ---- costs --------------------------------------------------------------------------
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> int:
        return _flops.flops_per_sample(self.specs, self.head_spec)

    def flops_by_layer(self) -> dict[str, int]:
        return _flops.flops_by_layer(self.specs, self.head_spec)

    def checkpoint_payload(self) -> dict:
        """What models.initialization reads back from a torch.save'd checkpoint; the trainer
        may add its own keys (optimizer, epoch, ...)."""
        return {"model": self.state_dict(), "model_config": self.cfg.model_dump(mode="json"),
                "task_names": list(self.tasks), "in_channels": self.in_channels,
                "seq_len": self.seq_len, "task_channels": self.task_channels, "groups": self.groups}

    def extra_repr(self) -> str:
        grouped = f"group_layers={len(self.group_layer_names)} ({len(self._group_streams)} groups), " \
            if self.group_layer_names else ""
        return (f"tasks={self.n_tasks}, shared_layers={self.shared_layers}/{len(self.specs)}, {grouped}"
                f"coupling={self.coupling}, backend={self.backend}")


def build_model(cfg: ModelConfig, n_tasks: int, in_channels: int, seq_len: int,
                task_names: Optional[Sequence[str]], seed: int, task_channels: int = 0,
                groups: Optional[Sequence[int]] = None) -> MultiTaskNet:
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.model_validate(cfg)
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    names = [str(t) for t in task_names] if task_names is not None else [f"task{i}" for i in range(n_tasks)]
    if len(names) != n_tasks:
        raise ValueError(f"task_names has {len(names)} names but n_tasks is {n_tasks}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"task_names must be unique; repeated: {dup}")
    if in_channels < 1 or seq_len < 1:
        raise ValueError(f"in_channels and seq_len must be >= 1, got {in_channels} and {seq_len}")
    return MultiTaskNet(cfg, names, in_channels, seq_len, seed, task_channels, groups)
