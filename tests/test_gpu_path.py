"""The GPU path's code, run on the CPU so that it is never dead: bf16 autocast (the same
`torch.autocast` on the run's device), torch.compile, and bench/gpu.py's CPU fallback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from mtlsweep.training.engine import Trainer

REPO = Path(__file__).resolve().parents[1]


def _dtypes_seen(trainer: Trainer) -> set:
    """The dtypes of the logits the model returns, in training and in evaluation."""
    seen = set()
    trainer.model.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    return seen


def test_bf16_autocast_trains_on_cpu_and_keeps_metrics_fp32(tiny_config, signal_store_path, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(**{"train.precision": precision, "train.epochs": 3, "train.out_dir": str(tmp_path / precision)})
        trainer = Trainer(cfg, tmp_path / precision / "r", progress=False)
        seen = _dtypes_seen(trainer)
        result = trainer.fit()
        runs[precision] = result
        assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    bf16, fp32 = runs["bf16"].final_metrics["val/auroc_mean"], runs["fp32"].final_metrics["val/auroc_mean"]
    assert bf16 > 0.6 and abs(bf16 - fp32) < 0.05, (bf16, fp32)


def test_compiled_model_trains_like_the_eager_one(tiny_config, tmp_path):
    out = {}
    for compiled in (False, True):
        cfg = tiny_config(**{"train.compile": compiled, "train.epochs": 1, "train.steps_per_epoch": 10,
                             "train.out_dir": str(tmp_path / str(compiled))})
        trainer = Trainer(cfg, tmp_path / str(compiled) / "r", progress=False)
        assert isinstance(trainer.forward, torch._dynamo.eval_frame.OptimizedModule) == compiled
        out[compiled] = trainer.fit().final_metrics["val/auroc_mean"]
    assert abs(out[True] - out[False]) < 1e-3, out


def test_gpu_bench_runs_its_cpu_fallback_and_writes_its_report(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--quick", "--sections", "engine,packing",
                        "--out", str(tmp_path / "g.json")], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "g.json").read_text())
    variants = report["engine"]["variants"]
    assert set(variants) == {"fp32", "fp32+compile", "bf16", "bf16+compile"}
    assert all(v["samples_per_s"] > 0 and v["mfu"] is None for v in variants.values())   # no peak on a CPU
    assert variants["fp32"]["vs_fp32"] == 1.0 and "MFU n/a" in r.stdout
    # Packing ran real sweeps: every trial of each finished and reported its rate.
    packing = report["packing"]
    assert all(packing[n]["finished"] == int(n) and packing[n]["errors"] == 0 for n in ("1", "2", "4"))
    assert packing["1"]["vs_one_trial"] == 1.0 and packing["2"]["total_samples_per_s"] > 0
