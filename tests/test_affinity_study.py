"""Task affinity measured by a probe that has learned (studies/affinity_groups.py), on a tiny planted
benchmark: the groups are recovered, their stability is reported, and a probe trained with 1 and
with 2 threads is compared (the report gives their agreement, whatever it is)."""
from types import SimpleNamespace

import numpy as np
import pytest

from mtlsweep.analysis.task_groups import describe_groups
from mtlsweep.data.synthetic import spec_from_dict, write_synthetic
from mtlsweep.studies.affinity_groups import one_data_set, probe, report

# Two groups of two tasks; a task's only motif is its group's, so grouped tasks share their labels' cause.
KNOBS = {"n_tasks": 4, "n_groups": 2, "motifs_per_task": 1, "shared_fraction": 1.0, "n_seqs": 1600,
         "seq_len": 60, "min_ic": 16.0, "label_noise": 0.0, "prevalence_min": 0.2, "prevalence_median": 0.25,
         "prevalence_max": 0.3, "valid_fraction": 0.2, "test_fraction": 0.1}
BASE = {"data": {"batch_size": 64},
        "model": {"arch": {"preset": "motif", "dropout": 0.0}, "sharing": {"shared_layers": "all"}},
        "optim": {"name": "adam", "lr": 0.01, "weight_decay": 0.01},
        "train": {"epochs": 12, "patience": 3, "seed": 0, "num_threads": 1, "steps_per_epoch": 12}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted") / "data" / "tiny" / "seed0"
    write_synthetic(spec_from_dict({**KNOBS, "seed": 0}), out)
    return out / "store.h5"


def test_a_trained_probe_recovers_the_planted_groups_and_reports_their_stability(planted, tmp_path):
    r = probe(planted, BASE, 2, tmp_path / "probe")
    assert r["val_auroc"] > 0.8                                  # it has learned the motifs
    assert r["ari_clusters"] == 1.0 and r["ari_tag"] == 1.0
    assert 0.0 <= r["stability_clusters"] <= 1.0 and r["by_stage"]
    assert r["within_minus_between"] > 0
    out = describe_groups(tmp_path / "probe", None, str(planted.parent / "truth.json"))
    assert "TAG's selection (tag:K)" in out and "average linkage (auto:K)" in out
    assert f"the probe: validation AUROC {r['val_auroc']:.3f}" in out         # what the matrix was measured on
    assert out.count("stability over 200 resamples") == 2 and "by stage of training" in out


def test_one_and_two_threads_are_compared_and_the_report_says_how_they_agree(tmp_path):
    a = SimpleNamespace(every=2, arms=False)
    r, arms = one_data_set(("tiny", 0, KNOBS, tmp_path, BASE, a, True))
    assert not arms and set(r["agree_threads"]) == {"clusters", "tag"}
    text = "\n".join(report([r], [], ["tiny"], 2))
    line = next(x for x in text.splitlines() if x.startswith("| tiny | 2 threads |"))
    assert f"{r['agree_threads']['clusters']:.3f}" in line
    assert np.isfinite(r["agree_train_seed"]["tag"])
