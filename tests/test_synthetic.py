import json

import numpy as np
import pytest

from mtlsweep.data.basset_hdf5 import BassetReader
from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import load_motifs, scan_max
from mtlsweep.data.store import Store
from mtlsweep.data.synthetic import (
    SCORE_RES,
    SPLITS,
    SynthSpec,
    generate,
    quantized_log_odds,
    spec_from_dict,
    target_prevalences,
    write_synthetic,
)

SMALL = dict(n_tasks=6, n_groups=2, motifs_per_task=3, n_seqs=3000, seq_len=200, seed=7)


@pytest.fixture(scope="module")
def small():
    spec = SynthSpec(**SMALL)
    return (spec, *generate(spec))


def _all(splits, key):
    return np.concatenate([getattr(splits[s], key) for s in SPLITS])


def _scan_hits(spec, truth, codes):
    """Per motif id: sequences where a scan reaches the motif's planting floor."""
    pfms = {m.matrix_id: m.pfm for m in load_motifs(release=spec.motif_release)}
    return {mid: scan_max(codes, quantized_log_odds(pfms[mid], spec.gc)) >= round(info["floor_bits"] * SCORE_RES)
            for mid, info in truth["motifs"].items()}


def test_same_seed_same_data_other_seed_other_data(small):
    spec, names, splits, truth = small
    names2, splits2, truth2 = generate(SynthSpec(**SMALL))
    assert names2 == names and truth2 == truth
    for s in SPLITS:
        np.testing.assert_array_equal(splits2[s].codes, splits[s].codes)
        np.testing.assert_array_equal(splits2[s].labels, splits[s].labels)
        assert splits2[s].headers == splits[s].headers
    _, other, other_truth = generate(spec.replace(seed=8))
    assert not np.array_equal(other["train"].codes, splits["train"].codes)
    assert not np.array_equal(other["train"].labels, splits["train"].labels)
    assert other_truth["fingerprint"] != truth["fingerprint"]


def test_shapes_splits_and_background(small):
    spec, names, splits, truth = small
    assert names == ["g0_t00", "g0_t01", "g0_t02", "g1_t03", "g1_t04", "g1_t05"]
    sizes = {s: splits[s].codes.shape[0] for s in SPLITS}
    assert sizes == {"train": 2400, "valid": 300, "test": 300} == truth["split_sizes"]
    for s in SPLITS:
        sp = splits[s]
        assert sp.codes.dtype == np.uint8 and sp.codes.shape[1] == 200
        assert sp.labels.dtype == np.int8 and sp.labels.shape == (sizes[s], 6)
        assert sp.tracks is None and len(sp.headers) == sizes[s]
    codes = _all(splits, "codes")
    assert codes.max() <= 3
    gc = np.isin(codes, (1, 2)).mean()
    assert abs(gc - spec.gc) < 0.02
    assert set(np.unique(_all(splits, "labels"))) == {0, 1}


def test_groups_share_exactly_the_configured_motifs(small):
    spec, names, splits, truth = small
    assert spec.n_shared == 2
    motif_sets = {n: {a["matrix_id"] for a in truth["tasks"][n]["activating_motifs"]} for n in names}
    for g, info in truth["groups"].items():
        shared = {m["matrix_id"] for m in info["shared_motifs"]}
        assert len(shared) == 2
        for n in info["tasks"]:
            assert truth["tasks"][n]["group"] == g
            assert len(motif_sets[n]) == 3
            assert {a["matrix_id"] for a in truth["tasks"][n]["activating_motifs"] if a["shared"]} == shared
    for a in names:
        for b in names:
            if a < b:
                common = motif_sets[a] & motif_sets[b]
                same_group = truth["tasks"][a]["group"] == truth["tasks"][b]["group"]
                assert len(common) == (2 if same_group else 0)
    decoys = {d["matrix_id"] for d in truth["decoys"]}
    assert len(decoys) == spec.n_decoys and not decoys & set().union(*motif_sets.values())


def test_unrelated_tasks_share_no_motifs():
    spec = SynthSpec(**{**SMALL, "shared_fraction": 0.0, "n_seqs": 500})
    names, _, truth = generate(spec)
    ids = [a["matrix_id"] for n in names for a in truth["tasks"][n]["activating_motifs"]]
    assert len(ids) == 18 and len(set(ids)) == 18
    assert all(g["shared_motifs"] == [] for g in truth["groups"].values())


