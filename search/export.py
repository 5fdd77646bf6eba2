"""`mtlsweep export-best`: the best trials' configs as YAML that `mtlsweep train` runs
unchanged and reproduces (same seed, same data, the epochs the trial actually ran; a pbt/pb2
trial's is its last schedule, which does not, and says so); with ``--front``, every point of a
multi-objective sweep's Pareto front (as `compare` shows it)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import validate
from mtlsweep.config.tags import Role
from mtlsweep.mlflow_server.compare import CURVE_METRIC, Front, sweep_front
from mtlsweep.mlflow_server.registry import is_completed
from mtlsweep.search.library_logs import no_download_bars

# search.population.SCHEDULERS (that module imports Ray; export-best reads MLflow only)
POPULATION_SCHEDULERS = ("pbt", "pb2")


def _logged_config(client: MlflowClient, run_id: str) -> dict:
    """The run's config.yaml artifact, read without MLflow's download progress bar (one per file)."""
    with no_download_bars(), tempfile.TemporaryDirectory() as tmp:
        return yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text())


def epochs_run(client: MlflowClient, run_id: str, default: int) -> int:
    """The epochs a run trained: the steps of its per-epoch validation curve, as trial.py's
    _report_finished counts them (trial runs log no ``epoch`` metric); ``default`` for a run that
    logged none."""
    return len({m.step for m in client.get_metric_history(run_id, CURVE_METRIC)}) or default


def population_note(client: MlflowClient, r, cache: dict) -> Optional[str]:
    """One line when ``r`` is a trial of a population sweep (its parent run's sweep.scheduler is
    pbt or pb2), whose exported config does not reproduce it; else None."""
    parent = r.data.tags.get("mlflow.parentRunId")
    if parent and parent not in cache:
        try:
            cache[parent] = client.get_run(parent).data.params.get("sweep.scheduler")
        except MlflowException:
            cache[parent] = None
    scheduler = cache.get(parent) if parent else None
    if scheduler not in POPULATION_SCHEDULERS:
        return None
    return (f"--scheduler {scheduler} sweep: each config is its trial's LAST schedule (optim.lr, optim.weight_decay, "
            "schedule.task_weights); training it from scratch does not reproduce the trial, whose schedule "
            "changed as it trained from other trials' checkpoints")


def _write_config(client: MlflowClient, r, path: Path, tracking_uri: str, experiment: str, what: str,
                  note: Optional[str] = None) -> int:
    """The run's config as YAML at ``path``, with the epochs it ran (and ``note`` in its header); returns them."""
    tree = _logged_config(client, r.info.run_id)
    epochs = epochs_run(client, r.info.run_id, tree["train"]["epochs"])
    # The trial may have been stopped early by ASHA: export the budget it actually had, so
    # that `mtlsweep train` reproduces its metric; raise train.epochs to train it longer.
    tree["train"]["epochs"] = epochs
    # A rerun is logged beside the trial it reproduces: same store, same experiment.
    tree["tracking"].update(enabled=True, uri=tracking_uri, experiment=experiment)
    cfg = validate(tree, f"run {r.info.run_id} config.yaml")
    path.write_text(f"# exported from {r.info.run_name} ({r.data.tags.get('family', '?')}; MLflow run id "
                    f"{r.info.run_id}), {what}\n" + (f"# {note}\n" if note else "") + cfg.to_yaml())
    return epochs


