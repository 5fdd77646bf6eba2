import numpy as np
import pytest

from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import (
    Motif,
    load_motifs,
    log_odds,
    pfm_similarity,
    read_motif_file,
    scan_max,
)


def test_load_motifs_core_vertebrates_valid_and_sorted():
    motifs = load_motifs("CORE", "vertebrates", "JASPAR2026")
    assert len(motifs) > 500
    ids = [m.matrix_id for m in motifs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for m in motifs:
        assert isinstance(m, Motif) and m.name
        assert m.pfm.ndim == 2 and m.pfm.shape[0] == 4 and m.pfm.shape[1] >= 1
        assert np.all(m.pfm >= 0)
        np.testing.assert_allclose(m.pfm.sum(axis=0), 1.0, atol=1e-12)
    arnt = next(m for m in motifs if m.matrix_id == "MA0004.1")
    assert arnt.name == "Arnt"
    # JASPAR counts A:4 C:16 in the first column of MA0004.1 (CACGTG).
    np.testing.assert_allclose(arnt.pfm[:, 0], [0.2, 0.8, 0.0, 0.0])


def test_load_motifs_is_cached_and_cache_cannot_be_corrupted():
    a = load_motifs()
    a.clear()
    b = load_motifs()
    assert len(b) > 500
    assert b[0] is load_motifs()[0]
    with pytest.raises(ValueError):
        b[0].pfm[0, 0] = 0.5


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"collection": "NOPE"}, "'NOPE'"),
        ({"tax_group": "aliens"}, "'aliens'"),
        ({"release": "JASPAR1999"}, "'JASPAR1999'"),
    ],
)
def test_load_motifs_rejects_unknown_selection(kwargs, needle):
    with pytest.raises(DataError) as err:
        load_motifs(**kwargs)
    msg = str(err.value)
    assert needle in msg and "allowed" in msg and "\n" not in msg


def test_log_odds_values():
    pfm = np.array([[1.0, 0.25], [0.0, 0.25], [0.0, 0.25], [0.0, 0.25]])
    lo = log_odds(pfm, pseudocount=0.0)
    assert lo[0, 0] == pytest.approx(2.0)
    assert np.isneginf(lo[1, 0])
    np.testing.assert_allclose(lo[:, 1], 0.0)
    smoothed = log_odds(pfm, background=(0.3, 0.2, 0.2, 0.3), pseudocount=0.01)
    assert np.all(np.isfinite(smoothed))
    assert smoothed[0, 0] == pytest.approx(np.log2((1.0 + 0.01 * 0.3) / 1.01 / 0.3))
    with pytest.raises(DataError, match="background"):
        log_odds(pfm, background=(0.5, 0.5, 0.0, 0.0))


def test_similarity_is_one_for_self_and_reverse_complement_lower_for_others():
    motifs = {m.name: m for m in load_motifs()}
    ctcf = motifs["CTCF"].pfm
    assert pfm_similarity(ctcf, ctcf) == pytest.approx(1.0)
    assert pfm_similarity(ctcf, ctcf[::-1, ::-1]) == pytest.approx(1.0)
    assert pfm_similarity(ctcf, motifs["Arnt"].pfm) < 0.6


def test_scan_max_finds_a_site_on_either_strand():
    lo = np.array([[2, -1, -1], [-1, 2, -1], [-1, -1, 2], [-1, -1, -1]])  # ACG
    codes = np.array([
        [3, 3, 0, 1, 2, 3, 3],   # ACG on the plus strand
        [3, 3, 1, 2, 3, 3, 3],   # CGT = reverse complement of ACG
        [3, 3, 3, 3, 3, 3, 3],   # TTT scores -3, but its minus strand AAA scores 0
        [3, 0, 4, 2, 3, 3, 3],   # N in the middle scores 0
    ], dtype=np.uint8)
    np.testing.assert_array_equal(scan_max(codes, lo), [6, 6, 0, 4])
    with pytest.raises(DataError, match="shorter"):
        scan_max(codes[:, :2], lo)


