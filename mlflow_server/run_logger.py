"""One training run as one MLflow run: params, per-epoch metrics in batches, deltas against
the single-task baseline, artifacts and plots. Plugs into training/ as a Callback."""
from __future__ import annotations

import csv
import html
import json
import math
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mtlsweep import plots
from mtlsweep.config import tags as tag
from mtlsweep.config.identity import baseline_fingerprint, model_family
from mtlsweep.config.run import RunConfig
from mtlsweep.config.tags import Role
from mtlsweep.data.task_keys import sanitize_names
from mtlsweep.mlflow_server.fast_logger import PENDING_ARTIFACTS, PENDING_STATUS, FastLogger, strip_userinfo
from mtlsweep.mlflow_server.runs_view import end_run, ensure_view
from mtlsweep.mlflow_server.server import check_reachable, redact_uri, sqlite_path
from mtlsweep.training.callbacks import Callback
from mtlsweep.training.metrics import baseline_array

# A run's certificates (training.certificates): converged yes/no and why; the ranges its tuned
# values were searched in (set by a sweep) and what a reference family tuned inside its own fit.
# Artifacts rendered at the end of a run. Sweep trials skip the learning curves: MLflow charts
# every logged metric's history itself, and each plot costs a trial ~0.3 s.
PLOTS = ("learning_curves", "schedule_weights", "auroc_vs_baseline")
TRIAL_PLOTS = ("schedule_weights", "auroc_vs_baseline")
PER_TASK_PREFIXES = ("val/auroc/", "val/auprc/", "schedule/weight/", "schedule/task_weight/", "test/auroc/",
                     "oracle/val/auroc/", "oracle/test/auroc/")
# Copied to best/... at each improving epoch: what the run is judged by, at its best epoch.
BEST_PREFIXES = ("val/", "train/auroc_mean", "gap/")
ORACLE_SPLITS = {"valid": "val", "test": "test"}


def oracle_metrics(oracle: Optional[dict], tasks: list[str]) -> dict[str, float]:
    """The data's ceiling (a synthetic benchmark's true motifs and rule) as metrics: per split its
    mean AUROC/AUPRC over the run's tasks, and per task its AUROC."""
    out: dict[str, float] = {}
    for split, short in ORACLE_SPLITS.items():
        per = (oracle or {}).get(split) or {}
        for metric in ("auroc", "auprc"):
            vals = [per[t][metric] for t in tasks if t in per and per[t].get(metric) is not None]
            if vals:
                out[f"oracle/{short}/{metric}_mean"] = float(np.mean(vals))
        out.update({f"oracle/{short}/auroc/{t}": float(per[t]["auroc"]) for t in tasks
                    if t in per and per[t].get("auroc") is not None})
    return out


# The experiment type MLflow 3 records: model training, not GenAI. (3.17's UI takes its side from
# the link's workflowType instead: runs_view.) Kinds a person may have chosen are kept.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
TRAINING_KINDS = {"custom_model_development", "finetuning", "forecasting", "classification", "regression", "automl"}
# The headline metrics (config/tags.py) of a best epoch: long name -> (short name, decimals kept);
# converged and params are logged at a run's end and start.
HEADLINE = {"best/val/auroc_mean": (tag.AUROC, 4), "best/val/delta_auroc_mean": (tag.D_AUROC, 4),
            "best/val/tasks_improved": (tag.IMPROVED, None)}


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """Short copies of a best epoch's metrics, rounded so that a runs-table column shows them whole."""
    return {short: round(metrics[k], nd) if nd else metrics[k] for k, (short, nd) in HEADLINE.items()
            if k in metrics and math.isfinite(metrics[k])}


def display_name(family: str, arm: Optional[str], given: Optional[str]) -> str:
    """``<family>-<arm>-<id>``: what the MLflow UI, `mtlsweep compare` and the sweep's report call a
    run. The id is the caller's name for it less any ``<sweep>/`` (a trial's Tune id, a baseline's
    fingerprint, a `train` run's directory), else a random one; a part the id already says (`train
    --name hard` of the hard family) is not said twice."""
    ident = (given or "").rsplit("/", 1)[-1] or uuid.uuid4().hex[:8]
    words = ident.split("-")
    return "-".join([*(p for p in dict.fromkeys((family, arm)) if p and p not in words), ident])


def artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment on a local database keeps artifacts: beside the database (MLflow's
    default, ``./mlruns``, is relative to whatever directory the process ran in); a server decides
    for itself (None)."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get("mlflow.experimentKind") not in TRAINING_KINDS:
            for k, v in EXPERIMENT_KIND.items():
                client.set_experiment_tag(exp.experiment_id, k, v)
        exp_id = exp.experiment_id
    else:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri),
                                              tags=EXPERIMENT_KIND)
        except MlflowException:
            exp = client.get_experiment_by_name(name)      # created meanwhile by a concurrent trial
            if exp is None:
                raise
            exp_id = exp.experiment_id
    ensure_view(client, exp_id)
    return exp_id


# per_task.csv's columns: what a person compares first, then the rest. MLflow's artifact view shows a
# .csv as a table and a .html page rendered; per_task.html is the same table rounded, best delta first.
PER_TASK_COLUMNS = ("task", "val_auroc", "baseline_val_auroc", "delta_val_auroc", "val_auprc", "test_auroc",
                    "val_n_pos", "val_n_neg", "key")
PAGE_COLUMNS = {"task": "task", "val_auroc": "AUROC", "baseline_val_auroc": "baseline AUROC",
                "delta_val_auroc": "delta", "val_auprc": "AUPRC", "test_auroc": "test AUROC"}


def per_task_rows(tasks: list[str], keys: dict[str, str], val, test, base: Optional[np.ndarray]) -> list[dict]:
    """One row per task (PER_TASK_COLUMNS): validation AUROC against the baseline's, AUPRC, test AUROC."""
    rows = []
    for i, t in enumerate(tasks):
        b = float(base[i]) if base is not None else math.nan
        rows.append({"task": t, "val_auroc": float(val.auroc[i]), "baseline_val_auroc": b,
                     "delta_val_auroc": float(val.auroc[i]) - b, "val_auprc": float(val.auprc[i]),
                     "test_auroc": float(test.auroc[i]) if test is not None else math.nan,
                     "val_n_pos": int(val.n_pos[i]), "val_n_neg": int(val.n_neg[i]), "key": keys[t]})
    return rows


