"""`mtlsweep cost`: how training cost grows with the number of tasks T, per model family.

For each family and T the model is built (single: k = 0 and no coupling; hard: k = L; soft:
k = 0 towers coupled by l2 with λ = 0.01, or cross-stitch), then ``steps`` training steps run on
random one-hot input with the training loss (masked per-task BCE summed over tasks, plus the
coupling penalty), the optimizer step and the max-norm constraint. Reported per configuration:
median time per step, samples/s, an epoch-time estimate for ``epoch_seqs`` sequences, peak
memory, parameters and FLOPs per sample (forward, analytic: model.flops_per_sample()).

Peak memory: by default every configuration runs in a fresh Python subprocess and reports
its peak resident set (VmHWM, training/cost.py), so peaks do not carry over between
configurations; ``mem_mb`` is that peak minus the resident set just before the model was built
(the model, optimizer state and activations). On CUDA it is torch.cuda.max_memory_allocated.
With ``isolate=False`` (tests) configurations run in this process and the kernel's peak counter
is reset before each (/proc/self/clear_refs); memory the allocator kept from an earlier
configuration can then hide part of a later peak.

The growth exponent of a family is the least-squares slope of log(time per step) against
log(T). Hard sharing should stay near 0 (the trunk is shared; only the output layer grows),
single-task towers near 1. (How long a run took to reach a target AUROC:
analysis/learning_curves.py.)
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mtlsweep.analysis.defaults import COST_ARCHS as ARCHS
from mtlsweep.analysis.defaults import COST_FAMILIES as FAMILIES
from mtlsweep.config.run import ModelConfig, OptimConfig
from mtlsweep.data.errors import DataError
from mtlsweep.data.onehot import codes_to_onehot
from mtlsweep.models import build_model
from mtlsweep.plots import save_figure, subplots
from mtlsweep.training.cost import current_rss_mb, peak_rss_mb
from mtlsweep.training.loss import masked_bce_per_task
from mtlsweep.training.optim import build_optimizer

METRICS = ("time_per_step_s", "samples_per_s", "epoch_s", "mem_mb", "n_params", "flops_per_sample")


@dataclass
class CostPoint:
    family: str
    n_tasks: int
    time_per_step_s: float
    samples_per_s: float
    epoch_s: float              # estimate: ceil(epoch_seqs / batch) steps
    peak_mb: float              # peak resident set (CPU) or peak allocated (CUDA)
    mem_mb: float               # peak minus what the process held before the model was built
    n_params: int
    flops_per_sample: int
    mem_method: str
    threads: int                # torch intra-op threads during the measurement


def model_config(family: str, arch: str | dict, width: float = 1.0, soft_coupling: str = "l2",
                 strength: float = 0.01):
    a = ARCHS[arch] if isinstance(arch, str) else arch
    n_layers = len(a["conv_channels"]) + len(a["dense"])
    if family == "single":
        sharing = {"shared_layers": 0}
    elif family == "hard":
        sharing = {"shared_layers": n_layers}
        width = 1.0
    elif family == "soft":
        sharing = {"shared_layers": 0, "coupling": soft_coupling,
                   "strength": strength if soft_coupling in ("l2", "trace_norm") else 0.0}
    else:
        raise DataError(f"--families: unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    return ModelConfig.model_validate({"arch": a, "sharing": sharing, "width": width})


def _reset_peak() -> str:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM reset in process"
    except OSError:
        return "process peak RSS (not reset: no /proc/self/clear_refs)"


def measure_point(family: str, n_tasks: int, *, arch: str | dict = "small", steps: int = 10, warmup: int = 2,
                  batch: int = 128, seq_len: int = 600, device: str = "cpu", epoch_seqs: int = 100_000,
                  width: float = 1.0, soft_coupling: str = "l2", seed: int = 0, isolated: bool = False,
                  threads: Optional[int] = None) -> CostPoint:
    """Train ``steps`` steps of one configuration in this process and time them (with
    ``threads`` torch threads if given; the previous setting is restored)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(family, n_tasks, arch=arch, steps=steps, warmup=warmup, batch=batch, seq_len=seq_len,
                        device=device, epoch_seqs=epoch_seqs, width=width, soft_coupling=soft_coupling, seed=seed,
                        isolated=isolated)
    finally:
        torch.set_num_threads(before)


