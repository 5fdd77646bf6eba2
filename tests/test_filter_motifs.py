import argparse
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlsweep.analysis.filter_motifs import (FilterResult, Match, MotifDB, compare, filter_pfms, first_layer_activation,
                                             match_filters, planted_recall)
from mtlsweep.app.analysis_flags import add_motif_arguments as add_arguments
from mtlsweep.app.analyses import run_motifs as run
from mtlsweep.analysis.similarity import Probe
from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import load_motifs, log_odds
from mtlsweep.data.store import SplitArrays, Store
from mtlsweep.models import build_model
from mtlsweep.config.run import ModelConfig, RunConfig


L = 100
WIDTH = 15
ARCH = {"conv_channels": [8, 8, 8], "conv_widths": [WIDTH, 5, 3], "pool": [2, 2, 2], "dense": [16, 16], "dropout": 0.0}
TARGET = "MA0035.5"          # GATA1: distinctive enough that no other JASPAR matrix aligns better


@pytest.fixture(scope="module")
def db():
    return MotifDB(load_motifs())


def motif_model(motif, k=5):
    cfg = ModelConfig.model_validate({"arch": ARCH, "sharing": {"shared_layers": k}})
    model = build_model(cfg, 2, 4, L, ["a", "b"], seed=0)
    with torch.no_grad():
        w = model.layers["conv1"].weight
        w[:, 0].zero_()
        off = (WIDTH - motif.width) // 2
        w[:, 0, :, off:off + motif.width] = torch.from_numpy(log_odds(motif.pfm)).float()
    return model.eval()


def random_probe(n=1000, seed=0):
    codes = np.random.default_rng(seed).integers(0, 4, (n, L), dtype=np.uint8)
    return Probe("random", "valid", SplitArrays(codes=codes, labels=np.zeros((n, 2), np.int8)), seed)


def test_filter_seeded_with_a_motif_matches_it_first_and_significantly(db):
    motif = db.motifs[db.index[TARGET]]
    model = motif_model(motif)
    pfms = filter_pfms(model, random_probe(), batch=256)
    res = match_filters(pfms, db, n_shuffles=200)
    first = res[0]
    assert first.matches[0].matrix_id == TARGET
    assert first.matches[0].p < 0.01 and first.p_db < 0.01 and first.significant(0.01)
    # Kaiming-random filters: their sites' column order means nothing, so shuffles do as well.
    others = [r.p_db for r in res[1:] if np.isfinite(r.p_db)]
    assert len(others) >= 5 and np.median(others) > 0.1 and min(others) > 0.01


