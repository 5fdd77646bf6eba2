"""One run of one config: build, train with early stopping, checkpoint, test the best model.

Knows nothing of Ray or MLflow: it reports through ``training.callbacks.Callback``.
"""
from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import run_identity
from mtlsweep.config.run import RunConfig
from mtlsweep.data.errors import DataError
from mtlsweep.data.label_checks import label_warnings
from mtlsweep.data.store import Store, batches, open_dataset, to_device
from mtlsweep.data.synthetic import load_oracle
from mtlsweep.models import build_model
from mtlsweep.models.initialization import apply_init
from mtlsweep.schedules import build_schedule, build_weighting
from mtlsweep.training.baseline_scores import load_task_scores
from mtlsweep.training.callbacks import Callback, CallbackList, EpochReport, RunInfo
from mtlsweep.training.certificates import Convergence, epoch_convergence
from mtlsweep.training.checkpoint import load_checkpoint, save_checkpoint
from mtlsweep.training.cost import peak_memory_mb
from mtlsweep.training.loss import masked_bce_per_task
from mtlsweep.training.lr_schedule import lr_factor
from mtlsweep.training.metrics import TaskMetrics, baseline_array, delta_metrics, task_metrics
from mtlsweep.training.optim import build_optimizer
from mtlsweep.training.sharing_groups import resolve_groups, schedule_affinity
from mtlsweep.training.task_affinity import affinity_from_config
from mtlsweep.training.track_inputs import input_columns, select_tracks

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class RunResult:
    run_dir: Path
    task_names: list[str]
    best_epoch: int
    best_val_auroc: float
    epochs_run: int
    history: list[dict[str, float]]
    val: TaskMetrics
    test: Optional[TaskMetrics]
    test_summary: dict[str, float] = field(default_factory=dict)
    info: Optional[RunInfo] = None
    convergence: Optional[Convergence] = None

    @property
    def final_metrics(self) -> dict[str, float]:
        out = dict(self.history[self.best_epoch - 1]) if self.history else {}
        out.update(self.test_summary)
        return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine; use cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _task_metric_dict(prefix: str, names: list[str], values: np.ndarray) -> dict[str, float]:
    return {f"{prefix}/{n}": float(v) for n, v in zip(names, values)}