def _measure(family, n_tasks, *, arch, steps, warmup, batch, seq_len, device, epoch_seqs, width, soft_coupling,
             seed, isolated) -> CostPoint:

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: CUDA is not available on this machine")
    method = "fresh subprocess, peak RSS" if isolated else _reset_peak()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
        method = "torch.cuda.max_memory_allocated"
    else:
        base = current_rss_mb()
    cfg = model_config(family, arch, width, soft_coupling)
    model = build_model(cfg, n_tasks, 4, seq_len, [f"task{i}" for i in range(n_tasks)], seed=seed).to(dev)
    model.train()
    opt = build_optimizer(OptimConfig(), model)
    g = torch.Generator().manual_seed(seed)
    x = codes_to_onehot(torch.randint(0, 4, (batch, seq_len), generator=g, dtype=torch.uint8).to(dev),
                        torch.float32)
    y = torch.randint(0, 2, (batch, n_tasks), generator=g).float().to(dev)
    mask = torch.ones(batch, n_tasks, dtype=torch.bool, device=dev)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        per_task, _ = masked_bce_per_task(model(x), y, mask)
        loss = per_task.sum() + model.coupling_penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.apply_max_norm(7.0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mb()
    return CostPoint(family, n_tasks, step_s, batch / step_s, math.ceil(epoch_seqs / batch) * step_s, peak,
                     max(0.0, peak - base), model.n_params(), model.flops_per_sample(), method,
                     torch.get_num_threads())



def measure_isolated(family: str, n_tasks: int, **kw) -> CostPoint:
    """measure_point in a fresh interpreter, so that its peak memory is its own."""
    spec = json.dumps({"family": family, "n_tasks": n_tasks, **kw})
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "mtlsweep.analysis.cost_scaling", spec], capture_output=True, text=True,
                          env=env, cwd=str(root))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"cost measurement {family} T={n_tasks} failed: {tail}")
    return CostPoint(**json.loads(proc.stdout.strip().splitlines()[-1]))


