import numpy as np
import pytest

from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import Motif, log_odds, scan_max
from mtlsweep.data.motif_features import (FeatureOptions, MotifScanner, cache_stats, cached_features, compute_features,
                                 feature_names, gc_fraction, kmer_frequencies, width_groups)
from mtlsweep.data.onehot import reverse_complement_codes, seq_to_codes


def motif_from_consensus(mid: str, consensus: str, strength: float = 0.97) -> Motif:
    """A sharp PFM: `strength` on the consensus base, the rest spread evenly."""
    pfm = np.full((4, len(consensus)), (1 - strength) / 3)
    for j, b in enumerate(consensus):
        pfm["ACGT".index(b), j] = strength
    return Motif(mid, mid, pfm)


def random_codes(n, length, seed):
    return np.random.default_rng(seed).integers(0, 4, size=(n, length), dtype=np.uint8)


A = motif_from_consensus("MA_A", "GATTACAG")          # not its own reverse complement
B = motif_from_consensus("MA_B", "CCGTTAACGGCAAT")    # another width: a second width group


@pytest.mark.parametrize("method", ["gather", "conv"])
def test_planted_sites_get_the_motif_maximum_at_their_position_on_both_strands(method):
    codes = random_codes(1, 90, seed=3)[0]
    codes[10:18] = seq_to_codes("GATTACAG")                                   # A, forward, at 10
    codes[60:74] = reverse_complement_codes(seq_to_codes("CCGTTAACGGCAAT"))   # B, minus strand, at 60
    sc = MotifScanner([A, B], method=method)
    scores = sc.scan(codes[None])[0]                                          # [2, M, L]
    assert scores.shape == (2, 2, 90)
    assert np.unravel_index(np.argmax(scores[:, 0]), scores[:, 0].shape) == (0, 10)
    assert np.unravel_index(np.argmax(scores[:, 1]), scores[:, 1].shape) == (1, 60)
    assert scores[0, 0, 10] == pytest.approx(sc.max_score[0], abs=1e-4)
    assert scores[1, 1, 60] == pytest.approx(sc.max_score[1], abs=1e-4)
    # windows running past the end do not exist
    assert np.isneginf(scores[:, 0, 90 - 8 + 1:]).all() and np.isfinite(scores[:, 0, : 90 - 8 + 1]).all()
    assert np.isneginf(scores[:, 1, 90 - 14 + 1:]).all()

    opts = FeatureOptions(("max", "bins"), n_bins=3)
    x = compute_features(codes[None], sc, opts)[0]
    names = feature_names(sc.ids, opts)
    f = dict(zip(names, x))
    assert f["max/MA_A"] == pytest.approx(sc.max_score[0], abs=1e-4)
    assert f["max/MA_B"] == pytest.approx(sc.max_score[1], abs=1e-4)
    # A's centre is at 13.5 -> bin 0 of [0, 30); B's at 66.5 -> bin 2 of [60, 90)
    assert f["bin0/MA_A"] == pytest.approx(sc.max_score[0], abs=1e-4)
    assert max(f["bin1/MA_A"], f["bin2/MA_A"]) < sc.max_score[0] - 3
    assert f["bin2/MA_B"] == pytest.approx(sc.max_score[1], abs=1e-4)
    assert max(f["bin0/MA_B"], f["bin1/MA_B"]) < sc.max_score[1] - 3


def test_max_matches_jaspar_scan_max_and_methods_agree():
    rng = np.random.default_rng(5)
    motifs = [Motif(f"M{k}", f"M{k}", rng.dirichlet([0.3] * 4, size=int(w)).T)
              for k, w in enumerate(rng.integers(4, 22, size=40))]
    codes = random_codes(12, 150, seed=1)
    grouped = compute_features(codes, MotifScanner(motifs), FeatureOptions(("max", "count", "bins")))
    one_conv = compute_features(codes, MotifScanner(motifs, method="conv", max_groups=1),
                                FeatureOptions(("max", "count", "bins")))
    ref = np.stack([scan_max(codes, log_odds(m.pfm)) for m in motifs], axis=1)
    np.testing.assert_allclose(grouped[:, :40], ref, atol=1e-4)
    np.testing.assert_allclose(grouped, one_conv, atol=1e-4)
    assert len(MotifScanner(motifs).groups) > 1


def test_n_bases_score_the_column_average():
    sc = MotifScanner([A])
    codes = np.full((1, 20), 4, dtype=np.uint8)
    x = compute_features(codes, sc, FeatureOptions(("max",)))
    assert x[0, 0] == pytest.approx(log_odds(A.pfm).mean(axis=0).sum(), abs=1e-5)


