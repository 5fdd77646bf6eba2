"""What the platform's MLflow experiments look like to a person: model-training experiments with
a saved runs-table view, artifacts beside a local database, and a resumed `train` that stays one run."""
from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from mtlsweep.app.cli import main
from mtlsweep.mlflow_server.run_logger import get_or_create_experiment
from mtlsweep.mlflow_server.runs_view import VIEW_TAG, runs_url

TINY = ["--set", "model.arch.conv_channels=[8, 8, 8]", "--set", "model.arch.conv_widths=[7, 5, 3]",
        "--set", "model.arch.pool=[2, 2, 2]", "--set", "model.arch.dense=[16, 16]", "--set", "data.batch_size=32",
        "--set", "train.num_threads=1", "--no-progress"]


def test_experiment_is_model_training_with_a_view_and_local_artifacts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    client = MlflowClient(uri)
    exp = client.get_experiment(get_or_create_experiment(client, "x"))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags[VIEW_TAG])
    assert "metrics.`best/val/auroc_mean`" in view["selectedColumns"] and "tags.`family`" in view["selectedColumns"]
    assert view["orderByKey"] == "metrics.`best/val/auroc_mean`" and view["orderByAsc"] is False
    assert exp.artifact_location == (tmp_path / "db" / "mlartifacts").as_uri()
    assert runs_url("http://h:1", exp.experiment_id).endswith(
        f"#/experiments/{exp.experiment_id}/runs?viewStateShareKey=mtlsweep&workflowType=machine_learning")
    # An experiment made elsewhere (by MLflow itself) gets the kind and the view when first used.
    other = client.create_experiment("made-by-mlflow")
    get_or_create_experiment(client, "made-by-mlflow")
    assert client.get_experiment(other).tags["mlflow.experimentKind"] == "custom_model_development"


def test_resumed_train_continues_its_mlflow_run(tmp_path, signal_store_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Path("run.yaml").write_text(f"data: {{path: {signal_store_path}}}\ntrain: {{out_dir: runs}}\n")
    args = ["train", "--config", "run.yaml", *TINY, "--tracking-uri", uri]
    assert main([*args, "--name", "r", "--set", "train.epochs=1"]) == 0
    assert main([*args, "--resume", "runs/r", "--set", "train.epochs=3"]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mtlsweep")
    (run,) = client.search_runs([exp.experiment_id])          # one run, not two with the same name
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc_mean")] == [1, 2, 3]
    assert run.data.tags["resumed.train.epochs"] == "3" and run.data.params["train.epochs"] == "1"
    assert not (tmp_path / "mlruns").exists()
