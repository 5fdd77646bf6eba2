"""Labels that make a comparison meaningless are said before training: tasks that are each
other's exact complement, and tasks too scarce in a split to be judged there."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlsweep.app.cli import main
from mtlsweep.data.label_checks import MIN_TO_JUDGE, complementary_pairs, label_warnings, scarce_tasks
from mtlsweep.data.store import Store
from tests.conftest import make_signal_store


def _store_with(labels_of) -> Store:
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 600), ("valid", 200), ("test", 200)):
        splits[split] = (rng.integers(0, 4, (n, 40), dtype=np.uint8), labels_of(rng, n))
    return Store.from_arrays(["a", "b", "c"], splits)


def test_complements_are_found_with_unknown_labels_and_only_them():
    def labels(rng, n):
        y = (rng.random((n, 3)) < 0.4).astype(np.int8)
        y[:, 1] = 1 - y[:, 0]
        y[rng.random(n) < 0.1, 1] = -1          # an unknown label breaks nothing
        return y
    store = _store_with(labels)
    assert complementary_pairs(store) == [("a", "b")]
    # One row where both are positive: no longer a complement.
    store.splits["train"].labels[7, :2] = 1
    assert complementary_pairs(store) == []
    assert complementary_pairs(make_signal_store(n=900)) == []


def test_scarce_tasks_per_split_and_the_warning_lines():
    def labels(rng, n):
        y = (rng.random((n, 3)) < 0.4).astype(np.int8)
        y[:, 2] = 0
        y[: MIN_TO_JUDGE - 1, 2] = 1            # too few positives to judge c, in every split
        return y
    store = _store_with(labels)
    assert scarce_tasks(store, "valid") == [("c", MIN_TO_JUDGE - 1, 200 - MIN_TO_JUDGE + 1)]
    assert scarce_tasks(store, "train") == [("c", MIN_TO_JUDGE - 1, 600 - MIN_TO_JUDGE + 1)]
    lines = label_warnings(store, "s.h5")
    assert len(lines) == 2 and all(ln.startswith("s.h5: 1 task(s) have fewer than") for ln in lines)
    assert "in valid" in lines[0] and "in test" in lines[1] and "c (9+/191-)" in lines[0]


def test_training_on_complementary_tasks_warns_once_in_one_line(tmp_path, capsys):
    store = make_signal_store(n=900, n_tasks=2)
    for sp in store.splits.values():
        known = sp.labels[:, 0] >= 0
        sp.labels[:, 1] = np.where(known, 1 - sp.labels[:, 0], -1)
    store.save(tmp_path / "s.h5")
    (tmp_path / "r.yaml").write_text(f"data: {{path: {tmp_path / 's.h5'}}}\n")
    assert main(["train", "--config", str(tmp_path / "r.yaml"), "--no-progress", "--set", "model.arch.preset=motif",
                 "--set", "train.epochs=1", "--set", f"train.out_dir={tmp_path / 'runs'}",
                 "--set", "train.num_threads=1"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "exact complements" in ln]
    assert len(err) == 1 and err[0].startswith("mtlsweep: warning: ") and "task0/task1" in err[0], err


def test_building_two_tfs_with_negatives_from_each_others_peaks_warns(tmp_path, capsys, monkeypatch):
    """Two TFs' peaks and `--negatives peaks` (Basset's procedure): every window is positive for
    exactly one of them, which `data build` says at once."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    with open("g.fa", "w") as fh:
        for c in ("chr1", "chr2", "chr3"):
            fh.write(f">{c}\n{''.join(rng.choice(list('ACGT'), 20000))}\n")
    Path("peaks").mkdir()
    for name, off in (("a", 0), ("b", 5000)):
        Path(f"peaks/{name}.bed").write_text("".join(f"{c}\t{off + i * 600 + 100}\t{off + i * 600 + 200}\n"
                                                     for c in ("chr1", "chr2", "chr3") for i in range(12)))
    Path("s.tsv").write_text("a\tpeaks/a.bed\nb\tpeaks/b.bed\n")
    assert main(["data", "build", "s.tsv", "g.fa", "--out", "out", "--length", "200", "--valid-chroms", "chr2",
                 "--test-chroms", "chr3"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("mtlsweep: warning: out/store.h5: 1 task pair(s) are exact "
                                               "complements") and "a/b" in err[0], err