class Trainer:
    """Holds one run's state so that a trial wrapper can drive it epoch by epoch."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, store: Optional[Store] = None,
                 callbacks: Iterable[Callback] = (), progress: bool = True,
                 baseline: Optional[Mapping[str, float]] = None):
        """``store``: the run's data, its tasks already selected (training.request does that once);
        None: cfg.data.path is opened and data.tasks selected here. ``baseline``: task -> the
        baseline's validation AUROC, against which every epoch reports its deltas."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.callbacks = CallbackList(callbacks)
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        seed_everything(cfg.train.seed)

        self.store = store if store is not None else open_dataset(cfg.data.path).select_tasks(cfg.data.tasks)
        for split in ("train", "valid"):
            if split not in self.store.splits or self.store.n(split) == 0:
                raise DataError(f"{cfg.data.path}: the {split} split is empty; training needs train and valid")
        self.tasks = list(self.store.task_names)
        self.baseline = dict(baseline) if baseline else None
        self._baseline_auroc = baseline_array(self.baseline, self.tasks)
        shared, per_task = select_tracks(cfg.data, self.store.track_names, self.tasks, cfg.data.path)
        self.track_inputs = {"shared": [self.store.track_names[i] for i in shared],
                             "per_task": [self.store.track_names[i] for i in per_task]}
        cols = input_columns(shared, per_task)
        self._cols = None if cols == list(range(4 + len(self.store.track_names))) else torch.tensor(cols, device=self.device)
        in_channels = len(cols)
        self.in_channels = in_channels
        self.groups = resolve_groups(cfg.model.sharing, self.tasks, cfg.data.path)
        try:
            self.model = build_model(cfg.model, n_tasks=len(self.tasks), in_channels=in_channels,
                                     seq_len=self.store.seq_len, task_names=self.tasks, seed=cfg.train.seed,
                                     task_channels=len(per_task), groups=self.groups)
            self.init_summary = apply_init(self.model, cfg.init)
        except (ValueError, KeyError) as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        self.model.to(self.device)
        try:
            self.weighting = build_weighting(cfg.schedule, len(self.tasks), seed=cfg.train.seed,
                                             task_names=self.tasks).to(self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.affinity = affinity_from_config(cfg, self.tasks)
        train_labels = self.store.splits["train"].labels
        try:
            self.schedule = build_schedule(
                cfg.schedule, self.tasks, prevalence=self.store.prevalence("train"),
                sizes=(train_labels >= 0).sum(0), epochs=cfg.train.epochs, seed=cfg.train.seed,
                baseline_auroc=load_task_scores(cfg.schedule.baseline_auroc, self.tasks)
                if cfg.schedule.baseline_auroc else None,
                affinity=schedule_affinity(cfg.schedule, self.tasks), groups=self.groups)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.optimizer = build_optimizer(cfg.optim, self.model, extra_params=list(self.weighting.parameters()))
        # Each group's rate as configured: optim.lr_schedule's factor of the epoch applies to these.
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model

        n_train = self.store.n("train")
        # Rows with a positive label are always trained on; of the others a fraction per epoch.
        self._positive_rows = np.flatnonzero((train_labels == 1).any(axis=1))
        self._negative_rows = np.flatnonzero(~(train_labels == 1).any(axis=1))
        if cfg.data.negative_fraction < 1:
            n_train = len(self._positive_rows) + int(round(cfg.data.negative_fraction * len(self._negative_rows)))
        bs = cfg.data.batch_size
        full_steps = n_train // bs if n_train >= bs else 1
        self.steps_per_epoch = min(full_steps, cfg.train.steps_per_epoch or full_steps)
        # A fixed, evenly spaced sample of the train split, as large as the valid split, scored
        # each epoch like valid: the train-vs-valid AUROC gap shows overfitting.
        n_all = self.store.n("train")
        n_probe = min(n_all, max(self.store.n("valid"), 1))
        self.train_probe = np.unique(np.linspace(0, n_all - 1, n_probe).round().astype(np.int64))
        # Tasks that have had a nonzero loss weight so far: a scheduler judges a trial only after
        # every task entered (warm starts and curricula keep tasks out at first).
        self.entered = np.zeros(len(self.tasks), dtype=bool)
        # A task needs both classes among its known train and valid labels to be learned and judged;
        # any other is left out of every split's means alike (its per-task metrics are NaN).
        self.judged = np.ones(len(self.tasks), dtype=bool)
        for split in ("train", "valid"):
            lab = self.store.splits[split].labels
            self.judged &= ((lab == 1).sum(0) > 0) & ((lab == 0).sum(0) > 0)
        if not self.judged.all():
            left = [t for t, ok in zip(self.tasks, self.judged) if not ok]
            warnings.warn(f"{cfg.data.path}: {len(left)} task(s) lack positives or negatives among their known "
                          f"train/valid labels and are left out of every mean: {', '.join(left[:5])}"
                          + (", ..." if len(left) > 5 else ""), stacklevel=2)
        for line in label_warnings(self.store, cfg.data.path):
            warnings.warn(line, stacklevel=2)
        oracle = load_oracle(cfg.data.path, self.store.fingerprint)
        self.oracle = ({split: {t: per[t] for t in self.tasks if t in per} for split, per in oracle.items()}
                       if oracle else None)
        self.start_epoch = 1
        self.best_val = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []

    # ---- state ---------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "model_config": self.cfg.model.model_dump(mode="json"),
            "config": self.cfg.model_dump(mode="json"),
            "task_names": self.tasks,
            "in_channels": self.in_channels,
            "task_channels": self.model.task_channels,
            "groups": self.model.groups,
            "seq_len": self.store.seq_len,
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "model": self.model.rng_state()},
            "epoch": epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "entered": self.entered.tolist(),
            "data_fingerprint": self.store.fingerprint,
            "affinity": self.affinity.state_dict() if self.affinity is not None else None,
        }

    def resume(self, path: str | Path, force: bool = False, mutable: Sequence[str] = ()) -> None:
        """Continue from the checkpoint at ``path``. ``mutable``: config keys that may differ from
        the checkpoint's (a population-based schedule changes them between epochs); the optimizer's
        step size and decay then come from this run's config, its moments from the checkpoint."""
        ck = load_checkpoint(path, map_location=self.device)
        check_resume(self.cfg, Path(path).parent, self.store.fingerprint, self.tasks, force=force, ck=ck,
                     mutable=mutable)
        self.model.load_state_dict(ck["model"])
        fresh = [{k: g[k] for k in ("lr", "weight_decay") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ck["optimizer"])
        if mutable:
            for group, hyper in zip(self.optimizer.param_groups, fresh):
                group.update(hyper)
        self.weighting.load_state_dict(ck["weighting"])
        self.schedule.load_state_dict(ck["schedule"])
        torch.set_rng_state(ck["rng"]["torch"])
        self.model.set_rng_state(ck["rng"]["model"])
        self.start_epoch = ck["epoch"] + 1
        self.best_val, self.best_epoch = ck["best_val"], ck["best_epoch"]
        self.bad_epochs, self.history = ck["bad_epochs"], list(ck["history"])
        self.entered = np.asarray(ck.get("entered", [True] * len(self.tasks)), dtype=bool)
        if self.affinity is not None and ck.get("affinity") is not None:
            self.affinity.load_state_dict(ck["affinity"])

    # ---- loops ---------------------------------------------------------------------
    def _batch(self, split, idx):
        x, y, mask = to_device(split, idx, self.device)
        if self._cols is not None:
            x = x.index_select(1, self._cols)
        return x, y, mask

    def epoch_rows(self, epoch: int) -> np.ndarray | None:
        """The train rows of an epoch under data.negative_fraction (None: all rows); a pure
        function of (seed, epoch), so a resumed run draws the same ones."""
        f = self.cfg.data.negative_fraction
        if f >= 1:
            return None
        rng = np.random.default_rng([self.cfg.train.seed, epoch, 1])
        k = int(round(f * len(self._negative_rows)))
        neg = rng.choice(self._negative_rows, size=k, replace=False) if k else self._negative_rows[:0]
        return np.sort(np.concatenate([self._positive_rows, neg]))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        split = self.store.splits["train"]
        # The order of an epoch depends only on (seed, epoch): a resumed run sees the same batches.
        rng = np.random.default_rng([cfg.train.seed, epoch])
        rows = self.epoch_rows(epoch)
        n_rows = self.store.n("train") if rows is None else len(rows)
        it = batches(n_rows, cfg.data.batch_size, shuffle=True, rng=rng, drop_last=n_rows >= cfg.data.batch_size)
        if rows is not None:
            it = (rows[idx] for idx in it)
        bar = None
        if self.progress:
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}", leave=False, unit="step",
                       disable=None, mininterval=0.5)
        autocast = self._autocast()
        loss_sum = torch.zeros(len(self.tasks), dtype=torch.float64)
        n_known = torch.zeros(len(self.tasks), dtype=torch.float64)
        weight_sum = torch.zeros(len(self.tasks), dtype=torch.float64)
        objective = 0.0
        n_seen = 0
        t0 = time.perf_counter()
        for step, idx in enumerate(it):
            if step >= self.steps_per_epoch:
                break
            x, y, mask = self._batch(split, idx)
            if self.affinity is not None and self.affinity.due((epoch - 1) * self.steps_per_epoch + step):
                self.affinity.probe(self.model, x, y, mask)
            w = self.schedule.weights(epoch, step, self.steps_per_epoch)
            self.entered |= (w > 0).numpy()
            w = w.to(self.device)
            with autocast:
                logits = self.forward(x)
            per_task, known = masked_bce_per_task(logits.float(), y, mask)
            penalty = self.model.coupling_penalty()
            self.optimizer.zero_grad(set_to_none=True)
            objective += self.weighting.backward(per_task, w, self.model, known)
            if penalty.requires_grad:           # the coupling's term, once, whatever the weighting
                penalty.backward()
                objective += float(penalty.detach())
            if cfg.optim.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.weighting.after_step()
            if cfg.optim.max_norm:
                self.model.apply_max_norm(cfg.optim.max_norm)
            self.callbacks.on_batch_end(self, epoch, step, (x, y, mask))
            loss_sum += (per_task.detach() * known).double().cpu()
            n_known += known.double().cpu()
            weight_sum += w.double().cpu()
            n_seen += len(idx)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if self.affinity is not None:
            self.affinity.end_epoch(epoch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        steps = max(1, min(self.steps_per_epoch, step + 1))
        train_loss = (loss_sum / n_known.clamp(min=1)).numpy()
        out = {
            "train/loss": float(np.nanmean(np.where(n_known.numpy() > 0, train_loss, np.nan))),
            "train/objective": objective / steps,
            "cost/train_s": elapsed,
            "cost/samples_per_s": n_seen / elapsed if elapsed > 0 else float("nan"),
        }
        out.update(_task_metric_dict("schedule/weight", self.tasks, (weight_sum / steps).numpy()))
        out.update(self.weighting.report())
        # The rate and decay as configured, what a search tunes and its certificate reads (a
        # population-based schedule changes them between epochs); a rate schedule's own rate beside.
        out["optim/lr"] = float(self.base_lrs[0])
        if self.cfg.optim.lr_schedule != "constant":
            out["optim/lr_effective"] = float(self.optimizer.param_groups[0]["lr"])
        out["optim/weight_decay"] = float(self.optimizer.param_groups[0].get("weight_decay", 0.0))
        return out

    @torch.no_grad()
    def predict(self, split_name: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Sigmoid outputs [N, T] on a split (or on its ``rows``), in eval mode."""
        self.model.eval()
        split = self.store.splits[split_name]
        rows = np.arange(split.n) if rows is None else rows
        outs = []
        for idx in batches(len(rows), self.cfg.train.eval_batch_size, shuffle=False, rng=None):
            x, _, _ = self._batch(split, rows[idx])
            with self._autocast():
                logits = self.forward(x)
            outs.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, len(self.tasks)), np.float32)

    def _autocast(self):
        """bf16 autocast on the run's device (CUDA or CPU) when train.precision is bf16; the loss,
        the metrics and the optimizer state stay fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.train.precision == "bf16")

    def evaluate(self, split_name: str, rows: Optional[np.ndarray] = None) -> TaskMetrics:
        labels = self.store.splits[split_name].labels
        m = task_metrics(self.predict(split_name, rows), labels if rows is None else labels[rows])
        for arr in (m.auroc, m.auprc):
            arr[~self.judged] = np.nan
        return m

    def info(self) -> RunInfo:
        return RunInfo(self.run_dir, self.tasks, self.model.n_params(), self.model.flops_per_sample(),
                       self.store.n("train"), self.store.fingerprint, self.steps_per_epoch, self.start_epoch,
                       str(self.device), self.oracle, self.baseline, self.model.cfg.shared_width)

    def run_epoch(self, epoch: int) -> EpochReport:
        t0 = time.perf_counter()
        factor = lr_factor(self.cfg.optim, epoch, self.cfg.train.epochs, self.history)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        m = {"epoch": float(epoch)}
        m.update(self.train_epoch(epoch))
        val = self.evaluate("valid")
        self.schedule.observe(epoch, val.auroc)
        m.update({f"val/{k}": v for k, v in val.summary().items()})
        m.update(_task_metric_dict("val/auroc", self.tasks, val.auroc))
        m.update(_task_metric_dict("val/auprc", self.tasks, val.auprc))
        if self._baseline_auroc is not None:          # the objective: deltas against the baseline
            m.update(delta_metrics(val.auroc, self._baseline_auroc, self.tasks))
        probe = self.evaluate("train", self.train_probe).summary()
        m["train/auroc_mean"] = probe["auroc_mean"]
        m["gap/auroc"] = probe["auroc_mean"] - m["val/auroc_mean"]
        m["schedule/tasks_entered"] = float(self.entered.sum())
        m["cost/epoch_s"] = time.perf_counter() - t0
        m["cost/peak_mem_mb"] = peak_memory_mb(self.device)
        score = m["val/auroc_mean"]
        improved = not math.isnan(score) and score > self.best_val
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = score, epoch, 0
            save_checkpoint(self.run_dir / BEST, self.state(epoch))
        else:
            self.bad_epochs += 1
        report = EpochReport(epoch, m, best=improved, last=epoch >= self.cfg.train.epochs or self.should_stop())
        self.history.append(m)
        save_checkpoint(self.run_dir / LAST, self.state(epoch))
        self.callbacks.on_epoch_end(report)
        self.callbacks.on_checkpoint(self.run_dir / LAST, epoch)
        return report

    def should_stop(self) -> bool:
        return self.bad_epochs >= self.cfg.train.patience

    def finish(self) -> RunResult:
        if self.best_epoch == 0:
            raise DataError(f"{self.cfg.data.path}: validation AUROC was undefined for every task "
                            "(no task has both positives and negatives in the valid split)")
        ck = load_checkpoint(self.run_dir / BEST, map_location=self.device)
        self.model.load_state_dict(ck["model"])
        val = self.evaluate("valid")
        test = None
        test_summary: dict[str, float] = {}
        if "test" in self.store.splits and self.store.n("test") > 0:
            test = self.evaluate("test")
            test_summary = {f"test/{k}": v for k, v in test.summary().items()}
            test_summary.update(_task_metric_dict("test/auroc", self.tasks, test.auroc))
            if self._baseline_auroc is not None:
                test_summary.update(delta_metrics(test.auroc, self._baseline_auroc, self.tasks, prefix="test"))
        cert = epoch_convergence(self.best_epoch, len(self.history), self.run_dir, self.cfg.train.epochs,
                                 self.cfg.train.patience)
        result = RunResult(self.run_dir, self.tasks, self.best_epoch, self.best_val, len(self.history),
                           self.history, val, test, test_summary, self.info(), cert)
        write_outputs(result, self.cfg)
        if self.affinity is not None and self.affinity.probes:
            self.affinity.write(self.run_dir / tag.ARTIFACT_DIR)
        self.callbacks.on_train_end(result)
        return result

    def fit(self) -> RunResult:
        self.callbacks.on_train_start(self.info())
        for epoch in range(self.start_epoch, self.cfg.train.epochs + 1):
            if self.history and self.should_stop():
                break
            if self.run_epoch(epoch).last:
                break
        return self.finish()


def write_outputs(result: RunResult, cfg: RunConfig) -> None:
    d = result.run_dir
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(cfg.to_yaml())
    payload = {"best_epoch": result.best_epoch, "best_val_auroc": result.best_val_auroc,
               "epochs_run": result.epochs_run, "final": result.final_metrics,
               "history": result.history, "info": result.info.as_dict() if result.info else None,
               "convergence": result.convergence.as_dict() if result.convergence else None}
    (d / "metrics.json").write_text(json.dumps(payload, indent=1, allow_nan=True))
    with open(d / "per_task.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "val_auroc", "val_auprc", "val_accuracy", "val_loss", "val_n_pos", "val_n_neg",
                    "test_auroc", "test_auprc"])
        for i, name in enumerate(result.task_names):
            t_roc = result.test.auroc[i] if result.test is not None else float("nan")
            t_pr = result.test.auprc[i] if result.test is not None else float("nan")
            w.writerow([name, result.val.auroc[i], result.val.auprc[i], result.val.accuracy[i],
                        result.val.loss[i], int(result.val.n_pos[i]), int(result.val.n_neg[i]), t_roc, t_pr])


