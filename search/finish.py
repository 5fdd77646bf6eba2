"""Finishing the runs that are not converged: each trained longer from its last checkpoint, in
its own MLflow run (training.certificates says how much longer), as Ray tasks so that several
train at once and, on a cluster, land on the workers.

A study calls this on the runs its table reads (each arm's chosen run and the baselines), so a
verdict never rests on a run stopped by the epoch cap.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import ray

from mtlsweep.config import tags as tag
from mtlsweep.config.run import load_config
from mtlsweep.mlflow_server.attach import continue_request
from mtlsweep.training.certificates import finish_overrides
from mtlsweep.training.run import execute


def unfinished(rows: Sequence) -> list:
    """The runs (compare.RunRow) whose certificate says they did not converge and that can be
    resumed (an epoch-trained run with its directory and last checkpoint)."""
    out = []
    for r in rows:
        run_dir = Path(r.tags.get(tag.RUN_DIR, ""))
        if r.converged is False and (run_dir / "last.pt").is_file() and (run_dir / "metrics.json").is_file():
            out.append(r)
    return out


def finish_runs(rows: Sequence, uri: str, cpus: float = 1.0, gpus: float = 0.0, log: Callable = print) -> int:
    """Train every unconverged run of ``rows`` longer, at once as the cluster allows; returns how
    many were continued. A run still not converged afterwards keeps its certificate saying so
    (`finish_until_converged` tries again)."""
    @ray.remote(num_cpus=cpus, num_gpus=gpus)
    def _continue(run_dir: str, overrides: dict, uri: str) -> bool:
        result = execute(continue_request(Path(run_dir), overrides, uri, threads=max(1, int(cpus))))
        return bool(result.convergence and result.convergence.converged)

    todo = unfinished(rows)
    pending = []
    for r in todo:
        run_dir = Path(r.tags[tag.RUN_DIR])
        payload = json.loads((run_dir / "metrics.json").read_text())
        cert = payload.get("convergence") or {}
        cfg = load_config(run_dir / "config.yaml")         # its budget as last run (a resume may have raised it)
        overrides = finish_overrides(int(cert.get("best_epoch") or payload["best_epoch"]),
                                     int(cert.get("epochs_run") or payload["epochs_run"]),
                                     cfg.train.epochs, cfg.train.patience)
        log(f"finishing {r.name} ({r.family}): not converged, resumed with "
            + ", ".join(f"{k}={v}" for k, v in overrides.items()))
        pending.append(_continue.remote(str(run_dir), overrides, uri))
    done = ray.get(pending)
    if todo:
        log(f"finished {len(todo)} run(s): {sum(done)} converged, {len(todo) - sum(done)} still not")
    return len(todo)


def finish_until_converged(read_rows: Callable[[], Sequence], uri: str, rounds: int = 3, cpus: float = 1.0,
                           gpus: float = 0.0, log: Callable = print) -> int:
    """finish_runs on ``read_rows()`` (read again after each round, so certificates are current)
    until every run converged or ``rounds`` rounds ran; returns the runs still not converged."""
    for _ in range(rounds):
        if not finish_runs(read_rows(), uri, cpus, gpus, log):
            return 0
    left = unfinished(read_rows())
    for r in left:
        log(f"not converged after {rounds} rounds: {r.name} ({r.tags.get('convergence', '')})")
    return len(left)
