"""One run request for every caller: tasks resolved once, by index or name, in the order given;
threads decided once and written into the run's config."""
import csv

import pytest
import yaml

from conftest import make_signal_store
from mtlsweep.app.cli import main

TINY = ["--set", "model.arch.conv_channels=[8, 8, 8]", "--set", "model.arch.conv_widths=[7, 5, 3]",
        "--set", "model.arch.pool=[2, 2, 2]", "--set", "model.arch.dense=[8, 8]", "--set", "train.epochs=1",
        "--set", "data.batch_size=32"]
GBM = ["--set", "model.family=motif_gbm", "--set", "gbm.features=[kmer]", "--set", "gbm.kmer_k=2",
       "--set", "gbm.n_estimators=20", "--set", "gbm.cache_dir=null"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "store.h5"
    make_signal_store(n=600, length=60, n_tasks=4).save(path)
    return path


@pytest.mark.parametrize("family", ["cnn", "motif_gbm"])
@pytest.mark.parametrize("tasks,expected", [
    ("[0, 2]", ["task0", "task2"]), ("[2, 0]", ["task2", "task0"]), ("[task3, task1]", ["task3", "task1"]),
    ("[1, task3]", ["task1", "task3"])])
def test_data_tasks_by_index_or_name_train_exactly_those_tasks_in_that_order(store, tmp_path, family, tasks, expected):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"path": str(store)}, "train": {"out_dir": str(tmp_path / "runs")}}))
    extra = GBM if family == "motif_gbm" else TINY
    assert main(["train", "--config", str(cfg), "--name", "r", "--no-progress", *extra,
                 "--set", f"data.tasks={tasks}"]) == 0
    run_dir = tmp_path / "runs" / "r"
    rows = list(csv.DictReader(open(run_dir / "per_task.csv")))
    assert [r["task"] for r in rows] == expected
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["data"]["tasks"] == yaml.safe_load(tasks)          # the request as given
    assert isinstance(written["train"]["num_threads"], int)            # the threads it ran on, for reruns


def test_an_index_out_of_range_is_refused_in_one_line(store, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"path": str(store)}, "train": {"out_dir": str(tmp_path / "runs")}}))
    assert main(["train", "--config", str(cfg), "--name", "r", *TINY, "--set", "data.tasks=[0, 4]"]) == 2
    assert "task index 4 out of range; allowed: 0..3" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