def test_prevalence_hits_targets(small):
    spec, names, splits, truth = small
    targets = target_prevalences(spec)
    assert targets[0] == pytest.approx(0.04) and targets[-1] == pytest.approx(0.19)
    assert sorted(truth["tasks"][n]["prevalence_target"] for n in names) == pytest.approx(list(targets), abs=1e-6)
    labels = _all(splits, "labels")
    for t, n in enumerate(names):
        target = truth["tasks"][n]["prevalence_target"]
        realized = (labels[:, t] == 1).mean()
        tol = 4 * np.sqrt(target * (1 - target) / len(labels)) + 0.005
        assert abs(realized - target) < tol, (n, realized, target)
        assert truth["prevalence"]["train"][n] == pytest.approx((splits["train"].labels[:, t] == 1).mean(), abs=1e-6)


def test_scanned_motifs_enriched_in_own_tasks_only(small):
    spec, names, splits, truth = small
    codes, labels = _all(splits, "codes"), _all(splits, "labels")
    hits = _scan_hits(spec, truth, codes)
    for t, n in enumerate(names):
        pos, neg = labels[:, t] == 1, labels[:, t] == 0
        own = {a["matrix_id"] for a in truth["tasks"][n]["activating_motifs"]}
        for mid, h in hits.items():
            p1, p0 = h[pos].mean(), h[neg].mean()
            pooled = h.mean()
            z = (p1 - p0) / np.sqrt(pooled * (1 - pooled) * (1 / pos.sum() + 1 / neg.sum()) + 1e-12)
            if mid in own:
                assert p1 > 3 * p0 and z > 6, (n, mid, p1, p0)
            else:
                assert abs(z) < 4, (n, mid, truth["motifs"][mid]["role"], p1, p0)


def test_labels_are_the_scanned_rule_up_to_chance_matches():
    spec = SynthSpec(**{**SMALL, "label_noise": 0.0})
    names, splits, truth = generate(spec)
    codes, labels = _all(splits, "codes"), _all(splits, "labels")
    pfms = {m.matrix_id: m.pfm for m in load_motifs(release=spec.motif_release)}
    best = {mid: scan_max(codes, quantized_log_odds(pfms[mid], spec.gc)) for mid in truth["motifs"]}
    for t, n in enumerate(names):
        rule = np.any([best[a["matrix_id"]] >= round(a["min_score_bits"] * SCORE_RES)
                       for a in truth["tasks"][n]["activating_motifs"]], axis=0)
        assert np.all(rule[labels[:, t] == 1])              # every positive carries a strong enough site
        assert (rule & (labels[:, t] == 0)).mean() < 0.01   # chance matches only


def test_shared_motifs_explain_the_configured_share_with_nested_thresholds(small):
    spec, names, splits, truth = small
    for g, info in truth["groups"].items():
        members = sorted(info["tasks"], key=lambda n: truth["tasks"][n]["clean_prevalence_target"])
        for n in members:
            assert truth["tasks"][n]["positives_from_shared_motifs_target"] == pytest.approx(2 / 3, abs=0.05)
            assert truth["tasks"][n]["positives_from_shared_motifs"] == pytest.approx(2 / 3, abs=0.2)
        # A rarer task responds only to stronger sites of the shared motifs.
        for shared in info["shared_motifs"]:
            thresholds = [next(a["min_score_bits"] for a in truth["tasks"][n]["activating_motifs"]
                               if a["matrix_id"] == shared["matrix_id"]) for n in members]
            assert thresholds == sorted(thresholds, reverse=True) and thresholds[0] > thresholds[-1]


def test_unknown_rate_marks_labels_unknown():
    spec = SynthSpec(**{**SMALL, "unknown_rate": 0.3})
    names, splits, truth = generate(spec)
    labels = _all(splits, "labels")
    unknown = (labels == -1).mean()
    assert abs(unknown - 0.3) < 0.015
    assert truth["unknown_fraction"]["train"][names[0]] == pytest.approx((splits["train"].labels[:, 0] == -1).mean(), abs=1e-6)
    known = labels >= 0
    realized = ((labels == 1) & known).sum(axis=0) / known.sum(axis=0)
    targets = np.array([truth["tasks"][n]["prevalence_target"] for n in names])
    assert np.all(np.abs(realized - targets) < 0.03)


