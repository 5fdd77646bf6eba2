"""The kmer_linear reference family: both-strand k-mer counts + scikit-learn logistic regression."""
import numpy as np
import pytest

from conftest import make_signal_store
from mtlsweep.config.run import KmerConfig, RunConfig, validate
from mtlsweep.data.kmers import both_strand_counts, canonical_columns
from mtlsweep.data.onehot import reverse_complement_codes
from mtlsweep.models.kmer_linear import KmerLinearModel, features, fit_kmer_linear


def test_both_strand_counts_are_canonical_and_strand_blind():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(50, 40), dtype=np.uint8)
    codes[3, 10] = 4                                                  # an N: the windows over it count for nothing
    for k in (1, 2, 3, 5):
        column, names = canonical_columns(k)
        assert len(names) == (4 ** k + (4 ** (k // 2) if k % 2 == 0 else 0)) // 2
        x = both_strand_counts(codes, k)
        np.testing.assert_allclose(x.sum(axis=1), 1.0, rtol=1e-5)    # shares of the N-free windows
        np.testing.assert_array_equal(x, both_strand_counts(reverse_complement_codes(codes), k))
    # by hand: AACNGT -> windows AA, AC, (CN), (NG), GT = rc(AC): AA 1/3, AC 2/3
    x = both_strand_counts(np.array([[0, 0, 1, 4, 2, 3]], dtype=np.uint8), 2)
    names = canonical_columns(2)[1]
    assert x[0, names.index("AA")] == pytest.approx(1 / 3) and x[0, names.index("AC")] == pytest.approx(2 / 3)


def test_learns_planted_kmers_and_equals_scikit_learns_own_fit(tmp_path):
    from sklearn.linear_model import LogisticRegression
    store = make_signal_store(n=1500, length=60, n_tasks=2, unknown=0.1)
    kcfg = KmerConfig(k=[3, 4], C=[0.01, 1.0], n_jobs=1)
    fit = fit_kmer_linear(kcfg, store, seed=0)
    labels = store.split("test").labels
    from mtlsweep.training.metrics import task_metrics
    m = task_metrics(fit.probs["test"], labels)
    assert np.all(m.auroc > 0.9), m.auroc                  # a planted 6-mer is many 3-/4-mers at once
    # joint selection: one (k, C) for every task, the best mean validation AUROC of the grid
    best = max(fit.grid_val, key=fit.grid_val.get)
    assert {(f.k, f.C) for f in fit.fits.values()} == {best}
    # The same features and penalty given to scikit-learn directly: the same model, unknown labels left out.
    k, C = best
    X = features(store, k, ["train", "test"]).X
    for t, f in fit.fits.items():
        y = store.split("train").labels[:, t]
        ref = LogisticRegression(C=C, solver="lbfgs", max_iter=kcfg.max_iter).fit(X["train"][y >= 0], y[y >= 0])
        np.testing.assert_allclose(fit.probs["test"][:, t], ref.predict_proba(X["test"])[:, 1], rtol=1e-4, atol=1e-6)
    # saved and loaded, it predicts from codes again
    fit.save(tmp_path)
    again = KmerLinearModel.load(tmp_path).predict_proba(store.split("test").codes)
    np.testing.assert_allclose(again, fit.probs["test"], rtol=1e-5, atol=1e-6)
    assert fit.stopped and all(fit.stopped.values())
    assert fit.tuned()["kmer.C"]["values"] == [0.01, 1.0]


def test_per_task_selection_and_config_checks():
    store = make_signal_store(n=900, length=40, n_tasks=2)
    fit = fit_kmer_linear(KmerConfig(k=[2, 3], C=[0.1, 1.0], select="per_task", n_jobs=1), store)
    assert len(fit.fits) == 2 and fit.n_params == sum(f.coef.size + 1 for f in fit.fits.values())
    from mtlsweep.config.errors import ConfigError
    with pytest.raises(ConfigError, match=r"kmer\.k"):
        validate({"kmer": {"k": [9]}})
    with pytest.raises(ConfigError, match="twice"):
        validate({"kmer": {"C": [1.0, 1.0]}})
    from mtlsweep.data.errors import DataError
    with pytest.raises(DataError, match="longer than the sequences"):
        fit_kmer_linear(KmerConfig(k=[8]), make_signal_store(n=300, length=7, n_tasks=1))


def test_a_kmer_linear_run_is_reported_like_a_cnn_run(tmp_path):
    from conftest import run
    path = tmp_path / "store.h5"
    make_signal_store(n=900, length=40, n_tasks=2).save(path)
    cfg = RunConfig.model_validate({"data": {"path": str(path)}, "model": {"family": "kmer_linear"},
                                    "kmer": {"k": [3], "C": [0.1, 1.0, 10.0], "n_jobs": 1}})
    result = run(cfg, tmp_path / "run", progress=False)
    assert result.best_epoch == 1 and result.test_summary["test/auroc_mean"] > 0.8
    assert result.convergence.converged and "lbfgs converged" in result.convergence.detail
    assert result.info.family["tuned"]["kmer.k"] == {"values": [3], "chosen": [3, 3]}
    assert (tmp_path / "run" / "kmer_linear" / "manifest.json").is_file()
    assert result.info.n_params == 2 * (len(canonical_columns(3)[1]) + 1)
