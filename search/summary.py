"""The end of a sweep: best run per family against the baseline, printed and logged to the
sweep's parent run."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from mtlsweep.mlflow_server.compare import (collect, figures, render_text, table_rows, write_csv, write_html)


def summarize_sweep(tracking_uri: str, experiment: str, parent_run_id: str, log=print) -> list[dict]:
    client = MlflowClient(tracking_uri)
    runs = collect(client, experiment, sweep=parent_run_id)
    rows = table_rows(runs, client=client)
    log(render_text(rows))
    metrics = {}
    for r in rows:
        if r["role"].startswith("best "):
            fam = r["family"]
            for k in ("auroc_mean", "delta_auroc_mean", "tasks_improved", "epoch_s"):
                v = r[k]
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    metrics[f"summary/{fam}/{k}"] = float(v)
    for k, v in metrics.items():
        client.log_metric(parent_run_id, k, v)
    with tempfile.TemporaryDirectory() as tmp:
        write_csv(rows, Path(tmp) / "comparison.csv")
        write_html(rows, figures(rows, runs), Path(tmp) / "comparison.html", f"sweep {parent_run_id}")
        client.log_artifacts(parent_run_id, tmp)
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