@pytest.mark.parametrize(
    "knobs, field",
    [
        ({"n_tasks": 4, "n_groups": 5}, "n_groups"),
        ({"shared_fraction": 1.5}, "shared_fraction"),
        ({"shared_fraction": -0.1}, "shared_fraction"),
        ({"seq_len": 12}, "seq_len"),
        ({"valid_fraction": 0.0}, "valid_fraction"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "test_fraction"),
        ({"label_noise": 0.05}, "label_noise"),
        ({"unknown_rate": 1.0}, "unknown_rate"),
        ({"prevalence_median": 0.5}, "prevalence_median"),
        ({"gc": 1.0}, "gc"),
        ({"n_seqs": 10}, "n_seqs"),
        ({"n_tasks": "many"}, "n_tasks"),
        ({"n_tasks": True}, "n_tasks"),
        ({"n_seqs": 2500.5}, "n_seqs"),
        ({"motif_release": "JASPAR1999"}, "motif_release"),
        ({"motif_file": "/nonexistent/motifs.meme"}, "motif_file"),
        ({"bogus_knob": 1}, "bogus_knob"),
        ({"avoid_motifs": "vertebrates"}, "avoid_motifs"),
        ({"motif_source": "random"}, "motif_source"),
    ],
)
def test_bad_knobs_name_the_field(knobs, field):
    with pytest.raises(DataError) as err:
        spec_from_dict(knobs)
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_spec_from_dict_coerces_cli_strings_and_keeps_defaults():
    spec = spec_from_dict({"n_tasks": "8", "n_groups": 2.0, "gc": "0.5", "motif_release": "null", "seed": 3})
    assert spec == SynthSpec(n_tasks=8, n_groups=2, gc=0.5, motif_release=None, seed=3)
    assert spec_from_dict(None) == SynthSpec()
    with pytest.raises(DataError, match="n_groups"):
        SynthSpec(n_tasks=2, n_groups=3)


def test_impossible_motif_demand_is_a_clear_error():
    with pytest.raises(DataError) as err:
        generate(SynthSpec(n_tasks=300, n_groups=1, shared_fraction=0.0, n_seqs=200, seq_len=200))
    msg = str(err.value)
    assert "distinct motifs" in msg and "max_similarity" in msg


def test_motif_file_is_the_pool(tmp_path):
    chosen = [m for m in load_motifs() if m.matrix_id in ("MA0139.2", "MA0079.5", "MA1596.1", "MA0163.1")]
    lines = []
    for m in chosen:
        lines.append(f">{m.matrix_id} {m.name}")
        lines += ["ACGT"[i] + " [ " + " ".join(f"{v:.6f}" for v in m.pfm[i]) + " ]" for i in range(4)]
    path = tmp_path / "pool.jaspar"
    path.write_text("\n".join(lines) + "\n")
    spec = SynthSpec(n_tasks=2, n_groups=1, motifs_per_task=2, shared_fraction=0.5, n_decoys=1, n_seqs=300,
                     seq_len=200, motif_file=str(path))
    _, _, truth = generate(spec)
    assert set(truth["motifs"]) == {m.matrix_id for m in chosen}


def _file_bytes(paths):
    return {k: p.read_bytes() for k, p in paths.items()}


def test_write_synthetic_is_byte_identical_and_readable(tmp_path):
    spec = SynthSpec(**{**SMALL, "n_seqs": 600, "unknown_rate": 0.1})
    a = write_synthetic(spec, tmp_path / "a")
    b = write_synthetic(spec, tmp_path / "b")
    assert set(a) == {"basset", "store", "truth"}
    assert [p.name for p in a.values()] == ["basset.h5", "store.h5", "truth.json"]
    assert _file_bytes(a) == _file_bytes(b)

    names, splits, truth = generate(spec)
    assert json.loads(a["truth"].read_text()) == json.loads(json.dumps(truth))
    text = a["truth"].read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"

    store = Store.load(a["store"])
    assert store.task_names == names and store.seq_len == 200 and store.fingerprint == truth["fingerprint"]
    with BassetReader(a["basset"]) as reader:
        assert reader.task_names == names and reader.seq_len == 200 and reader.layout == "N41L"
        assert reader.headers("test") == splits["test"].headers
        for s in SPLITS:
            np.testing.assert_array_equal(store.splits[s].codes, splits[s].codes)
            np.testing.assert_array_equal(store.splits[s].labels, splits[s].labels)
            codes, labels, tracks = reader.read_split(s)
            np.testing.assert_array_equal(codes, splits[s].codes)
            np.testing.assert_array_equal(labels, splits[s].labels)
            assert tracks is None

    other = write_synthetic(spec.replace(seed=99), tmp_path / "c")
    assert all(other[k].read_bytes() != a[k].read_bytes() for k in a)