def prepare_run_dir(cfg: RunConfig, name: Optional[str] = None, *, force: bool = False) -> Path:
    """The run's output directory (not created: a refused run leaves nothing behind); refuses
    to reuse a non-empty one unless forced."""
    if name is None:
        name = time.strftime("%Y%m%d-%H%M%S") + f"-s{cfg.train.seed}"
    run_dir = Path(cfg.train.out_dir) / name
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a directory; choose another --name or train.out_dir")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise ConfigError(f"{run_dir}: run directory exists; choose another --name, --resume it, or --force")
    return run_dir.resolve()


def is_mutable(key: str, mutable: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``mutable`` (a key, or a prefix ending in ".")."""
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in mutable)


# What a resumed run may change: its budget and its stopping rule (to train it longer).
RESUMABLE_CHANGES = ("train.epochs", "train.patience")


def check_resume(cfg: RunConfig, run_dir: Path, data_fingerprint: str, tasks: list[str], *, force: bool = False,
                 ck: Optional[dict] = None, mutable: Sequence[str] = ()) -> None:
    """Refuse to resume ``run_dir`` with a config or data that is not the run's own (naming the
    first key that differs), or a run that already finished (unless ``force``). ``ck``: its last
    checkpoint, when already loaded; ``mutable``: keys (or key prefixes ending in ".") that may
    differ besides the budget."""
    last = Path(run_dir) / LAST
    if ck is None:
        if not last.is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no {LAST})")
        ck = load_checkpoint(last, map_location="cpu", mmap=True)
    if ck.get("data_fingerprint") not in (None, data_fingerprint):
        raise ConfigError(f"{run_dir}: --resume with other data: the run was trained on data "
                          f"{str(ck['data_fingerprint'])[:12]}…, data.path={cfg.data.path} is {data_fingerprint[:12]}…")
    if list(ck.get("task_names", tasks)) != list(tasks):
        raise ConfigError(f"{run_dir}: --resume with other tasks: the run has {len(ck['task_names'])} "
                          f"({', '.join(ck['task_names'][:4])}…), data.tasks selects {len(tasks)}")
    if "config" in ck:
        was = run_identity(RunConfig.model_validate(ck["config"]), data_fingerprint, tasks)["config"]
        now = run_identity(cfg, data_fingerprint, tasks)["config"]
        for key in sorted(set(was) | set(now)):
            if key in RESUMABLE_CHANGES or is_mutable(key, mutable):
                continue
            if was.get(key) != now.get(key):
                raise ConfigError(f"{run_dir}: --resume with another config: {key} was {was.get(key)!r}, "
                                  f"is {now.get(key)!r}; only {' and '.join(RESUMABLE_CHANGES)} may change")
    if (Path(run_dir) / "metrics.json").is_file() and not force:
        epochs = int(ck.get("epoch", 0))
        stopped = ck.get("bad_epochs", 0) >= cfg.train.patience
        if epochs >= cfg.train.epochs or stopped:
            raise ConfigError(f"{run_dir}: already complete ({epochs} epochs, metrics.json written); raise "
                              "train.epochs (or train.patience) to train it longer, or pass --force to evaluate it again")
