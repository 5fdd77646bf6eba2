"""What the platform's MLflow experiments look like to a person: model-training experiments with
a saved runs-table view, artifacts beside a local database, runs named by family, arm and id with
their headline metrics under short names and a per-task table, and a resumed `train` that stays one
run. (tests/test_mlflow_ui.py renders them in a browser.)"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mtlsweep.app.cli import main
from mtlsweep.config import tags as tag
from mtlsweep.mlflow_server.run_logger import display_name, get_or_create_experiment
from mtlsweep.mlflow_server.runs_view import VIEW_TAG, run_url, runs_url

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
    assert view["selectedColumns"] == ["tags.`family`", "metrics.`auroc`", "metrics.`d_auroc`", "metrics.`improved`",
                                       "metrics.`converged`", "metrics.`params`", "tags.`role`", "tags.`arm`"]
    assert view["orderByKey"] == "metrics.`auroc`" and view["orderByAsc"] is False
    assert view["columnOrder"][:3] == ["attributes.`Run Name`", "runDateAndNestInfo", "tags.`family`"]
    assert set(view["columnWidths"]) == set(view["columnOrder"])
    assert exp.artifact_location == (tmp_path / "db" / "mlartifacts").as_uri()
    assert runs_url("http://h:1", exp.experiment_id).endswith(
        f"#/experiments/{exp.experiment_id}/runs?viewStateShareKey=mtlsweep&workflowType=machine_learning")
    assert run_url("http://h:1", "3", "abc") == "http://h:1/#/experiments/3/runs/abc?workflowType=machine_learning"
    # An experiment made elsewhere (by MLflow itself) gets the kind and the view when first used.
    other = client.create_experiment("made-by-mlflow")
    get_or_create_experiment(client, "made-by-mlflow")
    assert client.get_experiment(other).tags["mlflow.experimentKind"] == "custom_model_development"
    # A kind MLflow's UI inferred is replaced; one a person chose among the model-training kinds is kept.
    for kind, kept in (("genai_development_inferred", "custom_model_development"), ("regression", "regression")):
        e = client.create_experiment(f"kind-{kind}", tags={"mlflow.experimentKind": kind})
        get_or_create_experiment(client, f"kind-{kind}")
        assert client.get_experiment(e).tags["mlflow.experimentKind"] == kept


def test_run_names_say_family_arm_and_id():
    assert display_name("soft", "soft_l2", "sweep-a/3f2a1b9c") == "soft-soft_l2-3f2a1b9c"      # a sweep's trial
    assert display_name("hard", "hard", "3f2a1b9c") == "hard-3f2a1b9c"                       # arm = family
    assert display_name("single", None, "20261206-090958-s0") == "single-20261206-090958-s0"  # `train`, no --name
    assert display_name("hard", None, "hard") == "hard"                                      # `train --name hard`
    assert display_name("kmer_linear", "kmer_linear", "s/kmer_linear-ab12cd") == "kmer_linear-ab12cd"  # a reference
    assert display_name("single", None, "baseline-ab12cd34-s0") == "single-baseline-ab12cd34-s0"
    unnamed = display_name("hard", "", None)
    assert unnamed.startswith("hard-") and len(unnamed) == len("hard-") + 8


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
    # Named by family and directory; the headline metrics beside their long names, rounded to fit a column.
    m = run.data.metrics
    assert run.info.run_name == "hard-r" and run.data.tags[tag.FAMILY] == "hard"
    assert m[tag.AUROC] == round(m["best/val/auroc_mean"], 4)
    assert m[tag.PARAMS] == float(run.data.params["model.n_params"])
    assert m[tag.CONVERGED_METRIC] == m["cert/converged"] == float(run.data.tags[tag.CONVERGED] == "yes")
    assert tag.D_AUROC not in m            # no baseline to compare with
    # The per-task table, as a table (csv) and a page (html) the artifact view renders.
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {tag.PER_TASK_FILE, tag.PER_TASK_PAGE} <= arts
    rows = list(csv.DictReader(open(client.download_artifacts(run.info.run_id, tag.PER_TASK_FILE, str(tmp_path)))))
    assert list(rows[0])[:5] == ["task", "val_auroc", "baseline_val_auroc", "delta_val_auroc", "val_auprc"]
    page = Path(client.download_artifacts(run.info.run_id, tag.PER_TASK_PAGE, str(tmp_path))).read_text()
    assert "hard-r: validation AUROC per task" in page and all(f"<td>{r['task']}</td>" in page for r in rows)
    assert "baseline AUROC" not in page


def test_a_run_continued_after_a_kill_in_its_first_epoch_logs_its_start_metrics_once(tmp_path, tiny_config):
    """A trial killed before its first epoch ended is continued by its restored trial: the metrics
    a run logs when it begins (params, the oracle's ceiling) are not logged a second time."""
    from conftest import run

    from mtlsweep.mlflow_server.attach import Tracking, run_callbacks
    from mtlsweep.training.callbacks import Callback

    class Killed(Callback):
        def on_batch_end(self, trainer, epoch, step, batch):
            raise KeyboardInterrupt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(**{"train.epochs": 1})
    callbacks, first = run_callbacks(cfg, Tracking(uri, "continued", async_=False))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "a", callbacks=[*callbacks, Killed()])
    callbacks, again = run_callbacks(cfg, Tracking(uri, "continued", run_id=first.run_id, async_=False))
    run(cfg, tmp_path / "b", callbacks=callbacks)
    client = MlflowClient(uri)
    assert again.run_id == first.run_id
    assert [m.step for m in client.get_metric_history(first.run_id, tag.PARAMS)] == [0]
    assert [m.step for m in client.get_metric_history(first.run_id, "val/auroc_mean")] == [1]