JASPAR_TEXT = """>MA0004.1 Arnt
A  [     4     19      0      0      0      0 ]
C  [    16      0     20      0      0      0 ]
G  [     0      1      0     20      0     20 ]
T  [     0      0      0      0     20      0 ]

>MX0001.1\tMy factor
10 0 0
0 10 5
0 0 5
0 0 0
"""

MEME_TEXT = """MEME version 4

ALPHABET= ACGT

strands: + -

Background letter frequencies
A 0.3 C 0.2 G 0.2 T 0.3

MOTIF MA0004.1 Arnt
letter-probability matrix: alength= 4 w= 3 nsites= 20 E= 0
  0.200000  0.800000  0.000000  0.000000
  0.950000  0.000000  0.050000  0.000000
  0.000000  1.000000  0.000000  0.000000

URL http://jaspar.genereg.net/matrix/MA0004.1

MOTIF ONLYID
letter-probability matrix: alength= 4 w= 2
 0.25 0.25 0.25 0.25
 1.0 0.0 0.0 0.0
"""


def test_read_jaspar_file(tmp_path):
    path = tmp_path / "motifs.jaspar"
    path.write_text(JASPAR_TEXT)
    motifs = read_motif_file(path)
    assert [(m.matrix_id, m.name) for m in motifs] == [("MA0004.1", "Arnt"), ("MX0001.1", "My factor")]
    np.testing.assert_allclose(motifs[0].pfm, next(m for m in load_motifs() if m.matrix_id == "MA0004.1").pfm)
    np.testing.assert_allclose(motifs[1].pfm[:, 2], [0.0, 0.5, 0.5, 0.0])


def test_read_meme_file(tmp_path):
    path = tmp_path / "motifs.meme"
    path.write_text(MEME_TEXT)
    motifs = read_motif_file(path)
    assert [(m.matrix_id, m.name) for m in motifs] == [("MA0004.1", "Arnt"), ("ONLYID", "ONLYID")]
    assert motifs[0].pfm.shape == (4, 3)
    np.testing.assert_allclose(motifs[0].pfm[:, 1], [0.95, 0.0, 0.05, 0.0])
    np.testing.assert_allclose(motifs[1].pfm[:, 0], 0.25)


@pytest.mark.parametrize(
    "text, needle",
    [
        (">M1 x\nA [1 2]\nC [1 2]\nG [1 2]\n", "has 3 matrix rows"),
        (">M1 x\nA [1 2]\nC [1 2]\nG [1 2 3]\nT [1 2]\n", "different lengths"),
        (">M1 x\nA [1 x]\nC [1 2]\nG [1 2]\nT [1 2]\n", "expected numbers"),
        (">M1 x\nA [0 1]\nC [0 1]\nG [0 1]\nT [0 1]\n", "column 1 sums to 0"),
        ("A [1 2]\n", "unrecognized motif file"),
        ("MEME version 4\n\nMOTIF M1\nletter-probability matrix: alength= 4 w= 2\n0.25 0.25 0.5\n", "expected 4 probabilities"),
        ("MEME version 4\n\nMOTIF M1\nletter-probability matrix: alength= 4 w= 3\n0.25 0.25 0.25 0.25\n", "declares w= 3"),
        ("MEME version 4\n\nMOTIF M1\nletter-probability matrix: alength= 4 w= 1\n0.5 0.5 0.5 0.5\n", "sums to 2.000"),
        ("MEME version 4\nALPHABET= ACDEFGHIKLMNPQRSTVWY\nMOTIF M1\n", "only ACGT"),
        ("MEME version 4\n\nMOTIF M1\nMOTIF M2\n", "no letter-probability matrix"),
    ],
)
def test_malformed_motif_files_raise_one_line_errors(tmp_path, text, needle):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_motif_file(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_missing_motif_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_motif_file(tmp_path / "nope.meme")
