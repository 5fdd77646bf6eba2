"""`mtlsweep demo` (`make demo`): the main job on the embedded defaults.

Synthetic benchmark with known task groups and a known ceiling -> single-task baseline towers,
tuned by their own search over the trunk, the learning rate and the weight decay -> a sweep of
hard/branched/soft families over the same dimensions and sharing strength, initialization,
warm-start task and schedules (Optuna on an embedded Ray; every family the same number of
trials) -> the reference families fitted beside it -> comparison table (certificates,
parameters) -> exported configs -> the command that opens the MLflow UI. Safe to run twice: the
data and the baselines are reused, each run starts a new sweep name, nothing is overwritten.

No trial is pruned: with three trials a family ASHA would judge a family on one or two points,
and a pruned trial says nothing about its family. The budget (8,000 sequences, at most 40
epochs, early stopping, narrow towers) is chosen so that on 2 CPU cores the whole demo takes
about 10 minutes.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mlflow.tracking import MlflowClient

from mtlsweep.config.run import load_config
from mtlsweep.data.synthetic import spec_from_dict, write_synthetic, written_with
from mtlsweep.mlflow_server.runs_view import how_to_open
from mtlsweep.mlflow_server.server import resolve_tracking_uri
from mtlsweep.search.driver import SweepArgs, run_sweep
from mtlsweep.search.export import export_best

REPO = Path(__file__).resolve().parents[1]
DEMO_SPACE = REPO / "search" / "spaces" / "demo.yaml"
DEMO_BASE = REPO / "search" / "configs" / "demo.yaml"
# Strong motifs (min_ic) and Basset-like but higher prevalence so that small models learn the
# tasks within a few CPU minutes.
DEMO_DATA = {"n_tasks": 16, "n_groups": 4, "n_seqs": 8000, "seq_len": 120, "min_ic": 14.0, "label_noise": 0.01,
             "prevalence_min": 0.1, "prevalence_median": 0.15, "prevalence_max": 0.3, "seed": 0}


@dataclass
class DemoSettings:
    workspace: Path
    data: dict = field(default_factory=lambda: dict(DEMO_DATA))
    num_samples: int = 9               # three per family; the baseline's search gets as many
    base_overrides: list[str] = field(default_factory=list)
    name: Optional[str] = None
    tracking_uri: Optional[str] = None
    experiment: str = "mtlsweep-demo"
    top: int = 3
    references: tuple = ("motif_gbm", "kmer_linear")     # fitted once beside the sweep, same baseline


def _step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def ensure_data(ws: Path, knobs: dict) -> Path:
    out = ws / "synth"
    store = out / "store.h5"
    spec = spec_from_dict(knobs)
    if store.is_file():
        if not written_with(out / "truth.json", spec):
            raise FileExistsError(f"{out}: holds a benchmark written from other knobs than the demo's; move it away "
                                  "or pass another --workspace")
        print(f"reusing {store}")
        return store
    t0 = time.time()
    write_synthetic(spec, out)
    print(f"wrote {out} ({spec.n_tasks} tasks in {spec.n_groups} groups, {spec.n_seqs} x {spec.seq_len} bp) "
          f"in {time.time() - t0:.1f}s")
    return store


def demo_base(ws: Path, store: Path, experiment: str, overrides: list[str]) -> Path:
    """The demo's base config with this workspace's absolute paths, written beside the data."""
    cfg = load_config(DEMO_BASE, [f"data.path={store}", f"train.out_dir={ws / 'runs'}",
                                  f"tracking.experiment={experiment}", *overrides])
    path = ws / "demo_base.yaml"
    path.write_text("# written by `mtlsweep demo` from search/configs/demo.yaml\n" + cfg.to_yaml())
    return path


def run_demo(workspace: Path | str = "workspace", settings: Optional[DemoSettings] = None) -> int:
    s = settings or DemoSettings(Path(workspace))
    ws = s.workspace.resolve()
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _step("1/4 synthetic benchmark (real JASPAR motifs, known task groups)")
    store = ensure_data(ws, s.data)
    base = demo_base(ws, store, s.experiment, s.base_overrides)
    uri = resolve_tracking_uri(None, s.tracking_uri, default_dir=str(ws))
    name = s.name or time.strftime("demo-%Y%m%d-%H%M%S")

    _step(f"2/4 + 3/4 single-task baselines (their own search), then sweep {name}: {s.num_samples} trials, "
          "Optuna on Ray, ending in its comparison against the baseline")
    result = run_sweep(SweepArgs(base=str(base), space=str(DEMO_SPACE), num_samples=s.num_samples,
                                 max_concurrent=max(1, os.cpu_count() or 1), cpus_per_trial=1, name=name,
                                 tracking_uri=uri, workspace=str(ws), scheduler="none",
                                 references=s.references))

    _step("4/4 best configurations, exported for `mtlsweep train`")
    for p in export_best(uri, s.experiment, ws / "export" / name, sweep=result.parent_run_id, top=s.top):
        print(f"  {p}")

    exp = MlflowClient(uri).get_experiment_by_name(s.experiment)
    venv_bin = Path(sys.executable).parent
    print(f"\ndone in {time.time() - t0:.0f}s ({result.n_trials} trials, {result.n_errors} failed).")
    print(f"Open the results in the MLflow UI: {how_to_open(uri, exp.experiment_id, shlex.quote(str(venv_bin / 'mlflow')))}")
    return 0 if result.n_errors == 0 else 1