def test_write_synthetic_refuses_to_overwrite(tmp_path):
    spec = SynthSpec(**{**SMALL, "n_seqs": 300})
    paths = write_synthetic(spec, tmp_path)
    before = _file_bytes(paths)
    changed = spec.replace(seed=1)
    with pytest.raises(DataError) as err:
        write_synthetic(changed, tmp_path)
    assert str(tmp_path / "basset.h5") in str(err.value) and "\n" not in str(err.value)
    assert _file_bytes(paths) == before
    # One leftover file is enough to refuse, and nothing else is written.
    (tmp_path / "basset.h5").unlink()
    (tmp_path / "store.h5").unlink()
    with pytest.raises(DataError, match="truth.json"):
        write_synthetic(changed, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.json"]
    write_synthetic(changed, tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["basset.h5", "store.h5", "truth.json"]
    assert json.loads((tmp_path / "truth.json").read_text())["spec"]["seed"] == 1


def test_write_synthetic_writes_nothing_for_an_impossible_spec(tmp_path):
    # Valid knobs, but the planted sites would not fit in such short sequences.
    spec = SynthSpec(n_tasks=4, n_groups=1, n_seqs=200, seq_len=40, prevalence_min=0.5, prevalence_median=0.7,
                     prevalence_max=0.9, label_noise=0.0, n_decoys=0)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="seq_len=40"):
        write_synthetic(spec, out)
    assert not out.exists()


def test_oracle_ceiling_per_split_and_task(small):
    spec, names, splits, truth = small
    oracle = truth["oracle"]
    assert set(oracle["tasks"]) == set(SPLITS) and all(set(oracle["tasks"][s]) == set(names) for s in SPLITS)
    for s in SPLITS:
        rocs = [v["auroc"] for v in oracle["tasks"][s].values()]
        assert all(0.7 < r <= 1.0 for r in rocs), rocs    # 2% flips on 4-19% positives: the noise caps it
        assert oracle["mean"][s]["auroc"] == pytest.approx(np.mean(rocs), abs=1e-6)
    # Without label noise the oracle is the generator's own rule: perfect up to rare chance matches.
    _, _, clean = generate(spec.replace(label_noise=0.0, n_seqs=1500))
    assert all(v["auroc"] > 0.995 for s in SPLITS for v in clean["oracle"]["tasks"][s].values())


def test_the_ceiling_is_found_beside_the_store_and_is_above_a_trained_model(tmp_path):
    from mtlsweep.data.synthetic import load_oracle
    from mtlsweep.config.run import RunConfig
    from mtlsweep.training.engine import Trainer
    spec = SynthSpec(n_tasks=4, n_groups=2, motifs_per_task=2, n_seqs=1500, seq_len=120, seed=3)
    paths = write_synthetic(spec, tmp_path / "synth")
    store = Store.load(paths["store"])
    oracle = load_oracle(paths["store"], store.fingerprint)
    truth = json.loads(paths["truth"].read_text())
    assert oracle == truth["oracle"]["tasks"]
    assert load_oracle(paths["store"], "another fingerprint") is None        # another data set: no ceiling
    cfg = RunConfig().with_overrides({
        "data.path": str(paths["store"]), "data.batch_size": 32, "model.arch.conv_channels": [8, 8, 8],
        "model.arch.conv_widths": [7, 5, 3], "model.arch.pool": [2, 2, 2], "model.arch.dense": [8, 8],
        "optim.name": "adam", "optim.lr": 0.01, "train.epochs": 3, "train.num_threads": 1,
        "train.out_dir": str(tmp_path / "runs")})
    trainer = Trainer(cfg, tmp_path / "runs" / "r", progress=False)
    assert trainer.oracle == oracle
    result = trainer.fit()
    assert result.test_summary["test/auroc_mean"] < truth["oracle"]["mean"]["test"]["auroc"]
    assert "train/auroc_mean" in result.history[-1] and "gap/auroc" in result.history[-1]


def test_de_novo_motifs_outside_a_collection_plant_nothing_motif_gbm_scans():
    """The knob that tells motif_gbm's prior apart from learning: no planted motif (or decoy) is, or
    aligns at max_similarity with, any motif motif_gbm scans by default."""
    from mtlsweep.config.run import GbmConfig
    from mtlsweep.data.jaspar import pfm_similarity_many
    from mtlsweep.data.synthetic import _choose_motifs
    from mtlsweep.models.motif_gbm import load_motif_set
    spec = SynthSpec(**{**SMALL, "motif_source": "denovo", "avoid_motifs": "CORE/vertebrates", "min_ic": 12.0})
    scanned = load_motif_set(GbmConfig())
    planted = _choose_motifs(spec, np.random.Generator(np.random.PCG64(spec.seed)))
    assert len(planted) == spec.n_activating + spec.n_decoys
    ids = {m.matrix_id for m in scanned}
    for sm in planted:
        assert sm.motif.matrix_id not in ids
        assert pfm_similarity_many(sm.motif.pfm, [m.pfm for m in scanned]).max() < spec.max_similarity
    names, splits, truth = generate(spec)
    assert truth["spec"]["motif_source"] == "denovo" and truth["oracle"]["mean"]["test"]["auroc"] > 0.9
    # the same knobs, the same motifs and data; JASPAR-drawn benchmarks keep theirs
    assert generate(spec)[2]["fingerprint"] == truth["fingerprint"]
    jaspar = SynthSpec(**SMALL)
    assert all(mid in ids or mid.split(".")[0] in {i.split(".")[0] for i in ids}
               for mid in generate(jaspar)[2]["motifs"])
