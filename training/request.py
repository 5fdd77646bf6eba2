"""A run request: everything that decides one run, built by every caller and executed in one place.

`mtlsweep train`, the Ray Tune trial, a sweep's baselines and reference families, finishing an
unconverged run and the studies all build a ``RunRequest`` and hand it to
``training.run.execute``. What every run needs decided is decided there, once:

- the data: the store as opened (all its tasks), or ``cfg.data.path`` opened; ``data.tasks``
  (names or indices, in the order given) is resolved once, on that store;
- the threads: the caller's share (a trial's CPUs) or ``train.num_threads``, else torch's
  default, written into the config so that the run's params and exported config say it;
- the resume: from ``run_dir/last.pt`` (``True``), or evaluate a finished run again (``"force"``);
- the baseline the run is compared with (task -> validation AUROC): the per-task deltas and the
  objective are part of every epoch's report, whether or not anything tracks the run.

Nothing here knows Ray or MLflow: trackers are callbacks (mlflow_server.attach builds them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence, Union

import torch

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import FAMILY_SECTIONS
from mtlsweep.config.run import RunConfig
from mtlsweep.data.store import Store, open_dataset
from mtlsweep.training.callbacks import Callback


@dataclass(frozen=True)
class RunRequest:
    cfg: RunConfig
    run_dir: Path
    data: Optional[Store] = None                 # as opened (all tasks); None: cfg.data.path is opened
    resume: Union[bool, Literal["force"]] = False
    mutable: Sequence[str] = ()                  # config keys a resume may change (a population-based schedule)
    threads: Optional[int] = None                # this run's CPU share; default train.num_threads
    baseline: Optional[Mapping[str, float]] = None   # task -> the baseline's validation AUROC
    callbacks: Sequence[Callback] = ()
    progress: bool = True
    selected: bool = field(default=False, repr=False)   # data holds exactly the run's tasks (resolve did it)

    def with_callbacks(self, *callbacks: Callback) -> "RunRequest":
        return dataclasses.replace(self, callbacks=(*self.callbacks, *callbacks))


def resolve(req: RunRequest) -> RunRequest:
    """The request with its data opened and its tasks selected (once: a resolved request is
    returned as is), its threads decided and written into the config, its run directory absolute."""
    if req.selected:
        return req
    cfg = req.cfg
    data = (req.data if req.data is not None else open_dataset(cfg.data.path)).select_tasks(cfg.data.tasks)
    if data.n_tasks == 1 and cfg.schedule.weighting != "equal":
        raise ConfigError(f"schedule.weighting={cfg.schedule.weighting}: weighs tasks against each other, and this "
                          f"run has one task ({data.task_names[0]}); use equal, or more data.tasks")
    threads = req.threads or cfg.train.num_threads or torch.get_num_threads()
    over = {"train.num_threads": int(threads)}
    section = FAMILY_SECTIONS.get(cfg.model.family)
    if section and getattr(cfg, section).n_jobs is None:      # a reference family fits on the same share
        over[f"{section}.n_jobs"] = int(threads)
    if any(cfg.flatten()[k] != v for k, v in over.items()):
        cfg = cfg.with_overrides(over, source="run request")
    return dataclasses.replace(req, cfg=cfg, data=data, run_dir=Path(req.run_dir).resolve(), selected=True)
