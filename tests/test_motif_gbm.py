import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from mtlsweep.data.jaspar import load_motifs
from mtlsweep.data.store import SplitArrays, Store
from mtlsweep.data.synthetic import spec_from_dict, write_synthetic
from mtlsweep.training.callbacks import Callback
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import RunConfig
from mtlsweep.training.metrics import task_metrics
from mtlsweep.config.run import GbmConfig, parse_gbm_config
from mtlsweep.models.motif_gbm import GbmModel, fit_gbm
from mtlsweep.training.reference_runner import evaluate, run_gbm

FAST = dict(n_estimators=80, learning_rate=0.2, max_depth=3, early_stopping_rounds=10, n_jobs=1)


def write_jaspar(path, motifs):
    with open(path, "w") as fh:
        for m in motifs:
            fh.write(f">{m.matrix_id} {m.name}\n")
            for base, row in zip("ACGT", np.asarray(m.pfm)):
                fh.write(f"{base} [ " + " ".join(f"{v * 1000:.3f}" for v in row) + " ]\n")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The small synthetic benchmark and a motif file: its true motifs plus 10 unrelated ones."""
    d = tmp_path_factory.mktemp("synth")
    paths = write_synthetic(spec_from_dict({"n_tasks": 4, "n_groups": 2, "n_seqs": 3000, "seq_len": 200,
                                            "seed": 0}), d / "data")
    truth = json.loads(paths["truth"].read_text())
    pool = load_motifs()  # cached by the generator's own call
    used = [m for m in pool if m.matrix_id in truth["motifs"]]
    rest = [m for m in pool if m.matrix_id not in truth["motifs"] and m.width <= 20]
    others = [rest[i] for i in np.random.default_rng(0).choice(len(rest), 10, replace=False)]
    write_jaspar(d / "motifs.jaspar", used + others)
    return {"store": paths["store"], "motifs": d / "motifs.jaspar", "n_true": len(used), "dir": d}


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, info):
        self.events.append(("start", info))

    def on_epoch_end(self, report):
        self.events.append(("epoch", report.epoch, dict(report.metrics), report))

    def on_train_end(self, result):
        self.events.append(("end", result))


def run_config(store_path, out_dir, **data):
    return RunConfig.model_validate({"data": {"path": str(store_path), **data},
                                     "train": {"out_dir": str(out_dir), "seed": 0}})


def test_gbm_config_validation_names_the_field():
    g = GbmConfig()
    assert (g.features, g.n_bins, g.backend, g.n_estimators, g.max_depth, g.multi_output) == \
        (["max"], 3, "sklearn", 300, 4, False)
    with pytest.raises(ValidationError, match="n_bins"):
        GbmConfig(n_bins=1)
    with pytest.raises(ConfigError, match=r"gbm\.max_depth: must be >= 1, got 0"):
        parse_gbm_config({"max_depth": 0})
    with pytest.raises(ConfigError, match=r"gbm\.kmer_k: must be <= 4"):
        parse_gbm_config({"kmer_k": 5})
    with pytest.raises(ConfigError, match=r"gbm\.hit_threshold: must be <= 1"):
        parse_gbm_config({"hit_threshold": 1.5})
    with pytest.raises(ConfigError, match=r"gbm\.learning_rat: unknown key"):
        parse_gbm_config({"learning_rat": 0.1})
    with pytest.raises(ConfigError, match=r"gbm\.backend: must be one of"):
        parse_gbm_config({"backend": "lightgbm"})
    with pytest.raises(ConfigError, match=r"gbm\.features.*twice"):
        parse_gbm_config({"features": ["max", "max"]})
    with pytest.raises(ConfigError, match=r"gbm\.features\.0"):
        parse_gbm_config({"features": ["maximum"]})


def test_synthetic_benchmark_end_to_end_like_a_cnn_run(synth, tmp_path):
    gbm = GbmConfig(motif_file=str(synth["motifs"]), backend="sklearn", cache_dir=str(tmp_path / "cache"), **FAST)
    cfg = run_config(synth["store"], tmp_path / "runs")
    rec = Recorder()
    result = run_gbm(cfg, tmp_path / "runs" / "r1", [rec], gbm_cfg=gbm)

    kinds = [e[0] for e in rec.events]
    assert kinds == ["start", "epoch", "end"]
    info = rec.events[0][1]
    tasks = ["g0_t00", "g0_t01", "g1_t02", "g1_t03"]
    assert info.task_names == tasks and info.n_tasks == 4 and info.n_train == 2400
    assert info.n_params > 0 and info.flops_per_sample > 0 and info.device == "cpu"
    m = rec.events[1][2]
    for key in ["train/loss", "val/loss", "val/auroc_mean", "val/auroc_median", "val/auprc_mean",
                "cost/epoch_s", "cost/train_s", "cost/samples_per_s", "cost/peak_mem_mb"]:
        assert math.isfinite(m[key]), key
    for t in tasks:
        assert {f"val/auroc/{t}", f"val/auprc/{t}"} <= m.keys() and m[f"schedule/weight/{t}"] == 1.0
    assert rec.events[1][3].best and rec.events[1][3].last and m["epoch"] == 1.0
    # the truth's motifs are in the set: far above chance (0.5)
    assert m["val/auroc_mean"] >= 0.7, m["val/auroc_mean"]
    assert result.best_epoch == 1 and result.best_val_auroc == m["val/auroc_mean"]
    assert result.test is not None and result.test_summary["test/auroc_mean"] >= 0.7
    run = tmp_path / "runs" / "r1"
    assert {"config.yaml", "metrics.json", "per_task.csv"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "metrics.json").read_text())["final"]["val/auroc_mean"] == m["val/auroc_mean"]

    assert m["cost/features_cached"] == 0.0 and len(list((tmp_path / "cache").glob("*.npy"))) == 3

    # the saved models predict what the run measured
    store = Store.load(synth["store"])
    valid = store.split("valid")
    probs = GbmModel.load(run).predict_proba(valid.codes)
    np.testing.assert_allclose(task_metrics(probs, valid.labels).auroc, result.val.auroc, atol=1e-6)


def test_unknown_labels_are_left_out_of_fit_and_metrics(synth):
    """Marking labels unknown must be the same as deleting those sequences for that task."""
    store = Store.load(synth["store"])
    tr, va = store.split("train"), store.split("valid")
    rng = np.random.default_rng(1)
    hide = rng.random(tr.n) < 0.3
    labels = tr.labels.copy()
    labels[hide, 0] = -1
    vlabels = va.labels.copy()
    vhide = rng.random(va.n) < 0.3
    vlabels[vhide, 0] = -1
    masked = Store.from_arrays(store.task_names[:1], {
        "train": SplitArrays(tr.codes, labels[:, :1]), "valid": SplitArrays(va.codes, vlabels[:, :1])})
    dropped = Store.from_arrays(store.task_names[:1], {
        "train": SplitArrays(tr.codes[~hide], tr.labels[~hide, :1]),
        "valid": SplitArrays(va.codes[~vhide], va.labels[~vhide, :1])})
    gbm = GbmConfig(features=["gc", "kmer"], kmer_k=2, backend="sklearn", cache_dir=None, **FAST)
    a, b = fit_gbm(gbm, masked, seed=0), fit_gbm(gbm, dropped, seed=0)
    np.testing.assert_array_equal(a.probs["valid"][~vhide], b.probs["valid"])
    ma, mb = evaluate(a, masked)["valid"], evaluate(b, dropped)["valid"]
    assert ma.auroc[0] == mb.auroc[0]
    assert ma.n_pos[0] + ma.n_neg[0] == (~vhide).sum()


def test_a_task_with_one_class_is_undefined_and_skipped(synth, tmp_path):
    store = Store.load(synth["store"])
    splits = {}
    for s, sp in store.splits.items():
        lab = sp.labels.copy()
        if s == "train":
            lab[:, 1] = 0                      # no positives left to learn from
            lab[:, 2] = -1                     # nothing known at all
        splits[s] = SplitArrays(sp.codes, lab)
    odd = Store.from_arrays(store.task_names, splits)
    gbm = GbmConfig(features=["gc", "kmer"], backend="sklearn", cache_dir=None, **FAST)
    rec = Recorder()
    result = run_gbm(run_config(synth["store"], tmp_path), tmp_path / "r", [rec], odd, gbm_cfg=gbm)
    assert np.isnan(result.val.auroc[[1, 2]]).all() and np.isfinite(result.val.auroc[[0, 3]]).all()
    m = rec.events[1][2]
    assert math.isnan(m["val/auroc/g0_t01"]) and m["val/tasks_undefined"] == 2.0
    assert math.isfinite(m["val/auroc_mean"])
    manifest = json.loads((tmp_path / "r" / "gbm" / "manifest.json").read_text())
    assert manifest["skipped_tasks"] == ["g0_t01", "g1_t02"] and manifest["models"]["g0_t01"] is None


def test_fit_is_deterministic_for_a_seed(synth):
    store = Store.load(synth["store"]).select_tasks([0, 3])
    gbm = GbmConfig(features=["gc", "kmer"], backend="sklearn", cache_dir=None, **FAST)
    a, b = fit_gbm(gbm, store, seed=3), fit_gbm(gbm, store, seed=3)
    np.testing.assert_array_equal(a.probs["valid"], b.probs["valid"])
    assert a.n_nodes == b.n_nodes


def test_multi_output_needs_xgboost():
    with pytest.raises(ConfigError, match="gbm.multi_output=true needs gbm.backend xgboost"):
        parse_gbm_config({"backend": "sklearn", "multi_output": True})
    with pytest.raises(ConfigError, match="gbm.backend: must be one of 'xgboost' or 'sklearn', got 'auto'"):
        parse_gbm_config({"backend": "auto"})


@pytest.mark.parametrize("multi", [False, True])
def test_xgboost_per_task_and_multi_output(synth, tmp_path, multi):
    store = Store.load(synth["store"])
    lab = store.split("train").labels.copy()
    lab[np.random.default_rng(0).random(lab.shape) < 0.2] = -1
    splits = dict(store.splits)
    splits["train"] = SplitArrays(store.split("train").codes, lab)
    data = Store.from_arrays(store.task_names, splits)
    gbm = GbmConfig(motif_file=str(synth["motifs"]), backend="xgboost", multi_output=multi,
                    cache_dir=str(tmp_path / "cache"), **FAST)
    cfg = run_config(synth["store"], tmp_path)
    result = run_gbm(cfg, tmp_path / "r", [], data, gbm_cfg=gbm)
    assert result.best_val_auroc >= 0.7
    again = fit_gbm(gbm, data, seed=0)
    np.testing.assert_array_equal(evaluate(again, data)["valid"].auroc, result.val.auroc)
    probs = GbmModel.load(tmp_path / "r").predict_proba(store.split("valid").codes)
    np.testing.assert_allclose(probs, again.probs["valid"], atol=1e-6)
