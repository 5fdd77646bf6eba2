"""The sharing continuum: Basset trunk, per-task towers, soft couplings, initializations.

Public API: build_model(cfg, n_tasks, in_channels, seq_len, task_names, seed) -> MultiTaskNet and
apply_init(model, init_cfg, checkpoint_loader=torch.load). The state_dict layout is described in
models.net; the layer plan in models.arch; FLOPs in models.flops.
"""
from .initialization import apply_init
from .net import MultiTaskNet, auto_backend, build_model

__all__ = ["MultiTaskNet", "apply_init", "auto_backend", "build_model"]
