"""The GPU path, measured in one prepared run, ratios taken within the run:

1. engine: the Basset trunk (hard sharing, 600 bp) at T = 164, one training step (forward,
   backward, Adam) for fp32 and bf16 autocast, torch.compile off and on: samples/s, peak device
   memory, and model FLOP utilisation (3 x forward FLOPs per sample x samples/s against the
   card's dense bf16 peak); and the data feed: the same steps fed from a store split through
   `data.store.to_device` (pinned, non-blocking, one-hot on the device) against a batch already
   on the device, i.e. the share of the step the device is kept busy.
2. towers: the batched single-task towers against the hard model at T = 16 and 164.
3. packing: 1, 2 and 4 trials of a real Tune sweep on one device (`--gpus-per-trial` 1, 0.5,
   0.25; on a CPU-only machine the cores are shared the same way): the sum of the concurrent
   trials' samples/s, as a ratio to one trial's.

Without CUDA the same code runs on the CPU at the `--quick` sizes (CI runs it so that the script
is never dead); MFU is then not printed, there being no peak to hold it against.

    .venv/bin/python bench/gpu.py [--quick] [--sections engine,towers,packing] [--out bench-gpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtlsweep.config.run import ModelConfig  # noqa: E402
from mtlsweep.data.store import SplitArrays, to_device  # noqa: E402
from mtlsweep.models import build_model  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets; the name is matched
# against torch.cuda.get_device_name().
BF16_PEAK = {"H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "A10": 125e12}


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in BF16_PEAK.items() if k in name), None)


def model_of(family: str, n_tasks: int, seq_len: int, device) -> torch.nn.Module:
    """The Basset trunk shared by every task (hard), or one tower per task (single)."""
    sharing = {"shared_layers": "all" if family == "hard" else 0}
    cfg = ModelConfig.model_validate({"arch": {"preset": "basset"}, "sharing": sharing, "backend": "batched"})
    return build_model(cfg, n_tasks=n_tasks, in_channels=4, seq_len=seq_len, task_names=None, seed=0).to(device)


def fake_split(n: int, seq_len: int, n_tasks: int) -> SplitArrays:
    rng = np.random.default_rng(0)
    return SplitArrays(rng.integers(0, 4, (n, seq_len), dtype=np.uint8),
                       (rng.random((n, n_tasks)) < 0.1).astype(np.int8))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, forward, batch_of, steps: int, device, bf16: bool) -> float:
    """Seconds per step over `steps` timed steps (after two untimed ones that also compile)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        x, y = batch_of()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(2):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def engine(device, size: dict) -> dict:
    T, L, B, steps = size["tasks"], size["seq_len"], size["batch"], size["steps"]
    split = fake_split(B * 4, L, T)
    name, peak = peak_flops(device)
    out = {"device": name, "bf16_peak_flops": peak, "tasks": T, "seq_len": L, "batch": B, "variants": {}}
    x0, y0, _ = to_device(split, np.arange(B), device)
    rows = np.arange(split.n)
    for precision in ("fp32", "bf16"):
        for compiled in (False, True):
            model = model_of("hard", T, L, device)
            flops = model.flops_per_sample()
            forward = torch.compile(model) if compiled else model
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t_compile = time.perf_counter()
            s_resident = time_steps(model, forward, lambda: (x0, y0), steps, device, precision == "bf16")
            t_compile = time.perf_counter() - t_compile - steps * s_resident

            def fed():
                x, y, _ = to_device(split, np.random.choice(rows, B, replace=False), device)
                return x, y
            s_fed = time_steps(model, forward, fed, steps, device, precision == "bf16")
            rate = B / s_resident
            key = f"{precision}{'+compile' if compiled else ''}"
            out["variants"][key] = {
                "samples_per_s": rate, "samples_per_s_fed": B / s_fed, "busy": s_resident / s_fed,
                "warmup_s": t_compile, "flops_per_sample": flops,
                "mfu": 3 * flops * rate / peak if peak else None,
                "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}
    base = out["variants"]["fp32"]["samples_per_s"]
    for v in out["variants"].values():
        v["vs_fp32"] = v["samples_per_s"] / base
    return out


def towers(device, size: dict) -> dict:
    out = {}
    for T in size["tower_tasks"]:
        split = fake_split(size["batch"], size["seq_len"], T)
        x, y, _ = to_device(split, np.arange(size["batch"]), device)
        rate = {}
        for family in ("hard", "single"):
            model = model_of(family, T, size["seq_len"], device)
            rate[family] = size["batch"] / time_steps(model, model, lambda: (x, y), size["steps"], device, False)
        out[str(T)] = {"hard_samples_per_s": rate["hard"], "towers_samples_per_s": rate["single"],
                       "towers_vs_hard": rate["single"] / rate["hard"]}
    return out


def packing(device, size: dict) -> dict:
    """A real Tune sweep per packing (tracking off): the summed samples/s of its concurrent trials."""
    from mtlsweep.data.synthetic import spec_from_dict, write_synthetic
    from mtlsweep.search.driver import SweepArgs, run_sweep
    gpu = device.type == "cuda"
    cpus = os.cpu_count() or 1
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic(spec_from_dict({"n_tasks": 16, "n_groups": 4, "n_seqs": size["pack_seqs"],
                                        "seq_len": 200, "seed": 0}), tmp / "data")
        base = tmp / "base.yaml"
        base.write_text(json.dumps({
            "data": {"path": str(tmp / "data" / "store.h5"), "batch_size": size["batch"]},
            # The sweep's fixed baseline trains one tower per task first: Basset-sized towers
            # would take the CPU fallback's whole budget, so it packs the motif trunk there.
            "model": {"arch": {"preset": "basset" if gpu else "motif"}, "sharing": {"shared_layers": "all"}},
            "train": {"epochs": size["pack_epochs"], "patience": size["pack_epochs"], "seed": 0,
                      "device": "cuda" if gpu else "cpu", "out_dir": str(tmp / "runs")},
            "tracking": {"enabled": False}}))
        space = tmp / "space.yaml"
        space.write_text(json.dumps({"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}))
        for n in (1, 2, 4):
            share = 1.0 / n
            args = SweepArgs(base=str(base), space=str(space), num_samples=n, max_concurrent=n,
                             cpus_per_trial=1 if gpu else cpus / n, gpus_per_trial=share if gpu else 0,
                             scheduler="none", name=f"pack{n}", workspace=str(tmp / "ws"), baseline="fixed",
                             verbose=0)
            result = run_sweep(args, log=lambda *_: None)
            # Each trial's training rate after its first (warm-up) epoch, from its run directory; the
            # shares make the n trials run at once, so their rates add up to the device's throughput.
            rates = [float(np.mean([h["cost/samples_per_s"] for h in json.loads(f.read_text())["history"][1:]]))
                     for f in (tmp / "runs" / f"pack{n}").glob("*/metrics.json")]
            out[str(n)] = {"trials": n, "share": share, "total_samples_per_s": float(sum(rates)),
                           "finished": len(rates), "errors": result.n_errors}
    one = out["1"]["total_samples_per_s"] or float("nan")
    for v in out.values():
        v["vs_one_trial"] = v["total_samples_per_s"] / one
    return out


SIZES = {"full": dict(tasks=164, seq_len=600, batch=256, steps=30, tower_tasks=(16, 164), pack_seqs=20000,
                      pack_epochs=3),
         "quick": dict(tasks=16, seq_len=600, batch=32, steps=3, tower_tasks=(4, 16), pack_seqs=2000,
                       pack_epochs=3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (what a CPU-only machine runs)")
    ap.add_argument("--sections", default="engine,towers,packing")
    ap.add_argument("--out", default="bench-gpu.json")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = SIZES["quick" if a.quick or device.type == "cpu" else "full"]
    wanted = [s for s in a.sections.split(",") if s]
    unknown = set(wanted) - {"engine", "towers", "packing"}
    if unknown:
        ap.error(f"--sections: unknown {', '.join(sorted(unknown))}; allowed: engine, towers, packing")
    report = {"torch": torch.__version__, "size": size}
    for name, fn in (("engine", engine), ("towers", towers), ("packing", packing)):
        if name in wanted:
            t0 = time.perf_counter()
            report[name] = fn(device, size)
            report[name]["seconds"] = time.perf_counter() - t0
    Path(a.out).write_text(json.dumps(report, indent=1))
    if "engine" in report:
        e = report["engine"]
        print(f"engine on {e['device']}: T={e['tasks']}, {e['seq_len']} bp, batch {e['batch']}")
        for k, v in e["variants"].items():
            mfu = f"{100 * v['mfu']:.1f} % MFU" if v["mfu"] is not None else "MFU n/a (no known peak)"
            mem = f"{v['peak_mem_mb']:.0f} MiB" if v["peak_mem_mb"] is not None else "-"
            print(f"  {k:13s} {v['samples_per_s']:9.0f} samples/s  {v['vs_fp32']:.2f}x fp32  {mfu}  "
                  f"busy {100 * v['busy']:.0f} % fed from the store  peak {mem}  warm-up {v['warmup_s']:.1f} s")
    for T, v in report.get("towers", {}).items():
        if T != "seconds":
            print(f"towers T={T}: {v['towers_vs_hard']:.2f}x the hard model's samples/s")
    for n, v in report.get("packing", {}).items():
        if n != "seconds":
            print(f"packing {n} trial(s) on one device: {v['vs_one_trial']:.2f}x one trial's samples/s "
                  f"({v['errors']} failed)")
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