def write_per_task_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PER_TASK_COLUMNS)
        w.writeheader()
        w.writerows({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    return path


def write_per_task_page(rows: list[dict], path: Path, title: str) -> Path:
    """per_task.csv as a page: the mean over tasks, tasks improved, then the tasks by delta (the
    MLflow UI shows it in the run's artifact view; no script, one inline style)."""
    def mean(col):
        vals = [r[col] for r in rows if math.isfinite(r[col])]
        return float(np.mean(vals)) if vals else math.nan
    cols = [c for c in PAGE_COLUMNS if c == "task" or any(math.isfinite(r[c]) for r in rows)]
    has_base = "delta_val_auroc" in cols
    ordered = sorted(rows, key=lambda r: -np.nan_to_num(r["delta_val_auroc"], nan=-np.inf)) if has_base else rows

    def cell(r, c):
        v = r[c]
        if c == "task":
            return f"<td>{html.escape(v)}</td>"
        if not math.isfinite(v):
            return "<td>-</td>"
        if c == "delta_val_auroc":
            return f'<td class="{"up" if v > 0 else "down" if v < 0 else ""}">{v:+.4f}</td>'
        return f"<td>{v:.4f}</td>"
    summary = f"mean AUROC {mean('val_auroc'):.4f} over {len(rows)} tasks"
    if has_base:
        improved = sum(r["delta_val_auroc"] > 0 for r in rows)
        summary += (f"; baseline {mean('baseline_val_auroc'):.4f}, delta {mean('delta_val_auroc'):+.4f}; "
                    f"{improved}/{len(rows)} tasks improved (sorted by delta)")
    head = "".join(f"<th>{PAGE_COLUMNS[c]}</th>" for c in cols)
    body = "".join("<tr>" + "".join(cell(r, c) for c in cols) + "</tr>" for r in ordered)
    path.write_text(
        "<!doctype html><meta charset=utf-8><style>body{font:13px sans-serif;margin:8px}"
        "table{border-collapse:collapse}th,td{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.up{color:#1a7f37}.down{color:#c62828}</style>"
        f"<h3>{html.escape(title)}</h3><p>{html.escape(summary)}</p><table><tr>{head}</tr>{body}</table>\n")
    return path


def param_value(v: Any) -> str:
    s = json.dumps(v) if v is None or isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= 6000 else s[:5990] + "...[cut]"


class MlflowRunLogger(Callback):
    """Creates (or continues) an MLflow run for a training run and records what the run reports:
    params, every epoch's metrics (the deltas against the run's baseline among them: training
    computes them), the certificate, artifacts and its end state."""

    def __init__(self, tracking_uri: str, experiment: str, cfg: RunConfig, *, run_name: Optional[str] = None,
                 parent_run_id: Optional[str] = None, tags: Optional[dict[str, str]] = None,
                 run_id: Optional[str] = None, spool_dir: Optional[Path] = None, async_: bool = True,
                 plots: Sequence[str] = PLOTS, stop_is_pause: bool = False):
        check_reachable(tracking_uri)
        self.plots = tuple(plots)
        self.stop_is_pause = stop_is_pause
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.cfg = cfg
        self.baseline: Optional[np.ndarray] = None     # the run's baseline AUROC per task (from its info)
        self.experiment_id = get_or_create_experiment(self.client, experiment)
        # A continued run keeps the role and tags it was created with (a sweep's trial resumed by
        # `mtlsweep train --resume` to train it longer stays that sweep's trial).
        all_tags = {tag.FAMILY: model_family(cfg), **({} if run_id else {tag.ROLE: Role.TRIAL})}
        all_tags.update(tags or {})
        if parent_run_id:
            all_tags[tag.PARENT] = parent_run_id
        # Epochs a continued run already logged (a trial killed after logging an epoch but before
        # its checkpoint replays that epoch on resume, with the same values): not sent twice.
        self.logged_epochs: set[int] = set()
        self.logged_keys: set[str] = set()      # the metrics a continued run already holds
        self.new_epochs = 0              # epochs this process trained and logged (a resumed run's new ones)
        self.continued = run_id is not None
        if run_id is None:
            arm = all_tags.get(tag.ARM) or all_tags.get(tag.VARIANT)
            all_tags[tag.RUN_NAME] = display_name(all_tags[tag.FAMILY], arm, run_name or all_tags.get(tag.RUN_NAME))
            run = self.client.create_run(self.experiment_id, tags=all_tags)
        else:
            self.logged_epochs = {m.step for m in self.client.get_metric_history(run_id, "val/auroc_mean")}
            run = self.client.get_run(run_id)
            self.logged_keys = set(run.data.metrics)
            if run.info.status != "RUNNING":      # a killed run resumed: running again
                self.client.update_run(run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.name = run.info.run_name
        self.tags = all_tags
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self.logger: Optional[FastLogger] = None
        self.async_ = async_
        self.keys: dict[str, str] = {}
        self.tasks: list[str] = []
        self.history: list[dict[str, float]] = []

    def _fast(self, run_dir: Path) -> FastLogger:
        if self.logger is None:
            spool = self.spool_dir or (run_dir / "mlflow_spool")
            self.logger = FastLogger(self.uri, self.run_id, spool, async_=self.async_)
        return self.logger

    def on_train_start(self, info):
        run_dir = Path(info.run_dir)
        self.tasks = list(info.task_names)
        self.keys = sanitize_names(self.tasks)
        self.baseline = baseline_array(info.baseline, self.tasks)
        log = self._fast(run_dir)
        params = {k: param_value(v) for k, v in self.cfg.flatten().items()}
        if self.cfg.model.capacity != "as_set" and info.shared_width is not None:
            params["model.shared_width_used"] = str(info.shared_width)
        params.update({"model.family": model_family(self.cfg), "model.n_params": str(info.n_params),
                       "model.flops_per_sample": str(info.flops_per_sample),
                       "data.n_tasks": str(info.n_tasks), "data.fingerprint": str(info.data_fingerprint),
                       "data.task_names": param_value(self.tasks)})
        if self.logged_epochs or self.continued:
            # A continued run keeps its params; what a resume may change (its budget) becomes a tag.
            old = self.client.get_run(self.run_id).data.params
            changed = {f"resumed.{k}": v for k, v in params.items() if k in old and old[k] != v}
            params = {k: v for k, v in params.items() if k not in old}
            if changed:
                log.set_tags(changed)
        log.log_params(params)
        # Every run carries the fingerprint of the baseline it must be compared with.
        compare_fp = baseline_fingerprint(self.cfg, str(info.data_fingerprint), self.tasks)
        tags = {**self.tags, tag.RUN_DIR: str(run_dir), tag.COMPARE_FP: compare_fp}
        if info.family.get("tuned"):   # what a reference family tuned inside its own fit, on validation
            tags[tag.INNER_TUNING] = json.dumps(info.family["tuned"])
        log.set_tags(tags)
        ceiling = oracle_metrics(info.oracle, self.tasks)
        # Logged once, when the run began: a run continued (after a kill, even one before its
        # first epoch) already holds them.
        start = {tag.PARAMS: float(info.n_params), **self._rename(ceiling)}
        start = {k: v for k, v in start.items() if k not in self.logged_keys}
        if start:
            log.log_metrics(start, step=0)
        d = run_dir / "mlflow_artifacts"
        d.mkdir(parents=True, exist_ok=True)
        (run_dir / tag.RUN_ID_FILE).write_text(self.run_id)
        p = d / "task_names.json"
        p.write_text(json.dumps({"task_to_key": self.keys}, indent=1))
        c = d / "config.yaml"
        c.write_text(self.cfg.to_yaml())
        self.log_artifacts([p, c])
        self.history = []

    def on_epoch_end(self, report):
        m = {k: float(v) for k, v in report.metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
        self.history.append({"epoch": report.epoch, **m})
        if report.epoch in self.logged_epochs:
            return
        self.new_epochs += 1
        if report.best:
            # Kept current every improving epoch, so a trial stopped early (ASHA) still has them.
            m = {**self._best(m, report.epoch), **m}
        self._fast(Path(".")).log_metrics(self._rename(m), step=report.epoch)

    @staticmethod
    def _best(m: dict[str, float], epoch: int) -> dict[str, float]:
        best = {f"best/{k}": v for k, v in m.items() if k.startswith(BEST_PREFIXES)}
        best["best/epoch"] = float(epoch)
        return {**headline({**m, **best}), **best}   # first in the batch: a run page lists metrics as first logged

    def adopt_best(self, history: list[dict], best_epoch: int, step: int) -> None:
        """The best/ metrics of a lineage this run continues (a population's trial that copied a
        better trial's checkpoint): its best epoch is now that trial's, and the model it will be
        tested with too. Logged at ``step``, the epoch of the copy, so they are the latest."""
        if not 1 <= best_epoch <= len(history):
            return
        row = history[best_epoch - 1]
        m = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
        self._fast(Path(".")).log_metrics(self._rename(self._best(m, best_epoch)), step=step)

    def _rename(self, metrics: dict[str, float]) -> dict[str, float]:
        out = {}
        for k, v in metrics.items():
            head, _, rest = k.partition("/") if k.startswith("best/") else ("", "", k)
            for prefix in PER_TASK_PREFIXES + ("val/delta_auroc/", "test/delta_auroc/"):
                if rest.startswith(prefix):
                    rest = prefix + self.keys.get(rest[len(prefix):], rest[len(prefix):])
                    break
            out[f"{head}/{rest}" if head else rest] = v
        return out

    def on_train_end(self, result):
        log = self._fast(result.run_dir)
        final = dict(result.test_summary)
        if result.convergence is not None:
            final["cert/converged"] = final[tag.CONVERGED_METRIC] = float(result.convergence.converged)
            log.set_tags({tag.CONVERGED: "yes" if result.convergence.converged else "no",
                          tag.CONVERGENCE: result.convergence.detail[:5000]})
        if not self._already_tested():
            log.log_metrics(self._rename(final), step=result.best_epoch)
        log.flush()
        self.log_artifacts(self._result_files(result, self.baseline))
        log.close()
        try:
            self._end("FINISHED")
        except Exception as exc:  # noqa: BLE001 - any transport failure: the run finished here all the same
            self._spool_status("FINISHED", exc)

    def _already_tested(self) -> bool:
        """A continued run whose end was logged before and that trained nothing new (a restart after
        its last epoch): its test metrics are not sent a second time. A run continued for more
        epochs logs them again, at its new best epoch."""
        if not self.continued or self.new_epochs:
            return False
        try:
            return bool(self.client.get_metric_history(self.run_id, "test/auroc_mean"))
        except Exception:  # noqa: BLE001 - server away: the spool's sync has its own guard
            return False

    def _spool_status(self, status: str, exc: BaseException) -> None:
        """The server is away at the run's end: keep the status for `mtlsweep sync` and say so."""
        spool = Path(self.logger.spool.dir) if self.logger is not None else Path(".")
        with open(spool / PENDING_STATUS, "a") as fh:
            fh.write(json.dumps({"run_id": self.run_id, "uri": strip_userinfo(self.uri), "status": status,
                                 "end_time": int(time.time() * 1000)}) + "\n")
        warnings.warn(f"tracking server {redact_uri(self.uri)} unreachable at the end of the run "
                      f"({type(exc).__name__}); the run finished here and its end is spooled in {spool}: "
                      f"run `mtlsweep sync {spool}` when the server is back", stacklevel=2)

    def _result_files(self, result, base: Optional[np.ndarray]) -> list[Path]:
        d = Path(result.run_dir) / "mlflow_artifacts"
        d.mkdir(parents=True, exist_ok=True)
        files = [Path(result.run_dir) / "metrics.json"]
        rows = per_task_rows(self.tasks, self.keys, result.val, result.test, base)
        files += [write_per_task_csv(rows, d / tag.PER_TASK_FILE),
                  write_per_task_page(rows, d / tag.PER_TASK_PAGE, f"{self.name}: validation AUROC per task")]
        if "learning_curves" in self.plots:
            files.append(plots.learning_curves(result.history, d / "learning_curves.png",
                                               title=self.tags.get(tag.FAMILY, "")))
        weights = np.array([[h.get(f"schedule/weight/{t}", math.nan) for t in self.tasks] for h in result.history])
        # A joint schedule with equal weights is a flat picture: not worth a trial's time.
        if "schedule_weights" in self.plots and np.isfinite(weights).any() and np.nanmax(weights) != np.nanmin(weights):
            files.append(plots.schedule_weights(result.history, self.tasks, d / "schedule_weights.png"))
        if base is not None and "auroc_vs_baseline" in self.plots:
            files.append(plots.auroc_vs_baseline(self.tasks, result.val.auroc, base, d / "auroc_vs_baseline.png"))
        # What the trainer itself measured (train.affinity_every): the matrix, its heatmap, its parts by epoch.
        files.extend(p for p in (d / "affinity.json", d / "affinity.png", d / "affinity_stages.npz") if p.is_file())
        return files

    def log_artifacts(self, paths: list[Path]) -> None:
        """Artifacts go straight to the server; when it is away they stay listed in the spool
        directory for `mtlsweep sync` (metrics/params are spooled by FastLogger)."""
        pending = []
        for p in paths:
            try:
                self.client.log_artifact(self.run_id, str(p))
            except Exception:  # noqa: BLE001 - any transport failure: keep it for sync
                pending.append(str(Path(p).resolve()))
        if pending and self.logger is not None:
            f = Path(self.logger.spool.dir) / PENDING_ARTIFACTS
            with open(f, "a") as fh:
                for p in pending:
                    fh.write(json.dumps({"run_id": self.run_id, "uri": strip_userinfo(self.uri), "path": p}) + "\n")

    def on_train_abort(self, exc: BaseException) -> None:
        """A scheduler's stop (SystemExit inside Tune's report) leaves the run FINISHED and tagged;
        Ctrl-C marks it KILLED, anything else FAILED. A population's scheduler stops a trial to
        pause it, or to hand it a better trial's checkpoint: its run stays RUNNING, continued when
        the trial starts again."""
        if isinstance(exc, SystemExit) and self.stop_is_pause:
            if self.logger is not None:
                self.logger.close()
        elif isinstance(exc, SystemExit):
            self.stopped_early()
        else:
            self.fail("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def stopped_early(self) -> None:
        """A scheduler stopped the run between epochs: its best/ metrics are already logged."""
        if self.client.get_run(self.run_id).info.status != "RUNNING":
            return
        try:
            if self.logger is not None:
                self.logger.set_tags({tag.STOPPED_EARLY: "scheduler"})
                self.logger.close()
            self._end("FINISHED")
        except Exception:  # noqa: BLE001 - the driver closes leftover runs after the sweep
            pass

    def fail(self, status: str = "FAILED") -> None:
        if self.logger is not None:
            try:
                self.logger.close()
            except Exception:  # noqa: BLE001 - the run already failed; keep the first error
                pass
        try:
            self._end(status)
        except Exception:  # noqa: BLE001
            pass

    def _end(self, status: str) -> None:
        end_run(self.client, self.run_id, status, name=self.name, experiment_id=self.experiment_id)
