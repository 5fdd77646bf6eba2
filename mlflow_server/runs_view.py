"""The view the MLflow UI opens an mtlsweep experiment's runs table with: the family, then the
headline metrics under short names (auroc, d_auroc, improved, converged, params), then role and
arm, sorted best first, on the UI's model-training side. MLflow keeps shared views as experiment
tags (``mlflow.sharedViewState.<key>``, the view's JSON) and opens one from
``#/experiments/<id>/runs?viewStateShareKey=<key>``.

MLflow 3.17's UI picks its GenAI or model-training side from the ``workflowType`` URL parameter,
else from the browser's own choice (local storage ``mlflow.workflowType_v1``, default GenAI); the
experiment's ``mlflow.experimentKind`` tag is not read for it. So every link mtlsweep prints
carries ``workflowType=machine_learning``."""
from __future__ import annotations

import json
import os
import shlex
from contextlib import contextmanager
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
from mlflow.tracking import MlflowClient

from mtlsweep.config import tags as tag

VIEW_KEY = "mtlsweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
ML_SIDE = "workflowType=machine_learning"
SORT_METRIC = tag.AUROC
# (kind, key, width in px): widths that show each header and value whole ("kmer_linear", "converged",
# a 9-digit parameter count, "baseline_candidate"). At 1600 px all fit, and the family and the
# headline metrics still do beside the Assistant panel (the UI opens it on a browser's first visit to
# a local server), a vertical scrollbar included.
COLUMNS = (("tags", tag.FAMILY, 92), ("metrics", tag.AUROC, 76), ("metrics", tag.D_AUROC, 78),
           ("metrics", tag.IMPROVED, 82), ("metrics", tag.CONVERGED_METRIC, 90), ("metrics", tag.PARAMS, 96),
           ("tags", tag.ROLE, 130), ("tags", tag.ARM, 90))
# The UI's own columns (ag-grid ids): the name and start time, pinned left, sized for a 25-character
# name and "37 seconds ago"; the duration, movable, goes after ours.
PINNED_COLUMNS = (("attributes.`Run Name`", 196), ("runDateAndNestInfo", 136))
LAST_COLUMNS = (("duration", 70),)


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"       # the MLflow UI's column id


def view_state() -> dict:
    """selectedColumns shows the columns; columnOrder and columnWidths (ag-grid's column state,
    applied in that order) put the family first, before the metrics group, and size every column."""
    ours = [(_column(kind, key), width) for kind, key, width in COLUMNS]
    state = (*PINNED_COLUMNS, *ours, *LAST_COLUMNS)
    return {"selectedColumns": [c for c, _ in ours],
            "columnOrder": [c for c, _ in state], "columnWidths": dict(state),
            "orderByKey": _column("metrics", SORT_METRIC), "orderByAsc": False}


def ensure_view(client: MlflowClient, experiment_id: str) -> None:
    value = json.dumps(view_state(), separators=(",", ":"))
    exp = client.get_experiment(experiment_id)
    if exp.tags.get(VIEW_TAG) != value:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)


def runs_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at ``ui`` (http://host:port), with the view."""
    return (f"{ui.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs"
            f"?viewStateShareKey={VIEW_KEY}&{ML_SIDE}")


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """One run's page, on the model-training side (MLflow's own "View run" link opens it as a
    GenAI evaluation)."""
    return f"{ui.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}?{ML_SIDE}"


def how_to_open(tracking_uri: str, experiment_id: str, mlflow: str = "mlflow") -> str:
    """One line telling a user how to see the experiment's runs table: the URL on a tracking
    server, else the `mlflow ui` command for the local store and the URL it will serve."""
    if tracking_uri.startswith(("http://", "https://")):
        return runs_url(tracking_uri, experiment_id)
    return (f"`{mlflow} ui --backend-store-uri {shlex.quote(tracking_uri)} --port 5000`, then "
            f"{runs_url('http://127.0.0.1:5000', experiment_id)}")


@contextmanager
def _mlflow_link_suppressed():
    name = MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name
    before = os.environ.get(name)
    os.environ[name] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED", *, end_time: Optional[int] = None,
            name: Optional[str] = None, experiment_id: Optional[str] = None, echo=print) -> None:
    """``client.set_terminated`` with the "View run" line MLflow prints at a run's end (on a
    tracking server, unless the user silenced it) pointing at the model-training side."""
    quiet = MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get()
    with _mlflow_link_suppressed():
        client.set_terminated(run_id, status, end_time=end_time)
    uri = client.tracking_uri
    if quiet or not uri.startswith(("http://", "https://")):
        return
    if name is None or experiment_id is None:
        info = client.get_run(run_id).info
        name, experiment_id = info.run_name, info.experiment_id
    parts = urlsplit(uri)
    ui = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))     # no credentials in a printed link
    echo(f"🏃 View run {name} at: {run_url(ui, experiment_id, run_id)}")
