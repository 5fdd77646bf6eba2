"""`mtlsweep export-best`: the best trials' configs as YAML that `mtlsweep train` runs
unchanged and reproduces (same seed, same data, the epochs the trial actually ran)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Optional

import yaml
from mlflow.tracking import MlflowClient

from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import validate
from mtlsweep.config.tags import Role
from mtlsweep.mlflow_server.registry import is_completed
from mtlsweep.search.library_logs import no_download_bars


def _logged_config(client: MlflowClient, run_id: str) -> dict:
    """The run's config.yaml artifact, read without MLflow's download progress bar (one per file)."""
    with no_download_bars(), tempfile.TemporaryDirectory() as tmp:
        return yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text())


def export_best(tracking_uri: str, experiment: str, out: str | Path, *, sweep: Optional[str] = None,
                metric: str = "val/auroc_mean", top: int = 3, force: bool = False) -> list[Path]:
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
    for i, r in enumerate(runs[:top], start=1):
        tree = _logged_config(client, r.info.run_id)
        epochs_run = int(r.data.metrics.get("epoch", tree["train"]["epochs"]))
        # The trial may have been stopped early by ASHA: export the budget it actually had, so
        # that `mtlsweep train` reproduces its metric; raise train.epochs to train it longer.
        tree["train"]["epochs"] = epochs_run
        # A rerun is logged beside the trial it reproduces: same store, same experiment.
        tree["tracking"].update(enabled=True, uri=tracking_uri, experiment=experiment)
        cfg = validate(tree, f"run {r.info.run_id} config.yaml")
        path = out / f"{i}.yaml"
        path.write_text(f"# exported from {r.info.run_name} ({r.data.tags.get('family', '?')}; MLflow run id "
                        f"{r.info.run_id}), {key} = {r.data.metrics[key]:.4f}\n" + cfg.to_yaml())
        written.append(path)
        lines.append(f"| {i} | {r.info.run_name} | {r.data.tags.get('family', '?')} | {r.data.metrics[key]:.4f} | "
                     f"{r.data.metrics.get('best/val/delta_auroc_mean', math.nan):+.4f} | {epochs_run} | "
                     f"`mtlsweep train --config {path}` |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return written
