"""Analyses in MLflow: finding a run's directory from its run id, and recording an analysis
(CKA similarity, filters to motifs, cost scaling) as a finished run of its own (role=analysis).

mtlsweep.analysis knows nothing of MLflow: its commands take ``locate`` and ``publish``
callables, and the app passes these.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mtlsweep.config import tags as tag
from mtlsweep.config.tags import Role
from mtlsweep.data.errors import DataError
from mtlsweep.mlflow_server.run_logger import get_or_create_experiment, param_value
from mtlsweep.mlflow_server.runs_view import end_run
from mtlsweep.mlflow_server.server import check_reachable, resolve_tracking_uri


def run_dir_of(ref: str, tracking_uri: Optional[str] = None) -> tuple[Path, str]:
    """(run directory, run id) of an MLflow run id, from the run's ``run_dir`` tag."""
    uri = resolve_tracking_uri(None, tracking_uri)
    check_reachable(uri)
    try:
        run = MlflowClient(uri).get_run(ref)
    except MlflowException:
        raise DataError(f"{ref}: neither a run directory (with best.pt) nor an MLflow run id at {uri}") from None
    run_dir = run.data.tags.get(tag.RUN_DIR)
    if not run_dir:
        raise DataError(f"MLflow run {ref}: has no run_dir tag pointing to its run directory")
    return Path(run_dir), ref


def locator(tracking_uri: Optional[str] = None) -> Callable[[str], tuple[Path, str]]:
    return functools.partial(run_dir_of, tracking_uri=tracking_uri)


def log_analysis_run(tracking_uri: str, experiment: str, run_name: str, *, kind: str,
                     tags: dict[str, str], params: dict[str, object],
                     metrics: Sequence[tuple[str, float, int]], artifacts: Sequence[Path]) -> str:
    """One finished MLflow run holding an analysis (role=analysis); returns its id.
    ``metrics`` are (key, value, step) triples."""
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp_id = get_or_create_experiment(client, experiment)
    all_tags = {tag.ROLE: Role.ANALYSIS, "analysis": kind, **{k: str(v) for k, v in tags.items()}}
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    rid = run.info.run_id
    try:
        now = int(time.time() * 1000)
        ps = [Param(k, param_value(v)) for k, v in params.items()]
        ms = [Metric(k, float(v), now, int(s)) for k, v, s in metrics if math.isfinite(float(v))]
        for i in range(0, len(ps), 100):
            client.log_batch(rid, params=ps[i:i + 100])
        for i in range(0, len(ms), 1000):
            client.log_batch(rid, metrics=ms[i:i + 1000])
        for p in artifacts:
            client.log_artifact(rid, str(p))
    except BaseException:
        end_run(client, rid, "FAILED")
        raise
    end_run(client, rid, "FINISHED")
    return rid


def publisher(tracking_uri: Optional[str], experiment: str) -> Optional[Callable[..., str]]:
    """``publish(run_name, kind=, tags=, params=, metrics=, artifacts=) -> run id`` for an
    analysis, or None without a tracking URI."""
    if not tracking_uri:
        return None
    return functools.partial(log_analysis_run, tracking_uri, experiment)