def test_counts_hits_on_both_strands():
    pal = motif_from_consensus("PAL", "ACGT")     # its own reverse complement: one site, two hits
    asym = motif_from_consensus("ASYM", "AACC")
    seq = "TTTT" + "ACGT" + "TTTT" + "ACGT" + "TTTT" + "AACC" + "TTTT" + "GGTT" + "TTTT"
    codes = seq_to_codes(seq)[None]
    sc = MotifScanner([pal, asym])
    x = compute_features(codes, sc, FeatureOptions(("count",), hit_threshold=1.0))
    assert x[0].tolist() == [4.0, 2.0]
    # One mismatch scores ~19% of the best here: counted at 0.15, not at 1.0 (ACGA is a
    # one-mismatch site on both strands).
    near = seq_to_codes(seq + "ACGA" + "TTTT")[None]
    assert compute_features(near, sc, FeatureOptions(("count",), hit_threshold=1.0))[0, 0] == 4.0
    loose = [compute_features(c, sc, FeatureOptions(("count",), hit_threshold=0.15))[0, 0] for c in (codes, near)]
    assert loose[1] - loose[0] == 2.0


def test_gc_and_kmer_on_a_hand_made_sequence():
    codes = np.stack([seq_to_codes("ACGTNGGCCA"), seq_to_codes("NNNNNNNNNN")])
    gc = gc_fraction(codes)
    assert gc[0] == pytest.approx(6 / 9) and gc[1] == 0.5
    k2 = kmer_frequencies(seq_to_codes("AACGNAA")[None], 2)[0]
    names = feature_names([], FeatureOptions(("kmer",), kmer_k=2))
    freq = dict(zip([n.split("/")[1] for n in names], k2))
    # windows AA AC CG GN NA AA: the four without N are AA, AC, CG, AA
    assert freq["AA"] == pytest.approx(0.5) and freq["AC"] == pytest.approx(0.25)
    assert freq["CG"] == pytest.approx(0.25) and sum(freq.values()) == pytest.approx(1.0)
    assert kmer_frequencies(codes[1:], 3).sum() == 0
    table = compute_features(codes, None, FeatureOptions(("kmer", "gc"), kmer_k=1))
    assert feature_names([], FeatureOptions(("kmer", "gc"), kmer_k=1)) == ["gc", "kmer/A", "kmer/C", "kmer/G", "kmer/T"]
    np.testing.assert_allclose(table[0], [6 / 9, 2 / 9, 3 / 9, 3 / 9, 1 / 9], atol=1e-6)


def test_cache_is_reused_and_invalidated_by_options_motifs_and_split(tmp_path):
    codes = random_codes(50, 60, seed=2)
    cache = tmp_path / "cache"

    def run(options, motifs=(A, B), split="train"):
        before = (cache_stats.computed, cache_stats.loaded)
        x, names = cached_features(codes, list(motifs), options, fingerprint="f" * 64, split=split, cache_dir=cache)
        return x, names, (cache_stats.computed - before[0], cache_stats.loaded - before[1])

    opts = FeatureOptions(("max", "count"), hit_threshold=0.8)
    first, names, delta = run(opts)
    assert delta == (1, 0) and first.shape == (50, 4) and names[0] == "max/MA_A"
    again, _, delta = run(FeatureOptions(("count", "max"), hit_threshold=0.8))
    assert delta == (0, 1)
    np.testing.assert_array_equal(first, again)
    assert run(FeatureOptions(("max", "count"), hit_threshold=0.7))[2] == (1, 0)
    assert run(opts, motifs=(B, A))[2] == (1, 0)
    assert run(opts, split="valid")[2] == (1, 0)
    # hit_threshold does not enter a table without counts
    assert run(FeatureOptions(("max",), hit_threshold=0.5))[2] == (1, 0)
    assert run(FeatureOptions(("max",), hit_threshold=0.9))[2] == (0, 1)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 5 and not any(f.startswith(".") for f in files)
    # a damaged entry is recomputed, not trusted
    cache_stats.last_path.write_bytes(b"not an npy file")
    assert run(FeatureOptions(("max",), hit_threshold=0.9))[2] == (1, 0)


def test_width_groups_cover_every_motif_once():
    widths = [4, 6, 6, 8, 10, 12, 19, 33, 8]
    groups = width_groups(widths, 3)
    assert len(groups) == 3
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(widths)))
    assert [int(np.max(np.take(widths, g))) for g in groups] == sorted(int(np.max(np.take(widths, g))) for g in groups)
    assert len(width_groups(widths, 1)) == 1


def test_bad_input_is_a_one_line_data_error():
    with pytest.raises(DataError, match="hit_threshold"):
        FeatureOptions(("count",), hit_threshold=1.5)
    with pytest.raises(DataError, match="kmer_k"):
        FeatureOptions(("kmer",), kmer_k=5)
    with pytest.raises(DataError, match="features"):
        FeatureOptions(("max", "gcc"))
    with pytest.raises(DataError, match="MA_B is 14 wide but sequences are 10 long"):
        compute_features(random_codes(2, 10, 0), [A, B], FeatureOptions())
    with pytest.raises(DataError, match="appears twice"):
        MotifScanner([A, A])
    with pytest.raises(DataError, match="code 7"):
        compute_features(np.full((1, 20), 7, np.uint8), [A], FeatureOptions())
