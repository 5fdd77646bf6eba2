"""The end of a sweep: best run per family against the baseline, printed and logged to the
sweep's parent run."""
from __future__ import annotations

import math
from pathlib import Path

from mlflow.tracking import MlflowClient

from mtlsweep.mlflow_server.compare import collect, render_text, report_title, table_rows, write_report


def summarize_sweep(tracking_uri: str, experiment: str, parent_run_id: str, out_dir: Path, log=print) -> list[dict]:
    """Print the sweep's table, write its report to ``out_dir`` (the README's
    ``workspace/compare/<sweep>/``) and log the report and summary metrics to the parent run."""
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
    for path in write_report(rows, runs, out_dir, report_title(client, experiment, parent_run_id)):
        client.log_artifact(parent_run_id, str(path))
    log(f"report: {out_dir / 'comparison.html'} (table: comparison.csv)")
    from mtlsweep.mlflow_server.runs_view import how_to_open
    log(f"runs table: {how_to_open(tracking_uri, client.get_experiment_by_name(experiment).experiment_id)}")
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