def growth_exponent(ts: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) on log(T)."""
    t = np.asarray(ts, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = (t > 0) & (v > 0) & np.isfinite(v)
    if ok.sum() < 2 or len(set(t[ok])) < 2:
        return math.nan
    return float(np.polyfit(np.log(t[ok]), np.log(v[ok]), 1)[0])


@dataclass
class CostStudy:
    points: list[CostPoint]
    exponents: dict[str, dict[str, float]]       # family -> metric -> slope
    settings: dict
    files: list[Path]
    mlflow_run_id: Optional[str] = None


def exponents_of(points: Sequence[CostPoint]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for fam in dict.fromkeys(p.family for p in points):
        pts = sorted((p for p in points if p.family == fam), key=lambda p: p.n_tasks)
        ts = [p.n_tasks for p in pts]
        out[fam] = {m: growth_exponent(ts, [getattr(p, m) for p in pts]) for m in METRICS}
    return out


def run_study(tasks: Sequence[int], families: Sequence[str], *, isolate: bool = True, **kw) -> list[CostPoint]:
    for fam in families:
        model_config(fam, kw.get("arch", "small"))          # unknown family/arch fails before any run
    points = []
    for fam in families:
        for t in tasks:
            if fam == "soft" and t < 2:
                continue                  # a coupling needs two towers
            points.append(measure_isolated(fam, t, isolated=True, **kw) if isolate else measure_point(fam, t, **kw))
    return points


def plot_study(points: Sequence[CostPoint], exps: dict, path: Path, title: str) -> Path:
    panels = [("time_per_step_s", "time per step (s)"), ("samples_per_s", "samples / s"),
              ("epoch_s", "epoch time estimate (s)"), ("mem_mb", "peak memory above baseline (MiB)"),
              ("n_params", "parameters"), ("flops_per_sample", "FLOPs / sample (forward)")]
    fig, axes = subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, label) in zip(axes.ravel(), panels):
        for fam, e in exps.items():
            pts = sorted((p for p in points if p.family == fam), key=lambda p: p.n_tasks)
            vals = [max(getattr(p, key), 1e-9) for p in pts]
            ax.plot([p.n_tasks for p in pts], vals, marker="o", label=f"{fam} (slope {e[key]:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("number of tasks T")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def write_study(study: CostStudy, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "cost_scaling.csv"
    fields = list(asdict(study.points[0]))
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for p in study.points:
            w.writerow(asdict(p))
    js = out_dir / "cost_scaling.json"
    js.write_text(json.dumps({"settings": study.settings, "exponents": study.exponents,
                              "points": [asdict(p) for p in study.points]}, indent=1))
    s = study.settings
    png = plot_study(study.points, study.exponents, out_dir / "cost_scaling.png",
                     f"training cost vs T: arch {s['arch']}, batch {s['batch']}, length {s['seq_len']}, {s['device']}")
    return [table, js, png]


def cost_scaling(tasks: Sequence[int], families: Sequence[str], *, arch: str = "small", steps: int = 10,
                 warmup: int = 2, batch: int = 128, seq_len: int = 600, device: str = "cpu",
                 epoch_seqs: int = 100_000, width: float = 1.0, soft_coupling: str = "l2", isolate: bool = True,
                 threads: Optional[int] = None, out: str | Path = "workspace/analysis/cost",
                 publish: Optional[Callable[..., str]] = None) -> CostStudy:
    if arch not in ARCHS:
        raise DataError(f"--arch: unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
    if not tasks or any(t < 1 for t in tasks):
        raise DataError(f"--tasks: task counts must be >= 1, got {list(tasks)}")
    if steps < 1 or batch < 1 or seq_len < 1 or warmup < 0:
        raise DataError("--steps, --batch and --seq-len must be >= 1 and --warmup >= 0")
    if soft_coupling not in ("l2", "trace_norm", "cross_stitch"):
        raise DataError(f"--soft-coupling: must be l2, trace_norm or cross_stitch, got {soft_coupling!r}")
    settings = {"arch": arch, "threads": threads, "steps": steps, "warmup": warmup, "batch": batch,
                "seq_len": seq_len, "device": device, "epoch_seqs": epoch_seqs, "width": width,
                "soft_coupling": soft_coupling, "isolate": isolate,
                "tasks": list(tasks), "families": list(families)}
    kw = {k: settings[k] for k in ("arch", "threads", "steps", "warmup", "batch", "seq_len", "device",
                                   "epoch_seqs", "width", "soft_coupling")}
    points = run_study(sorted(set(tasks)), list(families), isolate=isolate, **kw)
    if not points:
        raise DataError("nothing to measure (soft needs T >= 2)")
    study = CostStudy(points, exponents_of(points), settings, [])
    study.files = write_study(study, Path(out))
    if publish is not None:
        metrics = [(f"cost/{p.family}/{m}", float(getattr(p, m)), p.n_tasks) for p in points for m in METRICS]
        metrics += [(f"cost/{fam}/exponent/{m}", v, 0) for fam, e in study.exponents.items() for m, v in e.items()]
        study.mlflow_run_id = publish(f"cost scaling {arch}", kind="cost", tags={"arch": arch}, params=settings,
                                      metrics=metrics, artifacts=study.files)
    return study


if __name__ == "__main__":
    # Worker of measure_isolated: one configuration, its CostPoint as JSON on the last line.
    spec = json.loads(sys.argv[1])
    print(json.dumps(asdict(measure_point(**spec))))
