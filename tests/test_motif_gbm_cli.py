"""`mtlsweep train` dispatches model.family: motif_gbm and logs it like any other family."""
import json
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def test_train_motif_gbm_with_tracking(signal_store_path, tmp_path):
    cfg = {"data": {"path": str(signal_store_path)},
           "model": {"family": "motif_gbm"},
           "gbm": {"max_motifs": 30, "n_estimators": 20, "features": ["max", "kmer"], "kmer_k": 3,
                   "n_jobs": 1, "cache_dir": str(tmp_path / "cache")},
           "train": {"out_dir": str(tmp_path / "runs")},
           "tracking": {"enabled": True, "experiment": "gbm"}}
    (tmp_path / "gbm.yaml").write_text(yaml.safe_dump(cfg))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "train", "--config", str(tmp_path / "gbm.yaml"),
                        "--name", "g", "--no-progress", "--tracking-uri", uri], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "runs" / "g" / "metrics.json").read_text())
    assert metrics["best_val_auroc"] > 0.6     # 3-mers see the planted 6-mers; chance is 0.5
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gbm").experiment_id])
    assert run.data.tags["family"] == "motif_gbm" and run.data.params["model.family"] == "motif_gbm"
    assert "best/val/auroc_mean" in run.data.metrics and "test/auroc_mean" in run.data.metrics
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "gbm": {"max_depth": 0}}))
    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "train", "--config", str(bad)], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "gbm.max_depth" in r.stderr and "Traceback" not in r.stderr
