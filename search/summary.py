"""The end of a sweep: best run per family against the baseline (and, for several objectives,
the Pareto front), printed and logged to the sweep's parent run."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from mlflow.tracking import MlflowClient

from mtlsweep.analysis.pareto import SHORTFALL_METRIC, ObjectiveSet, pareto_front, parse_objectives
from mtlsweep.mlflow_server.compare import (
    collect,
    render_text,
    report_title,
    rich_table,
    runs_front,
    table_rows,
    write_report,
)
from mtlsweep.mlflow_server.runs_view import how_to_open


def summarize_sweep(tracking_uri: str, experiment: str, parent_run_id: str, out_dir: Path, log=print) -> list[dict]:
    """Print the sweep's table, write its report to ``out_dir``
    (``workspace/compare/<sweep>/``) and log the report and summary metrics to the parent run."""
    client = MlflowClient(tracking_uri)
    runs = collect(client, experiment, sweep=parent_run_id)
    front = runs_front(client, experiment, parent_run_id, runs)     # the objectives the sweep recorded
    rows = table_rows(runs, client=client, front=front)
    log(render_text(rows, front=front))
    metrics = {}
    for r in rows:
        if r.role.startswith("best "):
            fam = r.family
            for k in ("auroc_mean", "delta_auroc_mean", "tasks_improved", "epoch_s"):
                v = getattr(r, k)
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    metrics[f"summary/{fam}/{k}"] = float(v)
    if front is not None:
        metrics["summary/front_size"] = float(len(front.front))
        metrics["summary/front_uncertified"] = float(len(front.uncertified))
        metrics["summary/infeasible"] = float(len(front.infeasible))
    for k, v in metrics.items():
        client.log_metric(parent_run_id, k, v)
    for path in write_report(rows, runs, out_dir, report_title(client, experiment, parent_run_id), front=front):
        client.log_artifact(parent_run_id, str(path))
    log(f"report: {out_dir / 'comparison.html'} (table: comparison.csv)")
    log(f"runs table: {how_to_open(tracking_uri, client.get_experiment_by_name(experiment).experiment_id)}")
    return [r.values() for r in rows]


def summarize_results(results, objective: "str | ObjectiveSet", out_dir: Path, log=print) -> list[dict]:
    """The end of a sweep that tracks nothing: its trials ranked by their objective, from Tune's own
    results (training computed the deltas against each trial's baseline), each with its arm and
    whether it converged; with several objectives (or a constraint) each says whether it is on
    the Pareto front of the trials' last reported values. Printed and written to ``out_dir/trials.csv``."""
    objs = objective if isinstance(objective, ObjectiveSet) else parse_objectives(objective, flag="--objective")
    objective = objs.objectives[0].metric

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
                     "converged": "-" if converged is None else "yes" if converged else "no",
                     **{o.name: m.get(o.metric, math.nan) for o in objs.objectives},
                     "worst_shortfall": m.get(SHORTFALL_METRIC, math.nan)})
    extra = [o.name for o in objs.objectives if o.name not in ("auroc_mean", "delta_auroc_mean")] if objs.multi else []
    if objs.multi:
        _mark_front(rows, objs)
    key = objective if objective in ("val/auroc_mean", "val/delta_auroc_mean") else "val/auroc_mean"
    column = "delta_auroc" if key == "val/delta_auroc_mean" else "val_auroc"
    rows.sort(key=lambda x: -(x[column] if isinstance(x[column], float) and math.isfinite(x[column]) else -math.inf))
    columns = ["trial", "arm", "epochs", "val_auroc", "delta_auroc", "tasks_improved", *extra, "converged", "error"]
    if objs.multi:
        columns[-2:-2] = ["worst_shortfall"] * (objs.constraint_delta is not None) + ["front"]

    def fmt(v) -> str:
        return "-" if isinstance(v, float) and math.isnan(v) else f"{v:+.4f}" if isinstance(v, float) and v < 0 \
            else f"{v:.4f}" if isinstance(v, float) else str(v)
    log(rich_table(f"trials ranked by {key} (untracked: Tune's results)", columns,
                   [[fmt(x[c]) for c in columns] for x in rows], ("trial", "arm", "converged", "error", "front")))
    if objs.multi:
        log(f"front: Pareto front over {objs.describe()}, of the trials that ended without error, on their last "
            "reported epoch" + ("; infeasible: breaks the constraint" if objs.constraint_delta is not None else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "trials.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    log(f"written: {out_dir / 'trials.csv'}")
    return rows


def _mark_front(rows: list[dict], objs: ObjectiveSet) -> None:
    """Each row's ``front``: yes, infeasible (breaks the constraint), or "" (dominated, failed or unmeasured).
    With nothing tracked there is no certificate: every trial that ended without error counts."""
    for x in rows:
        x["front"] = "" if objs.feasible(x["worst_shortfall"]) else "infeasible"
    pool = [x for x in rows if not x["error"] and not x["front"]]
    for i in pareto_front([[x[o.name] for o in objs.objectives] for x in pool], [o.mode for o in objs.objectives]):
        pool[i]["front"] = "yes"
