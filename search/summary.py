"""The end of a sweep: best run per family against the baseline, printed and logged to the
sweep's parent run."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from mlflow.tracking import MlflowClient

from mtlsweep.mlflow_server.compare import collect, render_text, report_title, rich_table, table_rows, write_report
from mtlsweep.mlflow_server.runs_view import how_to_open


def summarize_sweep(tracking_uri: str, experiment: str, parent_run_id: str, out_dir: Path, log=print) -> list[dict]:
    """Print the sweep's table, write its report to ``out_dir``
    (``workspace/compare/<sweep>/``) and log the report and summary metrics to the parent run."""
    client = MlflowClient(tracking_uri)
    runs = collect(client, experiment, sweep=parent_run_id)
    rows = table_rows(runs, client=client)
    log(render_text(rows))
    metrics = {}
    for r in rows:
        if r.role.startswith("best "):
            fam = r.family
            for k in ("auroc_mean", "delta_auroc_mean", "tasks_improved", "epoch_s"):
                v = getattr(r, k)
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    metrics[f"summary/{fam}/{k}"] = float(v)
    for k, v in metrics.items():
        client.log_metric(parent_run_id, k, v)
    for path in write_report(rows, runs, out_dir, report_title(client, experiment, parent_run_id)):
        client.log_artifact(parent_run_id, str(path))
    log(f"report: {out_dir / 'comparison.html'} (table: comparison.csv)")
    log(f"runs table: {how_to_open(tracking_uri, client.get_experiment_by_name(experiment).experiment_id)}")
    return [r.values() for r in rows]


def summarize_results(results, objective: str, out_dir: Path, log=print) -> list[dict]:
    """The end of a sweep that tracks nothing: its trials ranked by their objective, from Tune's own
    results (training computed the deltas against each trial's baseline), each with its arm and
    whether it converged; printed and written to ``out_dir/trials.csv``."""

    rows = []
    for r in results:
        m, cfg = r.metrics or {}, r.config or {}
        if not m:
            continue
        converged = m.get("cert/converged")
        rows.append({"trial": m.get("trial_id", "?"), "arm": str(cfg.get("variant") or cfg.get("family") or "-"),
                     "epochs": int(m.get("epoch", 0)), "val_auroc": m.get("val/auroc_mean", math.nan),
                     "delta_auroc": m.get("val/delta_auroc_mean", math.nan),
                     "tasks_improved": m.get("val/tasks_improved", math.nan), "error": "failed" if r.error else "",
                     "converged": "-" if converged is None else "yes" if converged else "no"})
    key = objective if objective in ("val/auroc_mean", "val/delta_auroc_mean") else "val/auroc_mean"
    column = "delta_auroc" if key == "val/delta_auroc_mean" else "val_auroc"
    rows.sort(key=lambda x: -(x[column] if isinstance(x[column], float) and math.isfinite(x[column]) else -math.inf))
    columns = ["trial", "arm", "epochs", "val_auroc", "delta_auroc", "tasks_improved", "converged", "error"]

    def fmt(v) -> str:
        return "-" if isinstance(v, float) and math.isnan(v) else f"{v:+.4f}" if isinstance(v, float) and v < 0 \
            else f"{v:.4f}" if isinstance(v, float) else str(v)
    log(rich_table(f"trials ranked by {key} (untracked: Tune's results)", columns,
                   [[fmt(x[c]) for c in columns] for x in rows], ("trial", "arm", "converged", "error")))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "trials.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    log(f"written: {out_dir / 'trials.csv'}")
    return rows