def test_pfms_count_the_sites_above_half_the_maximum():
    model = motif_model(load_motifs()[0])
    probe = random_probe(200, seed=1)
    pfms = filter_pfms(model, probe, batch=64)
    x = torch.cat(list(probe.batches(200, [0, 1, 2, 3])))
    act = first_layer_activation(model, x)
    # The activation is the layer's own (eval) output before pooling.
    pooled = F.max_pool1d(act, 2, 2, ceil_mode=True)
    assert torch.allclose(pooled, model.layer_outputs(x)["conv1"], atol=1e-5)
    mx = act.amax(dim=(0, 2))
    np.testing.assert_allclose(pfms.max_act, mx.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(pfms.n_sites, (act > 0.5 * mx[None, :, None]).sum(dim=(0, 2)).numpy())
    assert np.allclose(pfms.counts.sum(axis=1), pfms.n_sites[:, None])
    # One site by hand: filter 0's best window is counted.
    b, pos = divmod(int(act[:, 0].argmax()), act.shape[2])
    window = probe.codes[b, pos:pos + WIDTH]
    assert all(pfms.counts[0, window[j], j] >= 1 for j in range(WIDTH))


def test_towers_have_filters_per_task(db):
    motif = db.motifs[db.index[TARGET]]
    pfms = filter_pfms(motif_model(motif, k=0), random_probe(300), batch=128)
    assert len(pfms.names) == 16 and pfms.names[0] == "a/f0" and pfms.names[8] == "b/f0"


def test_shuffled_null_is_exact_for_a_palindrome_free_query(db):
    # Observed score of a motif against itself is the number of its informative columns (PCC 1 each).
    motif = db.motifs[db.index[TARGET]]
    scores, align, null = compare(motif.pfm, db, n_shuffles=50, seed=0)
    k = db.index[TARGET]
    assert scores[k] == pytest.approx(motif.width, abs=1e-4) and align[k] == ("+", 0)
    assert null.shape == (50, len(db)) and (null[:, k] < scores[k]).all()
    rc_scores, rc_align, _ = compare(motif.pfm[::-1, ::-1].copy(), db, n_shuffles=5)
    assert rc_scores[k] == pytest.approx(scores[k], abs=1e-4) and rc_align[k][0] == "-"


def test_planted_recall_counts_significant_top_matches():
    truth = {"tasks": {"t0": {"activating_motifs": [{"matrix_id": "M1"}, {"matrix_id": "M2"}]},
                       "t1": {"activating_motifs": [{"matrix_id": "M2"}, {"matrix_id": "M3"}]}},
             "decoys": [{"matrix_id": "D1"}]}
    res = [FilterResult("f0", 50, 1.0, 5.0, None, 0.004, [Match("M2", "x", 9, 0.004, "+", 0)]),
           FilterResult("f1", 50, 1.0, 5.0, None, 0.3, [Match("M1", "x", 5, 0.004, "+", 0)]),   # not significant
           FilterResult("f2", 50, 1.0, 5.0, None, 0.004, [Match("Z", "x", 9, 0.004, "+", 0),
                                                          Match("D1", "x", 8, 0.004, "-", 1)])]
    rc = planted_recall(res, truth, alpha=0.01)
    assert rc["planted"] == ["M1", "M2", "M3"] and rc["recovered"] == ["M2"]
    assert rc["recall"] == pytest.approx(1 / 3) and rc["decoys_matched"] == ["D1"] and rc["filters"] == {"M2": "f0"}


def test_motifs_command_reports_matches_recall_and_logos(tmp_path, db):
    motif = db.motifs[db.index[TARGET]]
    model = motif_model(motif)
    codes = np.random.default_rng(2).integers(0, 4, (400, L), dtype=np.uint8)
    labels = np.zeros((400, 2), np.int8)
    store = tmp_path / "store.h5"
    Store.from_arrays(["a", "b"], {"train": SplitArrays(codes[:50], labels[:50]),
                                   "valid": SplitArrays(codes, labels)}).save(store)
    cfg = RunConfig.model_validate({"data": {"path": str(store)}, "model": {"arch": ARCH}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({**model.checkpoint_payload(), "config": cfg.model_dump(mode="json")}, run_dir / "best.pt")
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"tasks": {"a": {"activating_motifs": [{"matrix_id": TARGET}]},
                                           "b": {"activating_motifs": [{"matrix_id": "MA0139.2"}]}},
                                 "decoys": []}))
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([str(run_dir), "--probe", "400", "--truth", str(truth), "--out", str(tmp_path / "out"),
                         "--shuffles", "100", "--logos", "3"])
    assert run(args) == 0
    summary = json.loads((tmp_path / "out" / "motifs_summary.json").read_text())
    assert summary["planted_recall"]["recovered"] == [TARGET] and summary["planted_recall"]["recall"] == 0.5
    assert summary["filters"] == 8 and summary["matched"] >= 1 and summary["top"][0]["match"] == TARGET
    rows = list(csv.DictReader(open(tmp_path / "out" / "filter_matches.csv")))
    assert rows[0]["filter"] == "f0" and rows[0]["match1_id"] == TARGET and rows[0]["significant"] == "1"
    assert (tmp_path / "out" / "filter_logos.png").stat().st_size > 10_000
    args.shuffles = 50                        # cannot reach p < 0.01
    with pytest.raises(DataError, match="shuffles"):
        run(args)

