"""The training engine: one run of one config, no Ray, no MLflow."""
import csv
import json

import numpy as np
import pytest
import torch

from mtlsweep.training.callbacks import Callback
from mtlsweep.config.errors import ConfigError
from mtlsweep.training.engine import Trainer, prepare_run_dir
from conftest import run


class Recorder(Callback):
    def __init__(self):
        self.info, self.epochs, self.checkpoints, self.result = None, [], [], None

    def on_train_start(self, info):
        self.info = info

    def on_epoch_end(self, report):
        self.epochs.append(dict(report.metrics))

    def on_checkpoint(self, path, epoch):
        self.checkpoints.append((path, epoch))

    def on_train_end(self, result):
        self.result = result


def test_run_learns_reports_and_writes_outputs(tiny_config, tmp_path):
    cfg = tiny_config(**{"train.epochs": 6, "train.patience": 6})
    rec = Recorder()
    result = run(cfg, tmp_path / "run", callbacks=[rec], progress=False)
    assert rec.info.n_tasks == 3 and rec.info.n_params > 0 and rec.info.flops_per_sample > 0
    assert [int(m["epoch"]) for m in rec.epochs] == [1, 2, 3, 4, 5, 6]
    m = rec.epochs[-1]
    for key in ("train/loss", "val/loss", "val/auroc_mean", "val/auroc_median", "val/auprc_mean",
                "val/auroc/task0", "val/auprc/task2", "cost/epoch_s", "cost/samples_per_s", "cost/peak_mem_mb",
                "schedule/weight/task1"):
        assert key in m, key
    assert result.best_val_auroc > 0.7            # the planted k-mers are learnable; chance is 0.5
    assert result.test_summary["test/auroc_mean"] > 0.7
    assert [e for _, e in rec.checkpoints] == [1, 2, 3, 4, 5, 6]
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"best.pt", "last.pt", "config.yaml", "metrics.json", "per_task.csv"} <= files
    rows = list(csv.DictReader(open(tmp_path / "run" / "per_task.csv")))
    assert [r["task"] for r in rows] == ["task0", "task1", "task2"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best_epoch"] == result.best_epoch


def test_same_config_and_seed_give_same_metrics(tiny_config, tmp_path):
    cfg = tiny_config(**{"train.epochs": 2, "model.sharing.shared_layers": 2})
    a = run(cfg, tmp_path / "a", progress=False)
    b = run(cfg, tmp_path / "b", progress=False)
    assert a.history[-1]["val/auroc_mean"] == b.history[-1]["val/auroc_mean"]
    assert np.array_equal(a.val.auroc, b.val.auroc)
    c = run(cfg.with_overrides({"train.seed": 1}), tmp_path / "c", progress=False)
    assert c.history[-1]["val/loss"] != a.history[-1]["val/loss"]


class Crash(Callback):
    def __init__(self, at):
        self.at = at

    def on_checkpoint(self, path, epoch):
        if epoch == self.at:
            raise RuntimeError("simulated crash after the checkpoint of epoch %d" % epoch)


@pytest.mark.parametrize("k", [0, 3])
def test_resume_gives_the_same_final_metrics(tiny_config, tmp_path, k):
    cfg = tiny_config(**{"train.epochs": 4, "model.sharing.shared_layers": k, "optim.name": "rmsprop",
                         "optim.lr": 0.002})
    full = run(cfg, tmp_path / "full", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, tmp_path / "part", callbacks=[Crash(2)], progress=False)
    resumed = run(cfg, tmp_path / "part", resume=True, progress=False)
    assert [h["val/loss"] for h in resumed.history] == [h["val/loss"] for h in full.history]
    assert resumed.test_summary["test/auroc_mean"] == full.test_summary["test/auroc_mean"]


def test_early_stopping_on_patience(tiny_config, tmp_path):
    cfg = tiny_config(**{"train.epochs": 30, "train.patience": 1, "optim.lr": 0.05})
    result = run(cfg, tmp_path / "run", progress=False)
    assert result.epochs_run < 30
    assert result.epochs_run == result.best_epoch + 1


def test_unknown_task_and_run_dir_errors(tiny_config, tmp_path):
    with pytest.raises(Exception, match="nope"):
        Trainer(tiny_config(**{"data.tasks": ["task0", "nope"]}), tmp_path / "r", progress=False)
    cfg = tiny_config()
    d = prepare_run_dir(cfg, "x")
    assert not d.exists()                       # a refused run must not leave an empty directory
    d.mkdir(parents=True)
    (d / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="run directory exists"):
        prepare_run_dir(cfg, "x")
    assert prepare_run_dir(cfg, "x", force=True) == d


def test_task_subset_by_name_and_index(tiny_config, tmp_path):
    r = run(tiny_config(**{"data.tasks": ["task2", 0], "train.epochs": 1}), tmp_path / "r", progress=False)
    assert r.task_names == ["task2", "task0"]
