"""Hidden-layer similarity (`mtlsweep similarity RUN_A RUN_B`): linear CKA between the layers of two runs.

Also the pieces the other analyses share: loading a finished run's model (``load_run``) and a
fixed, seeded probe set from its data (``load_probe``). Recording an analysis as an MLflow run
is the caller's (``publish``; mtlsweep.mlflow_server.analysis_runs).

Representations are layer outputs on the probe in eval mode: a shared layer is one
representation; a tower layer gives one per task ("<layer>/<task>"). Towers are compared task by
task: tower t of run A against tower t of run B, and against every shared layer of B (and the
other way round); cells pairing different tasks' towers are left empty (NaN).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from mtlsweep import plots
from mtlsweep.analysis.cka import MIN_BATCH, MinibatchCKA
from mtlsweep.analysis.defaults import DEFAULT_TOWER_TASKS
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import ModelConfig, RunConfig, load_config
from mtlsweep.data.errors import DataError
from mtlsweep.data.store import SplitArrays, open_dataset, to_device
from mtlsweep.data.task_keys import sanitize_names
from mtlsweep.models import build_model
from mtlsweep.training.checkpoint import load_checkpoint
from mtlsweep.training.track_inputs import input_columns, select_tracks


# ---- runs -----------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    ref: str                      # what the user named: a directory, a checkpoint or a run id
    name: str
    run_dir: Path
    checkpoint: Path
    cfg: object                   # config.run.RunConfig
    model: object                 # models.net.MultiTaskNet, eval mode
    tasks: list[str]
    in_channels: int
    seq_len: int
    mlflow_run_id: Optional[str] = None

    def columns(self, probe: "Probe") -> list[int]:
        """The probe's input channels this run's model reads (its data.tracks / data.task_tracks)."""
        try:
            cols = input_columns(*select_tracks(self.cfg.data, probe.track_names, self.tasks, probe.source))
        except ConfigError as exc:
            raise DataError(f"{self.name}: {exc}") from None
        if len(cols) != self.in_channels:
            raise DataError(f"{self.name} reads {self.in_channels} input channels; {probe.source} gives it "
                            f"{len(cols)} (tracks: {', '.join(probe.track_names) or 'none'})")
        return cols


def load_run(ref: str, device: str = "cpu", locate: Optional[Callable[[str], tuple[Path, str]]] = None) -> LoadedRun:
    """A run directory (best.pt + config.yaml as training/engine.py writes them), a checkpoint
    file, or a run id that ``locate`` turns into (run directory, run id) (the app passes an
    MLflow lookup: mtlsweep.mlflow_server.analysis_runs.locator)."""
    path = Path(ref)
    run_id = None
    if path.is_file():
        ck_path, run_dir = path, path.parent
    else:
        if path.is_dir():
            run_dir = path
        elif "/" in ref or path.suffix or locate is None:
            raise DataError(f"{ref}: no such run directory or checkpoint")
        else:
            run_dir, run_id = locate(ref)
        ck_path = run_dir / "best.pt"
        if not ck_path.is_file():
            raise DataError(f"{run_dir}: no best.pt; is it a finished run directory?")
    ck = load_checkpoint(ck_path, map_location=device)
    missing = [k for k in ("model", "model_config", "task_names", "in_channels", "seq_len") if k not in ck]
    if missing:
        raise DataError(f"{ck_path}: not a training checkpoint (missing {', '.join(missing)})")
    if "config" in ck:
        cfg = RunConfig.model_validate(ck["config"])
    elif (run_dir / "config.yaml").is_file():
        cfg = load_config(run_dir / "config.yaml")
    else:
        raise DataError(f"{ck_path}: holds no run config and {run_dir / 'config.yaml'} does not exist")
    tasks = [str(t) for t in ck["task_names"]]
    model = build_model(ModelConfig.model_validate(ck["model_config"]), len(tasks), int(ck["in_channels"]),
                        int(ck["seq_len"]), tasks, seed=cfg.train.seed, task_channels=int(ck.get("task_channels", 0)),
                        groups=ck.get("groups"))
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return LoadedRun(ref, run_dir.resolve().name, run_dir.resolve(), ck_path, cfg, model, tasks,
                     int(ck["in_channels"]), int(ck["seq_len"]), run_id)


# ---- probe ----------------------------------------------------------------------------------
@dataclass
class Probe:
    """A fixed sample of sequences: ``split`` holds the chosen rows, in file order."""
    source: str
    split_name: str
    split: object                 # data.store.SplitArrays restricted to the probe
    seed: int
    track_names: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.split.codes.shape[0])

    @property
    def codes(self) -> np.ndarray:
        return self.split.codes

    def batches(self, batch: int, columns: Sequence[int], device: str = "cpu") -> Iterator[torch.Tensor]:
        """Model inputs: the one-hot and tracks, reduced to ``columns`` (LoadedRun.columns)."""
        cols = None if list(columns) == list(range(4 + len(self.track_names))) else torch.tensor(list(columns))
        for start in range(0, self.n, batch):
            idx = np.arange(start, min(self.n, start + batch))
            x, _, _ = to_device(self.split, idx, device)
            yield x if cols is None else x.index_select(1, cols.to(x.device))


def load_probe(data_path: str, n: int, seed: int = 0, split: str = "valid") -> Probe:
    """``n`` sequences drawn without replacement from ``split`` (all of it when smaller)."""
    if n < 1:
        raise DataError(f"--probe must be >= 1, got {n}")
    if not Path(data_path).exists():
        raise DataError(f"{data_path}: data file of the run not found; pass --data to point at it")
    store = open_dataset(data_path)
    if split not in store.splits or store.n(split) == 0:
        raise DataError(f"{data_path}: has no '{split}' sequences; splits present: {sorted(store.splits)}")
    sp = store.splits[split]
    total = store.n(split)
    idx = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    sub = SplitArrays(codes=sp.codes[idx], labels=sp.labels[idx],
                      tracks=None if sp.tracks is None else sp.tracks[idx],
                      headers=None if sp.headers is None else [sp.headers[i] for i in idx])
    return Probe(str(data_path), split, sub, seed, list(store.track_names))


# ---- representations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Rep:
    name: str                     # "conv1" or "conv2/<task key>"
    layer: str
    task: Optional[str]           # None for a shared layer


def representations(model, layers: Sequence[str], tasks: Sequence[str]) -> list[Rep]:
    keys = sanitize_names(model.tasks)
    reps = []
    for layer in layers:
        if layer in model.shared_layer_names:
            reps.append(Rep(layer, layer, None))
        else:
            reps.extend(Rep(f"{layer}/{keys[t]}", layer, t) for t in tasks)
    return reps


def activations(model, x: torch.Tensor, reps: Sequence[Rep]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        outs = model.layer_outputs(x)
    acts = {}
    for r in reps:
        o = outs[r.layer]
        acts[r.name] = o if r.task is None else o[:, model.tasks.index(r.task)]
    return acts


def _parse_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    return items or None


def _pick_layers(run: LoadedRun, layers: Optional[Sequence[str]]) -> list[str]:
    if layers is None:
        return list(run.model.layer_names)
    for name in layers:
        if name not in run.model.layer_names:
            raise DataError(f"--layers: {name!r} is not a layer of {run.name}; its layers are {run.model.layer_names}")
    return list(layers)


def _pick_tasks(a: LoadedRun, b: LoadedRun, tasks: Optional[Sequence[str]]) -> list[str]:
    if tasks is None:
        common = [t for t in a.tasks if t in b.tasks] or a.tasks
        return common[:DEFAULT_TOWER_TASKS]
    out = []
    for t in tasks:
        if t in a.tasks or t in b.tasks:
            out.append(t)
        elif t.isdigit() and int(t) < len(a.tasks):
            out.append(a.tasks[int(t)])
        else:
            raise DataError(f"--tasks: {t!r} is neither a task of {a.name} nor of {b.name} nor an index of {a.name}'s tasks")
    return out


@dataclass
class SimilarityResult:
    rows: list[str]
    cols: list[str]
    matrix: np.ndarray            # [rows, cols] linear CKA, NaN for pairs not compared
    files: list[Path] = field(default_factory=list)
    mlflow_run_id: Optional[str] = None
    probe_n: int = 0


def compare_runs(a: LoadedRun, b: LoadedRun, probe: Probe, *, layers: Optional[Sequence[str]] = None,
                 tasks: Optional[Sequence[str]] = None, batch: int = 256, device: str = "cpu") -> SimilarityResult:
    if a.seq_len != b.seq_len or a.seq_len != probe.split.codes.shape[1]:
        raise DataError(f"sequence lengths differ: {a.name} reads {a.seq_len}, {b.name} {b.seq_len}, "
                        f"the probe has {probe.split.codes.shape[1]}")
    if batch < MIN_BATCH:
        raise DataError(f"--batch must be >= {MIN_BATCH} (the unbiased HSIC needs it), got {batch}")
    chosen = _pick_tasks(a, b, tasks)
    reps_a = representations(a.model, _pick_layers(a, layers), [t for t in chosen if t in a.tasks])
    reps_b = representations(b.model, _pick_layers(b, layers), [t for t in chosen if t in b.tasks])
    pairs = [(ra.name, rb.name) for ra in reps_a for rb in reps_b
             if ra.task is None or rb.task is None or ra.task == rb.task]
    acc = MinibatchCKA([r.name for r in reps_a], [r.name for r in reps_b], pairs)
    for xa, xb in zip(probe.batches(batch, a.columns(probe), device), probe.batches(batch, b.columns(probe), device)):
        if xa.shape[0] < MIN_BATCH:
            continue              # a short last batch has no unbiased HSIC; it is left out
        acc.update(activations(a.model, xa, reps_a), activations(b.model, xb, reps_b))
    return SimilarityResult(acc.rows, acc.cols, acc.result(), probe_n=acc.examples)


def write_similarity(res: SimilarityResult, out_dir: Path, title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "cka.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["A \\ B", *res.cols])
        for name, row in zip(res.rows, res.matrix):
            w.writerow([name, *("" if not np.isfinite(v) else f"{v:.6f}" for v in row)])
    png = plots.heatmap(res.matrix, res.rows, res.cols, out_dir / "cka.png", title=title, cmap="magma",
                        vmin=0.0, vmax=1.0, xlabel="run B", ylabel="run A")
    return [table, png]


def cka_metrics(res: SimilarityResult) -> dict[str, float]:
    return {f"cka/{r}__{c}": float(res.matrix[i, j])
            for i, r in enumerate(res.rows) for j, c in enumerate(res.cols) if np.isfinite(res.matrix[i, j])}


def similarity(run_a: str, run_b: str, *, layers=None, tasks=None, probe: int = 2000, batch: int = 256,
               split: str = "valid", seed: int = 0, data: Optional[str] = None, device: str = "cpu",
               out: str | Path = "workspace/analysis/similarity", locate=None,
               publish: Optional[Callable[..., str]] = None) -> SimilarityResult:
    """CKA between every pair of layers of two runs, written to ``out``; ``publish`` (the app
    passes mtlsweep.mlflow_server.analysis_runs.publisher) records it as an analysis run."""
    a = load_run(run_a, device, locate)
    b = load_run(run_b, device, locate)
    p = load_probe(data or a.cfg.data.path, probe, seed, split)
    res = compare_runs(a, b, p, layers=layers, tasks=tasks, batch=batch, device=device)
    out_dir = Path(out)
    title = f"linear CKA: {a.name} (A) vs {b.name} (B), {res.probe_n} probe sequences"
    res.files = write_similarity(res, out_dir, title)
    meta = out_dir / "cka.json"
    meta.write_text(json.dumps({
        "run_a": str(a.run_dir), "run_b": str(b.run_dir), "probe": {"data": p.source, "split": split, "n": res.probe_n,
                                                                   "seed": seed, "batch": batch},
        "estimator": "minibatch linear CKA, unbiased HSIC (Nguyen et al. 2021)",
        "rows": res.rows, "cols": res.cols,
        "matrix": [[None if not np.isfinite(v) else float(v) for v in row] for row in res.matrix]}, indent=1))
    res.files.append(meta)
    if publish is not None:
        tags = {"run_a": str(a.run_dir), "run_b": str(b.run_dir)}
        if a.mlflow_run_id:
            tags["run_a_id"] = a.mlflow_run_id
        if b.mlflow_run_id:
            tags["run_b_id"] = b.mlflow_run_id
        res.mlflow_run_id = publish(
            f"cka {a.name} vs {b.name}", kind="cka", tags=tags,
            params={"probe": res.probe_n, "batch": batch, "split": split, "seed": seed, "data": p.source,
                    "layers": layers or "all", "tasks": ",".join(tasks) if tasks else "default"},
            metrics=[(k, v, 0) for k, v in cka_metrics(res).items()], artifacts=res.files)
    return res
