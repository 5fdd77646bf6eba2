"""The view the MLflow UI opens an mtlsweep experiment's runs table with: family, role, arm,
best validation AUROC, its delta against the baseline and the tasks improved as columns,
sorted best first, on the UI's model-training side. MLflow keeps shared views as experiment tags (``mlflow.sharedViewState.<key>``,
the view's JSON) and opens one from ``#/experiments/<id>/runs?viewStateShareKey=<key>``."""
from __future__ import annotations

import json
import shlex
from urllib.parse import quote

from mlflow.tracking import MlflowClient

from mtlsweep.config import tags as tag

VIEW_KEY = "mtlsweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
SORT_METRIC = "best/val/auroc_mean"
TAG_COLUMNS = ("family", tag.ROLE, tag.ARM, tag.PROTOCOL)
METRIC_COLUMNS = (SORT_METRIC, "best/val/delta_auroc_mean", "best/val/tasks_improved", "oracle/val/auroc_mean",
                  "best/gap/auroc")


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"       # the MLflow UI's column id


def view_state() -> dict:
    columns = [*(_column("tags", t) for t in TAG_COLUMNS), *(_column("metrics", m) for m in METRIC_COLUMNS)]
    return {"selectedColumns": columns,
            "orderByKey": _column("metrics", SORT_METRIC), "orderByAsc": False}


def ensure_view(client: MlflowClient, experiment_id: str) -> None:
    value = json.dumps(view_state(), separators=(",", ":"))
    exp = client.get_experiment(experiment_id)
    if exp.tags.get(VIEW_TAG) != value:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)


def runs_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at ``ui`` (http://host:port), with the view."""
    # workflowType: the UI's model-training side (its own default is the GenAI side).
    return (f"{ui.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs"
            f"?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning")


def how_to_open(tracking_uri: str, experiment_id: str, mlflow: str = "mlflow") -> str:
    """One line telling a user how to see the experiment's runs table: the URL on a tracking
    server, else the `mlflow ui` command for the local store and the URL it will serve."""
    if tracking_uri.startswith(("http://", "https://")):
        return runs_url(tracking_uri, experiment_id)
    return (f"`{mlflow} ui --backend-store-uri {shlex.quote(tracking_uri)} --port 5000`, then "
            f"{runs_url('http://127.0.0.1:5000', experiment_id)}")