def export_best(tracking_uri: str, experiment: str, out: str | Path, *, sweep: Optional[str] = None,
                metric: str = "val/auroc_mean", top: int = 3, force: bool = False, front: bool = False,
                objectives: Optional[str] = None, worst: Optional[str] = None,
                constraint_delta: Optional[float] = None, uncertified: bool = False, log=print) -> list[Path]:
    """The ``top`` completed trials by ``metric`` (``front``: every point of the sweep's Pareto
    front, over its recorded objectives or ``objectives``) as ``<out>/<i>.yaml``, with a README
    table of their scores. A population sweep's trials are exported with a warning (``log``) that
    their config does not reproduce them."""
    if uncertified and not front:
        raise ConfigError("--uncertified: only with --front (it adds the uncertified trials beside the Pareto front)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; export-best writes a directory of YAML configs, give a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out}: exists and is not empty; choose another --out or pass --force")
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"experiment {experiment!r} does not exist at {tracking_uri}")
    key = f"best/{metric}"
    if sweep:       # a sweep's name, as compare takes it, or its parent run's id
        named = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
            f"tags.{tag.ROLE} = '{Role.SWEEP}' and tags.{tag.SWEEP} = '{sweep}'"))
        sweep = named[0].info.run_id if named else sweep
    if front:
        if not sweep and not objectives:
            raise ConfigError("--front: which sweep? give --sweep (its objectives are on its parent run) or "
                              "--objectives")
        found = sweep_front(tracking_uri, experiment, sweep, objectives, worst, constraint_delta)
        if found is None:
            raise ConfigError(f"--front: sweep {sweep} recorded a single objective and no constraint; give "
                              "--objectives (e.g. auroc_mean,auroc_worst,epoch_s) for a front over several")
        return _export_front(client, found, out, tracking_uri, experiment, uncertified, log)
    filt = "tags.role = 'trial'"
    if sweep:
        filt += f" and tags.`mlflow.parentRunId` = '{sweep}'"
    # Pruned, failed or orphaned trials are never exported as the best: their score is not their end point.
    runs = [r for r in client.search_runs([exp.experiment_id], filter_string=filt, max_results=5000)
            if math.isfinite(r.data.metrics.get(key, math.nan)) and is_completed(r)]
    if not runs:
        where = f"experiment {experiment!r}" + (f" under sweep {sweep}" if sweep else "")
        trains = client.search_runs([exp.experiment_id], filter_string="tags.role = 'train'", max_results=1)
        hint = (f"; export-best exports sweep trials, and a `mtlsweep train` run's config is already "
                f"in its run directory (config.yaml) and MLflow artifacts "
                f"(mlflow artifacts download -r {trains[0].info.run_id} -a config.yaml)") if trains else ""
        raise ConfigError(f"no completed sweep trial with metric {key} in {where}{hint}")
    runs.sort(key=lambda r: -r.data.metrics[key])
    out.mkdir(parents=True, exist_ok=True)
    written, lines = [], [f"# Best {len(runs[:top])} configurations by {key}", "",
                          "| # | run | family | " + key + " | ΔAUROC vs baseline | epochs run | command |",
                          "|---|---|---|---|---|---|---|"]
    parents, notes = {}, []
    for i, r in enumerate(runs[:top], start=1):
        path = out / f"{i}.yaml"
        note = population_note(client, r, parents)
        epochs = _write_config(client, r, path, tracking_uri, experiment, f"{key} = {r.data.metrics[key]:.4f}", note)
        written.append(path)
        notes.append(note)
        lines.append(f"| {i} | {r.info.run_name} | {r.data.tags.get('family', '?')} | {r.data.metrics[key]:.4f} | "
                     f"{r.data.metrics.get('best/val/delta_auroc_mean', math.nan):+.4f} | {epochs} | "
                     f"`mtlsweep train --config {path}` |")
    _write_readme(out, lines, notes, log)
    return written


def _write_readme(out: Path, lines: list[str], notes: list[Optional[str]], log, after: Sequence[str] = ()) -> None:
    """The README (a population sweep's note under its title, said once by ``log`` too)."""
    note = next((n for n in notes if n), None)
    if note:
        lines = lines[:1] + ["", f"**Warning:** {note}."] + lines[1:]
        log(f"warning: {note}")
    (out / "README.md").write_text("\n".join([*lines, *after]) + "\n")


def _export_front(client: MlflowClient, front: Front, out: Path, tracking_uri: str, experiment: str,
                  uncertified: bool, log=print) -> list[Path]:
    """Every point of ``front`` (``uncertified``: and the uncertified runs no feasible run
    dominates, marked so) as its own YAML, and the README table of their objectives."""
    points = front.front + (front.uncertified if uncertified else [])
    # Reference families fit no CNN config: only sweep trials are exported.
    points = [p for p in points if p.row.role == Role.TRIAL]
    if not points:
        extra = (f"; {len(front.uncertified)} uncertified run(s) no feasible run dominates: pass --uncertified to "
                 "export them too") if front.uncertified and not uncertified else ""
        feasible = " and feasible" if front.objectives.constraint_delta is not None else ""
        raise ConfigError(f"no completed, certified{feasible} trial is on the Pareto front over "
                          f"{', '.join(front.objectives.names)}{extra}")
    out.mkdir(parents=True, exist_ok=True)
    names = [o.label for o in front.objectives.objectives]
    lines = [f"# The Pareto front: {len(points)} configuration(s)", "", f"Objectives: {front.objectives.describe()}.",
             "No configuration here is beaten by another trial of the sweep in every objective.", "",
             "| # | run | family | " + " | ".join(names) + " | certified | epochs run | command |",
             "|" + "---|" * (len(names) + 6)]
    written, why, parents, notes = [], [], {}, []
    for i, p in enumerate(points, start=1):
        path = out / f"{i}.yaml"
        values = ", ".join(f"{o.name} = {v:.4g}" for o, v in zip(front.objectives.objectives, p.values))
        r = client.get_run(p.row.run_id)
        note = population_note(client, r, parents)
        epochs = _write_config(client, r, path, tracking_uri, experiment, f"on the Pareto front: {values}", note)
        written.append(path)
        notes.append(note)
        if not p.certified:
            why.append(f"- #{i} ({p.row.name}) is not certified: {p.why}")
        lines.append(f"| {i} | {p.row.name} | {p.row.family} | " + " | ".join(f"{v:.4g}" for v in p.values)
                     + f" | {'yes' if p.certified else 'no'} | {epochs} | `mtlsweep train --config {path}` |")
    _write_readme(out, lines, notes, log, [""] + why if why else [])
    return written
