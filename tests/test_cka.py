import argparse
import csv
import math

import numpy as np
import pytest
import torch

from mtlsweep.analysis.cka import MinibatchCKA, gram_linear, hsic_unbiased, linear_cka
from mtlsweep.analysis.similarity import load_run, similarity
from mtlsweep.app.analysis_flags import add_similarity_arguments as add_arguments
from mtlsweep.app.analyses import run_similarity as run
from mtlsweep.mlflow_server.analysis_runs import locator
from mtlsweep.data.errors import DataError
from mtlsweep.data.store import SplitArrays, Store
from mtlsweep.models import build_model
from mtlsweep.config.run import RunConfig


def orthogonal(p, seed):
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.numpy()


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_of_a_representation_with_itself_is_one(unbiased):
    RNG = np.random.default_rng(0)
    x = RNG.normal(size=(200, 30))
    assert linear_cka(x, x, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
    acc = MinibatchCKA(["x"], ["x"])
    for i in range(0, 200, 50):
        acc.update({"x": torch.from_numpy(x[i:i + 50])}, {"x": torch.from_numpy(x[i:i + 50])})
    assert acc.result()[0, 0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("p2", [12, 200])          # 200: the Gram-space path (n² < p1·p2)
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(unbiased, p2):
    RNG = np.random.default_rng(1)
    n = 60
    x = RNG.normal(size=(n, 20))
    y = np.tanh(x @ RNG.normal(size=(20, p2))) + 0.3 * RNG.normal(size=(n, p2))
    base = linear_cka(x, y, unbiased=unbiased)
    assert 0.1 < base < 0.99
    assert linear_cka(x @ orthogonal(20, 1), y, unbiased=unbiased) == pytest.approx(base, rel=1e-9)
    assert linear_cka(x, y @ orthogonal(p2, 2), unbiased=unbiased) == pytest.approx(base, rel=1e-9)
    assert linear_cka(3.7 * x, 0.01 * y, unbiased=unbiased) == pytest.approx(base, rel=1e-9)
    assert linear_cka(y, x, unbiased=unbiased) == pytest.approx(base, rel=1e-9)
    # Conv maps are flattened: [n, C, L] is the same as [n, C·L].
    assert linear_cka(x, y.reshape(n, -1, 4), unbiased=unbiased) == pytest.approx(base, rel=1e-12)


def test_cka_is_near_zero_for_independent_features_of_a_large_probe():
    RNG = np.random.default_rng(2)
    x = RNG.normal(size=(4000, 20))
    y = RNG.normal(size=(4000, 30))
    assert linear_cka(x, y) < 0.02                     # biased: ~sqrt(p1 p2)/n
    assert abs(linear_cka(x[:1500], y[:1500], unbiased=True)) < 0.02
    acc = MinibatchCKA(["x"], ["y"])
    for i in range(0, 4000, 250):
        acc.update({"x": torch.from_numpy(x[i:i + 250])}, {"y": torch.from_numpy(y[i:i + 250])})
    assert abs(acc.result()[0, 0]) < 0.02


def test_minibatch_cka_is_exactly_the_average_of_unbiased_batch_hsic():
    RNG = np.random.default_rng(3)
    x = RNG.normal(size=(300, 8))
    y = x[:, :4] @ RNG.normal(size=(4, 6)) + RNG.normal(size=(300, 6))
    z = RNG.normal(size=(300, 3, 5))
    acc = MinibatchCKA(["x", "z"], ["y"])
    xy = xx = yy = 0.0
    for i in range(0, 300, 60):
        k, l = gram_linear(x[i:i + 60]), gram_linear(y[i:i + 60])
        xy += hsic_unbiased(k, l); xx += hsic_unbiased(k, k); yy += hsic_unbiased(l, l)
        acc.update({"x": torch.from_numpy(x[i:i + 60]), "z": torch.from_numpy(z[i:i + 60])},
                   {"y": torch.from_numpy(y[i:i + 60])})
    assert acc.result()[0, 0] == pytest.approx(xy / math.sqrt(xx * yy), rel=1e-10)
    # One batch holding the whole probe is the full unbiased form.
    one = MinibatchCKA(["x"], ["y"])
    one.update({"x": torch.from_numpy(x)}, {"y": torch.from_numpy(y)})
    assert one.result()[0, 0] == pytest.approx(linear_cka(x, y, unbiased=True), rel=1e-10)


def test_minibatch_cka_agrees_with_the_full_form_on_a_large_probe():
    RNG = np.random.default_rng(4)
    n = 6000
    x = RNG.normal(size=(n, 10))
    y = np.maximum(x[:, :6] @ RNG.normal(size=(6, 15)), 0) + 0.5 * RNG.normal(size=(n, 15))
    full = linear_cka(x, y)
    acc = MinibatchCKA(["x"], ["y"])
    for i in range(0, n, 500):
        acc.update({"x": torch.from_numpy(x[i:i + 500])}, {"y": torch.from_numpy(y[i:i + 500])})
    assert 0.3 < full < 0.95
    assert acc.result()[0, 0] == pytest.approx(full, abs=0.03)


def test_minibatch_cka_refuses_tiny_batches_and_computes_only_requested_pairs():
    acc = MinibatchCKA(["a", "b"], ["c"], pairs=[("a", "c")])
    with pytest.raises(ValueError, match="at least 4"):
        acc.update({"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)}, {"c": torch.zeros(3, 2)})
    x = torch.randn(20, 5, dtype=torch.float64)
    acc.update({"a": x, "b": x}, {"c": x})
    res = acc.result()
    assert res[0, 0] == pytest.approx(1.0) and math.isnan(res[1, 0])


# ---- two runs -------------------------------------------------------------------------------
TASKS = ["t0", "t1", "t2"]
L = 100
ARCH = {"conv_channels": [8, 8, 8], "conv_widths": [7, 5, 3], "pool": [2, 2, 2], "dense": [16, 16], "dropout": 0.0}


def make_run(tmp_path, name, k, seed, store_path):
    cfg = RunConfig.model_validate({"data": {"path": str(store_path)}, "model": {"arch": ARCH, "sharing": {"shared_layers": k}},
                                    "train": {"seed": seed}})
    model = build_model(cfg.model, len(TASKS), 4, L, TASKS, seed=seed)
    run_dir = tmp_path / name
    run_dir.mkdir()
    torch.save({**model.checkpoint_payload(), "config": cfg.model_dump(mode="json")}, run_dir / "best.pt")
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    return run_dir


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(1)

    def split(n):
        return SplitArrays(codes=rng.integers(0, 4, (n, L), dtype=np.uint8),
                           labels=(rng.random((n, 3)) < 0.3).astype(np.int8))
    store_path = tmp_path / "store.h5"
    Store.from_arrays(TASKS, {"train": split(20), "valid": split(150)}).save(store_path)
    return make_run(tmp_path, "hard", 5, 0, store_path), make_run(tmp_path, "branched", 2, 1, store_path)


def test_similarity_of_a_run_with_itself_and_with_another(two_runs, tmp_path):
    hard, branched = two_runs
    same = similarity(str(branched), str(branched), probe=120, batch=40, out=tmp_path / "same")
    assert same.probe_n == 120
    assert same.rows == same.cols == ["conv1", "conv2", "conv3/t0", "conv3/t1", "conv3/t2",
                                      "fc1/t0", "fc1/t1", "fc1/t2", "fc2/t0", "fc2/t1", "fc2/t2"]
    np.testing.assert_allclose(np.diag(same.matrix), 1.0, atol=1e-9)
    i, j = same.rows.index("conv3/t0"), same.cols.index("conv3/t1")
    assert math.isnan(same.matrix[i, j])                          # different tasks' towers: not compared
    assert np.isfinite(same.matrix[i, same.cols.index("fc1/t0")])  # same task, other layer
    assert np.isfinite(same.matrix[i, same.cols.index("conv1")])   # tower vs shared
    res = similarity(str(hard), str(branched), layers=["conv1", "conv3", "fc2"], tasks=["t1"], probe=120,
                     batch=40, out=tmp_path / "ab")
    assert res.rows == ["conv1", "conv3", "fc2"] and res.cols == ["conv1", "conv3/t1", "fc2/t1"]
    assert np.isfinite(res.matrix).all() and (res.matrix < 1.0 + 1e-9).all()
    rows = list(csv.reader(open(tmp_path / "ab" / "cka.csv")))
    assert rows[0] == ["A \\ B", "conv1", "conv3/t1", "fc2/t1"] and float(rows[1][1]) == pytest.approx(res.matrix[0, 0], abs=1e-6)
    assert sorted(p.name for p in res.files) == ["cka.csv", "cka.json", "cka.png"]


def test_similarity_rejects_bad_input_in_one_line(two_runs, tmp_path):
    hard, branched = two_runs
    with pytest.raises(DataError, match="conv9"):
        similarity(str(hard), str(branched), layers=["conv9"], out=tmp_path / "x")
    with pytest.raises(DataError, match="no best.pt"):
        load_run(str(tmp_path))
    with pytest.raises(DataError, match="no such run directory"):
        load_run(str(tmp_path / "missing"))
    assert not (tmp_path / "x").exists()


def test_similarity_command_logs_an_analysis_run(two_runs, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient
    hard, branched = two_runs
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([str(hard), str(branched), "--layers", "conv1,fc2", "--tasks", "t0", "--probe", "80",
                         "--batch", "40", "--out", str(tmp_path / "out"), "--tracking-uri", mlflow_server.url,
                         "--experiment", "cka-test"])
    assert run(args) == 0
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("cka-test")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.data.tags["role"] == "analysis" and r.data.tags["run_a"] == str(hard.resolve())
    assert r.data.tags["run_b"] == str(branched.resolve()) and r.info.status == "FINISHED"
    assert set(r.data.metrics) == {"cka/conv1__conv1", "cka/conv1__fc2/t0", "cka/fc2__conv1", "cka/fc2__fc2/t0"}
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"cka.csv", "cka.json", "cka.png"}
    # A training run's MLflow id stands for its run directory (its run_dir tag).
    exp_id = client.get_experiment_by_name("cka-test").experiment_id
    train_run = client.create_run(exp_id, tags={"run_dir": str(branched)}).info.run_id
    loaded = load_run(train_run, locate=locator(mlflow_server.url))
    assert loaded.run_dir == branched.resolve() and loaded.mlflow_run_id == train_run
    with pytest.raises(DataError, match="neither a run directory"):
        load_run("0123456789abcdef0123456789abcdef", locate=locator(mlflow_server.url))

