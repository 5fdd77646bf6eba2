"""TF-binding data (issue 15): signal tracks, label matrices, real negatives, imbalance.

Everything is built from files written here: a tiny genome with GC-rich and AT-rich stretches,
bigWigs written with pyBigWig, bedGraphs with known values, ENCODE-DREAM label matrices.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pyBigWig
import pytest
import torch

from genome_files import write_fasta, write_text

from mtlsweep.data.errors import DataError
from mtlsweep.data.labels_tsv import build_from_labels
from mtlsweep.data.negatives import gc_and_n
from mtlsweep.data.onehot import seq_to_codes
from mtlsweep.data.peaks import build_from_peaks
from mtlsweep.data.signal import TrackSpec, parse_track_arg, parse_transforms
from mtlsweep.data.store import SplitArrays, Store

CHROMS = {"chr1": 24000, "chr2": 12000, "chr3": 12000}
GC_BLOCK = 2000  # the genome alternates 2 kb stretches of 25% and 65% GC


def _genome() -> dict[str, str]:
    rng = np.random.default_rng(11)
    out = {}
    for name, n in CHROMS.items():
        parts = []
        for b in range(0, n, GC_BLOCK):
            gc = 0.65 if (b // GC_BLOCK) % 2 else 0.25
            p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
            parts.append("".join(rng.choice(list("ACGT"), min(GC_BLOCK, n - b), p=p)))
        out[name] = "".join(parts)
    return out


GENOME = _genome()


def _value(chrom: str, pos: np.ndarray) -> np.ndarray:
    """The bigWig's per-base signal: a different ramp on every chromosome."""
    k = list(CHROMS).index(chrom)
    return ((pos % 97) / 4.0 + k).astype(np.float32)


@pytest.fixture()
def fasta(tmp_path):
    return write_fasta(tmp_path / "genome.fa", GENOME, 80)


def write_bigwig(path, chroms=("chr1", "chr2"), rename=None, half_chr2=True):
    """Per-base values _value() on `chroms`; chr2 covered only on its first half (the rest has no data)."""
    bw = pyBigWig.open(str(path), "w")
    rename = rename or {}
    bw.addHeader([(rename.get(c, c), CHROMS[c]) for c in chroms], maxZooms=0)
    for c in chroms:
        end = CHROMS[c] // 2 if (c == "chr2" and half_chr2) else CHROMS[c]
        vals = _value(c, np.arange(end))
        bw.addEntries(rename.get(c, c), 0, values=vals.astype(np.float64).tolist(), span=1, step=1)
    bw.close()
    return path


def write_bedgraph(path, gz=False):
    """Intervals of 10 bp with value (start // 10) % 7 on every chromosome; chr3's 5000-6000 absent."""
    lines = ["track type=bedGraph name=test"]
    for c, n in CHROMS.items():
        for s in range(0, n, 10):
            if c == "chr3" and 5000 <= s < 6000:
                continue
            lines.append(f"{c}\t{s}\t{s + 10}\t{(s // 10) % 7}")
    return write_text(path, "\n".join(lines) + "\n", gz)


def _bedgraph_value(chrom, pos):
    v = ((pos // 10) % 7).astype(np.float32)
    if chrom == "chr3":
        v[(pos >= 5000) & (pos < 6000)] = 0.0
    return v


def write_labels(path, rows, tasks=("TF1", "TF2"), gz=False):
    return write_text(path, "chr\tstart\tstop\t" + "\t".join(tasks) + "\n"
                      + "".join("\t".join(map(str, r)) + "\n" for r in rows), gz)


def _dream_rows(step=200, width=200):
    """Windows tiling every chromosome; TF1 bound in GC-rich stretches, TF2 U/A/B by position."""
    rows = []
    for c, n in CHROMS.items():
        for s in range(200, n - 400, step):
            gc_rich = (s // GC_BLOCK) % 2 == 1
            tf1 = "B" if gc_rich and (s // 200) % 3 == 0 else "U"
            tf2 = "ABU"[(s // 200) % 3]
            rows.append((c, s, s + width, tf1, tf2))
    return rows


def _store_rows(path, split):
    with h5py.File(path, "r") as f:
        g = f[split]
        heads = [h.decode() for h in g["headers"][:]]
        return heads, g["codes"][:], g["labels"][:], (g["tracks"][:] if "tracks" in g else None)


def _window(head):
    chrom, span = head.split(":")
    span = span.split("(")[0]
    a, b = map(int, span.split("-"))
    return chrom, a, b


# ----------------------------------------------------------------------------- argument parsing


def test_track_and_transform_arguments(tmp_path):
    (tmp_path / "y.bw").write_bytes(b"")
    assert parse_track_arg(f"DNase={tmp_path}/y.bw") == TrackSpec("DNase", tmp_path / "y.bw")
    assert parse_transforms("log1p,clip=5,zscore") == [("log1p", None), ("clip", (-5.0, 5.0)), ("zscore", None)]
    assert parse_transforms("clip=-1:2") == [("clip", (-1.0, 2.0))]
    for bad in ("log2", "clip=a", "zscore,zscore", "clip=3:1"):
        with pytest.raises(DataError, match="--track-transform"):
            parse_transforms(bad)
    for bad in ("x.bw", "=x.bw", "a=missing.bw"):
        with pytest.raises(DataError, match="--track"):
            parse_track_arg(bad)


# ----------------------------------------------------------------------------- tracks: exact values


def test_bigwig_values_per_base_with_missing_coverage(tmp_path, fasta):
    bw = write_bigwig(tmp_path / "dnase.bw")  # chr3 not in the file, chr2's second half uncovered
    rows = [("chr1", 1000, 1200, "B", "U"), ("chr2", 5900, 6100, "U", "B"),  # straddles chr2's coverage end
            ("chr2", 9000, 9200, "U", "U"), ("chr3", 3000, 3200, "B", "B"), ("chr1", 20000, 20200, "U", "A")]
    labels = write_labels(tmp_path / "l.tsv", rows)
    rep = build_from_labels(labels, fasta, tmp_path / "out", tracks=[TrackSpec("DNase", bw)],
                            valid_chroms=["chr2"], test_chroms=["chr3"], progress=False)
    store = tmp_path / "out" / "store.h5"
    seen = 0
    for split in ("train", "valid", "test"):
        heads, codes, _, tracks = _store_rows(store, split)
        assert tracks.dtype == np.float16 and tracks.shape[1:] == (1, 200)
        for h, x in zip(heads, tracks[:, 0]):
            chrom, a, b = _window(h)
            pos = np.arange(a, b)
            want = _value(chrom, pos)
            if chrom == "chr3":
                want[:] = 0
            if chrom == "chr2":
                want[pos >= CHROMS["chr2"] // 2] = 0
            np.testing.assert_array_equal(x, want.astype(np.float16))
            seen += 1
    assert seen == len(rows)
    tr = rep["tracks"][0]
    # chr3 wholly missing (200 bases) + chr2: 100 bases past the coverage end, 200 of the far window.
    assert tr["missing_bases"] == 200 + 100 + 200 and tr["bases"] == 5 * 200
    assert tr["chroms_missing"] == {"chr3": 1}
    assert any("chr3" in w and "0" in w for w in rep["warnings"])
    with h5py.File(store) as f:
        info = json.loads(f.attrs["track_info"])
    assert info[0]["name"] == "DNase" and info[0]["format"] == "bigWig" and info[0]["transform"] == "none"


def test_bedgraph_values_minus_strand_and_resolution(tmp_path, fasta):
    """A peaks build with a '-' strand peak: its track is reversed like its sequence; binned means."""
    bg = write_bedgraph(tmp_path / "sig.bedGraph.gz", gz=True)
    d = tmp_path / "peaks"
    d.mkdir()
    (d / "a.bed").write_text("chr1\t1000\t1100\tp\t0\t+\nchr2\t3000\t3100\tp\t0\t-\nchr3\t5050\t5150\tp\t0\t+\n"
                             "chr1\t7000\t7100\tp\t0\t+\n")
    (d / "b.bed").write_text("chr2\t8000\t8100\tp\t0\t+\nchr3\t9000\t9100\tp\t0\t+\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("A\tpeaks/a.bed\nB\tpeaks/b.bed\n")
    for res in (1, 4):
        out = tmp_path / f"out{res}"
        build_from_peaks(sheet, fasta, out, seq_len=200, tracks=[TrackSpec("sig", bg)],
                         track_resolution=res, valid_chroms=["chr2"], test_chroms=["chr3"])
        n_minus = 0
        for split in ("train", "valid", "test"):
            heads, codes, _, tracks = _store_rows(out / "store.h5", split)
            for h, c, x in zip(heads, codes, tracks[:, 0]):
                chrom, a, b = _window(h)
                want = _bedgraph_value(chrom, np.arange(a, b))
                if res > 1:
                    want = np.repeat(want.reshape(-1, res).mean(axis=1), res)
                seq = seq_to_codes(GENOME[chrom][a:b])
                if h.endswith("(-)"):
                    n_minus += 1
                    want = want[::-1]
                    seq = (3 - seq[::-1]).astype(np.uint8)
                np.testing.assert_array_equal(c, seq)
                np.testing.assert_array_equal(x, want.astype(np.float16))
        assert n_minus == 1
        with h5py.File(out / "basset.h5") as f:  # Basset's file carries the tracks too
            assert json.loads(f.attrs["track_info"])[0]["resolution"] == res
    rep = json.loads((tmp_path / "out1" / "build_report.json").read_text())
    assert rep["tracks"][0]["format"] == "bedGraph"
    # chr3:5050-5150 (centre 5100) -> window 5000-5200, wholly inside chr3's 5000-6000 hole.
    assert rep["tracks"][0]["missing_bases"] == 200 and rep["tracks"][0]["bases"] == 6 * 200


def test_transforms_zscore_from_train_only(tmp_path, fasta):
    bw = write_bigwig(tmp_path / "dnase.bw", chroms=("chr1", "chr2", "chr3"), half_chr2=False)
    labels = write_labels(tmp_path / "l.tsv", _dream_rows(step=400))
    out = tmp_path / "z"
    rep = build_from_labels(labels, fasta, out, tracks=[TrackSpec("DNase", bw)],
                            track_transform="log1p,zscore,clip=-3:3", valid_chroms=["chr2"],
                            test_chroms=["chr3"], progress=False)
    _, _, _, train = _store_rows(out / "store.h5", "train")
    heads, _, _, valid = _store_rows(out / "store.h5", "valid")
    x = train.astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.02
    # valid is transformed with train's statistics: chr2's ramp is offset by +1, so its mean is not 0.
    mean, sd = rep["tracks"][0]["train_mean"], rep["tracks"][0]["train_std"]
    for h, x in zip(heads, valid[:, 0]):
        chrom, a, b = _window(h)
        want = np.clip((np.log1p(_value(chrom, np.arange(a, b)).astype(np.float64)) - mean) / sd, -3, 3)
        np.testing.assert_allclose(x.astype(np.float64), want, atol=4e-3)
    assert valid.astype(np.float64).mean() > 0.1  # z-scored with its own statistics it would be 0
    assert rep["tracks"][0]["transform"] == "log1p,zscore,clip=-3:3"
    with pytest.raises(DataError, match="log1p needs values >= 0"):
        neg = tmp_path / "neg.bedGraph"
        neg.write_text("chr1\t0\t24000\t-2\nchr2\t0\t12000\t-2\nchr3\t0\t12000\t-2\n")
        build_from_labels(labels, fasta, tmp_path / "n", tracks=[TrackSpec("n", neg)], track_transform="log1p",
                          progress=False)
    assert not (tmp_path / "n" / "store.h5").exists()


def test_chromosome_name_mismatch_is_one_line_error(tmp_path, fasta):
    bw = write_bigwig(tmp_path / "ens.bw", chroms=("chr1", "chr2", "chr3"),
                      rename={"chr1": "1", "chr2": "2", "chr3": "3"})
    labels = write_labels(tmp_path / "l.tsv", _dream_rows(step=1000))
    with pytest.raises(DataError) as e:
        build_from_labels(labels, fasta, tmp_path / "o", tracks=[TrackSpec("DNase", bw)], progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "ens.bw" in msg and "'chr1'" in msg and "'1'" in msg and "rename" in msg
    assert not (tmp_path / "o").exists()


def test_bad_track_inputs(tmp_path, fasta):
    labels = write_labels(tmp_path / "l.tsv", _dream_rows(step=1000))
    junk = tmp_path / "junk.bw"
    junk.write_bytes(b"\x00" * 64)
    bg = tmp_path / "overlap.bedGraph"
    bg.write_text("chr1\t0\t100\t1\nchr1\t50\t150\t2\n")
    for spec, match in ((TrackSpec("a", tmp_path / "none.bw"), "not found"),
                        (TrackSpec("a", bg), "overlap"),
                        (TrackSpec("a", junk), "junk.bw")):
        with pytest.raises(DataError, match=match):
            build_from_labels(labels, fasta, tmp_path / "o", tracks=[spec], progress=False)
    with pytest.raises(DataError, match="resolution"):
        build_from_labels(labels, fasta, tmp_path / "o", tracks=[TrackSpec("a", write_bedgraph(tmp_path / "g.bg"))],
                          track_resolution=7, progress=False)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- label matrices


def test_labels_uab_and_na_survive(tmp_path, fasta):
    rows = [("chr1", 1000, 1200, "B", "U"), ("chr1", 1050, 1250, "A", "B"), ("chr2", 500, 700, "U", "A"),
            ("chr3", 800, 1000, "B", "A")]
    num = [("chr1", 1000, 1200, "1", "0"), ("chr1", 1050, 1250, "NA", "1"), ("chr2", 500, 700, "0", "NA"),
           ("chr3", 800, 1000, "1", "NA")]
    want = {"chr1:1000-1200": [1, 0], "chr1:1050-1250": [-1, 1], "chr2:500-700": [0, -1], "chr3:800-1000": [1, -1]}
    fps = set()
    for i, r in enumerate((rows, num)):
        labels = write_labels(tmp_path / f"l{i}.tsv.gz", r, gz=True)
        rep = build_from_labels(labels, fasta, tmp_path / f"o{i}", valid_chroms=["chr2"], test_chroms=["chr3"],
                                progress=False)
        got = {}
        for split in ("train", "valid", "test"):
            heads, codes, lab, _ = _store_rows(tmp_path / f"o{i}" / "store.h5", split)
            for h, c, y in zip(heads, codes, lab):
                got[h] = y.tolist()
                chrom, a, b = _window(h)
                np.testing.assert_array_equal(c, seq_to_codes(GENOME[chrom][a:b]))
        assert got == want
        assert rep["splits"]["train"]["unknown"] == {"TF1": 1, "TF2": 0}
        fps.add(rep["fingerprint"])
    assert len(fps) == 1  # U/A/B and 0/1/NA spell the same matrix
    # The unknown survives into training's mask.
    store = Store.load(tmp_path / "o0" / "store.h5")
    assert (store.splits["train"].labels == -1).sum() == 1 and store.task_names == ["TF1", "TF2"]


def test_labels_resize_split_and_chunking(tmp_path, fasta):
    labels = write_labels(tmp_path / "l.tsv", _dream_rows(step=100))
    reps = [build_from_labels(labels, fasta, tmp_path / f"o{k}", seq_len=300, chunk_rows=k, progress=False)
            for k in (37, 1 << 16)]
    assert reps[0]["fingerprint"] == reps[1]["fingerprint"]  # the split is per row, not per chunk
    n = {s: v["n"] for s, v in reps[0]["splits"].items()}
    assert sum(n.values()) == len(_dream_rows(step=100))
    assert 0.05 < n["valid"] / sum(n.values()) < 0.15 and 0.05 < n["test"] / sum(n.values()) < 0.15
    heads, codes, _, _ = _store_rows(tmp_path / "o37" / "store.h5", "train")
    chrom, a, b = _window(heads[0])
    assert b - a == 300 and codes.shape[1] == 300
    assert (a + b) // 2 == int(heads[0].split(":")[1].split("-")[0]) + 150
    # The first row, chr1:200-400 (centre 300), resized to 300 bp: 150-450.
    all_heads = sum((_store_rows(tmp_path / "o37" / "store.h5", s)[0] for s in ("train", "valid", "test")), [])
    assert "chr1:150-450" in all_heads


def test_labels_bad_rows_name_file_line_and_task(tmp_path, fasta):
    rows = _dream_rows(step=2000)
    bad = list(rows)
    bad[3] = (bad[3][0], bad[3][1], bad[3][2], "X", bad[3][4])
    labels = write_labels(tmp_path / "bad.tsv", bad)
    with pytest.raises(DataError) as e:
        build_from_labels(labels, fasta, tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "bad.tsv:5" in msg and "TF1" in msg and "'X'" in msg
    assert not (tmp_path / "o").exists()
    noheader = tmp_path / "nohead.tsv"
    noheader.write_text("chr1\t0\t200\tB\n")
    with pytest.raises(DataError, match="needs a header"):
        build_from_labels(noheader, fasta, tmp_path / "o", progress=False)
    short = tmp_path / "short.tsv"
    short.write_text("chr\tstart\tstop\tTF1\tTF2\nchr1\t0\t200\tB\n")
    with pytest.raises(DataError, match="short.tsv"):
        build_from_labels(short, fasta, tmp_path / "o", progress=False)
    # skip mode counts instead
    rep = build_from_labels(labels, fasta, tmp_path / "o", on_error="skip", progress=False)
    assert rep["skipped"]["malformed"] == 1 and rep["rows_kept"] == len(rows) - 1
    # a custom label map
    custom = write_labels(tmp_path / "c.tsv", [(c, s, e, "bound" if t1 == "B" else "unbound", "?")
                                               for c, s, e, t1, _ in rows])
    rep = build_from_labels(custom, fasta, tmp_path / "c", progress=False,
                            label_map={"bound": 1, "unbound": 0, "?": -1})
    assert rep["splits"]["train"]["unknown"]["TF2"] == rep["splits"]["train"]["n"]


# ----------------------------------------------------------------------------- negatives


def _peak_sheet(tmp_path, n_peaks=30, seed=0):
    """Two samples with peaks in the GC-rich stretches only."""
    rng = np.random.default_rng(seed)
    d = tmp_path / "peaks"
    d.mkdir(exist_ok=True)
    for name in ("A", "B"):
        lines = []
        for _ in range(n_peaks):
            c = str(rng.choice(list(CHROMS)))
            block = int(rng.integers(0, CHROMS[c] // GC_BLOCK // 2)) * 2 + 1
            s = block * GC_BLOCK + int(rng.integers(300, GC_BLOCK - 400))
            lines.append(f"{c}\t{s}\t{s + 100}")
        (d / f"{name}.bed").write_text("\n".join(lines) + "\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("A\tpeaks/A.bed\nB\tpeaks/B.bed\n")
    return sheet


def _windows_of(out, L):
    res = []
    for split in ("train", "valid", "test"):
        heads, codes, labels, _ = _store_rows(out / "store.h5", split)
        for h, c, y in zip(heads, codes, labels):
            res.append((_window(h), c, y))
    return res


def test_background_negatives_overlap_no_peak_and_match_gc(tmp_path, fasta):
    sheet = _peak_sheet(tmp_path)
    L = 200
    res = build_from_peaks(sheet, fasta, tmp_path / "bg", seq_len=L, negatives="background", negative_ratio=2.0,
                           seed=3)
    rep = res.report["negatives"]
    wins = _windows_of(tmp_path / "bg", L)
    pos = [(w, c) for w, c, y in wins if (y == 1).any()]
    neg = [(w, c) for w, c, y in wins if not (y == 1).any()]
    assert rep["method"] == "background" and rep["obtained"] == len(neg) == 2 * len(pos)
    assert all((y == 0).all() for w, c, y in wins if not (y == 1).any())
    for (chrom, a, b), _ in neg:
        for (pc, pa, pb), _ in pos:
            assert not (chrom == pc and a < pb and pa < b), f"negative {chrom}:{a}-{b} overlaps a peak window"
    pos_gc = gc_and_n(np.stack([c for _, c in pos]))[0]
    neg_gc = gc_and_n(np.stack([c for _, c in neg]))[0]
    assert abs(pos_gc.mean() - neg_gc.mean()) <= 0.02  # the tolerance the README states
    assert abs(rep["positives_gc_mean"] - pos_gc.mean()) < 1e-4 and abs(rep["negatives_gc_mean"] - neg_gc.mean()) < 1e-4
    # Unmatched windows would be far off: the genome's mean GC is 0.45, the peaks' ~0.65.
    assert pos_gc.mean() > 0.6
    # Seeded: the same seed gives the same store, another seed other windows.
    again = build_from_peaks(sheet, fasta, tmp_path / "bg2", seq_len=L, negatives="background",
                             negative_ratio=2.0, seed=3)
    other = build_from_peaks(sheet, fasta, tmp_path / "bg3", seq_len=L, negatives="background",
                             negative_ratio=2.0, seed=4)
    assert again.report["fingerprint"] == res.report["fingerprint"] != other.report["fingerprint"]


def test_flank_negatives_and_peaks_default(tmp_path, fasta):
    sheet = _peak_sheet(tmp_path, n_peaks=10)
    L = 200
    base = build_from_peaks(sheet, fasta, tmp_path / "p", seq_len=L)
    assert base.report["negatives"]["method"] == "peaks"
    # The toy genome's peaks are dense: about 70 % of their flanks are free of peaks, so fewer are accepted.
    res = build_from_peaks(sheet, fasta, tmp_path / "f", seq_len=L, negatives="flank", flank_distance=300,
                           min_negatives=0.5)
    wins = _windows_of(tmp_path / "f", L)
    pos = [w for w, c, y in wins if (y == 1).any()]
    neg = [w for w, c, y in wins if not (y == 1).any()]
    assert len(neg) == res.report["negatives"]["obtained"] > 0
    for chrom, a, b in neg:
        assert not any(chrom == pc and a < pb and pa < b for pc, pa, pb in pos)
        # every flank's centre is exactly 300 bp from some positive window's centre
        assert any(chrom == pc and abs(a - pa) == 300 for pc, pa, pb in pos)
    with pytest.raises(DataError, match="--max-n-fraction"):
        build_from_peaks(sheet, fasta, tmp_path / "x", seq_len=L, negatives="background", max_n_fraction=1.5)
    with pytest.raises(DataError, match="--negative-ratio"):
        build_from_peaks(sheet, fasta, tmp_path / "x", seq_len=L, negatives="background", negative_ratio=0)


def test_too_few_negatives_is_an_error_unless_accepted(tmp_path, fasta):
    """A genome too small for the negatives asked for: refused with nothing written, and accepted
    (with the shortfall in the report) only when --min-negatives says so."""
    sheet = _peak_sheet(tmp_path)
    with pytest.raises(DataError, match=r"--negatives flank: \d+ of the 90 negatives requested.*--min-negatives"):
        build_from_peaks(sheet, fasta, tmp_path / "few", seq_len=200, negatives="flank", negative_ratio=2)
    assert not (tmp_path / "few").exists()
    res = build_from_peaks(sheet, fasta, tmp_path / "few", seq_len=200, negatives="flank", negative_ratio=2,
                           min_negatives=0)
    rep = res.report["negatives"]
    assert 0 < rep["obtained"] < 0.9 * rep["requested"]
    assert any("negatives found" in w for w in res.report["warnings"])
    with pytest.raises(DataError, match="--min-negatives 1.5"):
        build_from_peaks(sheet, fasta, tmp_path / "x", seq_len=200, negatives="background", min_negatives=1.5)


# ----------------------------------------------------------------------------- convert, info


def test_convert_and_info_carry_tracks(tmp_path, fasta):
    from mtlsweep.data.info import describe, format_info
    from mtlsweep.data.store import basset_to_store
    sheet = _peak_sheet(tmp_path, n_peaks=10)
    bw = write_bigwig(tmp_path / "d.bw", chroms=("chr1", "chr2", "chr3"), half_chr2=False)
    build_from_peaks(sheet, fasta, tmp_path / "o", seq_len=200, tracks=[TrackSpec("DNase", bw)],
                     track_transform="log1p")
    converted = basset_to_store(tmp_path / "o" / "basset.h5", tmp_path / "conv.h5")
    # Basset's layout keeps headers for the test split only, so the fingerprints differ; the arrays may not.
    built, conv = Store.load(tmp_path / "o" / "store.h5"), Store.load(tmp_path / "conv.h5")
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(built.splits[s].tracks, conv.splits[s].tracks)
        np.testing.assert_array_equal(built.splits[s].labels, conv.splits[s].labels)
    assert built.splits["test"].headers == conv.splits["test"].headers
    assert converted.track_names == ["DNase"] and conv.track_info[0]["transform"] == "log1p"
    text = format_info(describe(tmp_path / "conv.h5"))
    assert "track:     DNase: bigWig" in text and "transform log1p" in text and "resolution 1 bp" in text
    assert "track:     DNase" in format_info(describe(tmp_path / "o" / "basset.h5"))


# ----------------------------------------------------------------------------- models with tracks


def _track_store(n=2400, L=64, seed=0, per_task=False):
    """Random sequence; a task is positive where its track has a bump: only the track carries signal."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(n, L), dtype=np.uint8)
    labels = (rng.random((n, 2)) < 0.3).astype(np.int8)
    tracks = rng.normal(0, 0.3, size=(n, 2, L)).astype(np.float32)
    for t in range(2):
        col = t if per_task else 0
        for i in np.flatnonzero(labels[:, t]):
            p = rng.integers(0, L - 8)
            tracks[i, col, p:p + 8] += 2.0 + t  # task 1's bump is larger: one shared track tells both apart
    tracks = tracks.astype(np.float16)
    cut1, cut2 = int(n * 0.7), int(n * 0.85)
    sl = {"train": slice(0, cut1), "valid": slice(cut1, cut2), "test": slice(cut2, n)}
    splits = {s: SplitArrays(codes[v], labels[v], tracks[v]) for s, v in sl.items()}
    names = ["TF1", "TF2"] if per_task else ["DNase", "noise"]
    return Store.from_arrays(["TF1", "TF2"], splits, track_names=names)


def test_sequence_plus_track_beats_sequence_alone(tmp_path, tiny_config):
    from mtlsweep.training.engine import Trainer
    path = tmp_path / "track.h5"
    _track_store().save(path)
    scores = {}
    for use in (True, False):
        cfg = tiny_config(**{"data.path": str(path), "data.use_tracks": use, "train.epochs": 4,
                             "model.sharing.shared_layers": 0})
        scores[use] = Trainer(cfg, tmp_path / f"r{use}", progress=False).fit().best_val_auroc
    assert scores[True] > 0.9 and scores[False] < 0.65, scores


def test_per_task_tracks_feed_only_their_tower(tmp_path, tiny_config):
    from mtlsweep.training.engine import Trainer
    from mtlsweep.config.errors import ConfigError
    path = tmp_path / "pt.h5"
    _track_store(per_task=True).save(path)
    cfg = tiny_config(**{"data.path": str(path), "data.task_tracks": "by_name", "train.epochs": 4,
                         "model.sharing.shared_layers": 0})
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    assert tr.track_inputs == {"shared": [], "per_task": ["TF1", "TF2"]}
    assert tr.fit().best_val_auroc > 0.9
    model = tr.model.eval()
    x = torch.randn(5, 6, 64)
    with torch.no_grad():
        y0 = model(x)
        x2 = x.clone()
        x2[:, 5] += 3.0  # TF2's track
        y1 = model(x2)
    torch.testing.assert_close(y0[:, 0], y1[:, 0])
    assert not torch.allclose(y0[:, 1], y1[:, 1])
    with pytest.raises(ConfigError, match="shared_layers"):
        Trainer(tiny_config(**{"data.path": str(path), "data.task_tracks": "by_name",
                               "model.sharing.shared_layers": 2}), tmp_path / "h", progress=False)
    with pytest.raises(ConfigError, match="NOPE"):
        Trainer(tiny_config(**{"data.path": str(path), "data.task_tracks": ["TF1=NOPE"],
                               "model.sharing.shared_layers": 0}), tmp_path / "h", progress=False)


def test_analysis_feeds_a_run_the_tracks_it_trained_on(tmp_path, tiny_config):
    from mtlsweep.analysis.similarity import compare_runs, load_probe, load_run
    from mtlsweep.training.engine import Trainer
    path = tmp_path / "track.h5"
    _track_store(n=600).save(path)
    cfg = tiny_config(**{"data.path": str(path), "data.tracks": ["noise"], "train.epochs": 1})
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    tr.fit()
    run, probe = load_run(str(tmp_path / "r")), load_probe(str(path), 300)
    assert run.columns(probe) == [0, 1, 2, 3, 5]  # one-hot and "noise", not the store's first track
    x = next(probe.batches(300, run.columns(probe)))
    np.testing.assert_array_equal(x[:, 4].numpy(), probe.split.tracks[:, 1].astype(np.float32))
    res = compare_runs(run, run, probe, batch=100)
    assert np.nanmin(np.diag(res.matrix)) > 0.999
    other = tmp_path / "other.h5"
    Store.from_arrays(["TF1", "TF2"], {s: SplitArrays(sp.codes, sp.labels) for s, sp in
                                        Store.load(path).splits.items()}).save(other)
    with pytest.raises(DataError, match="not in"):
        run.columns(load_probe(str(other), 50))


def test_motif_init_seeds_only_sequence_channels(tmp_path, tiny_config):
    from mtlsweep.training.engine import Trainer
    path = tmp_path / "track.h5"
    _track_store().save(path)
    cfg = tiny_config(**{"data.path": str(path), "init.kind": "motifs", "model.sharing.shared_layers": 5})
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    w = tr.model.layers[tr.model.layer_names[0]].weight  # [stacks, filters, channels, width]
    n = tr.init_summary["filters"]
    assert w.shape[2] == 6 and 0 < n
    # A seeded filter reads the sequence alone; the unseeded ones keep their random weights on every channel.
    assert (w[:, :n, 4:] == 0).all() and w[:, :n, :4].abs().sum() > 0
    assert n == w.shape[1] or (w[:, n:, 4:] != 0).any()


def test_gbm_track_features(tmp_path):
    from sklearn.metrics import roc_auc_score
    from mtlsweep.config.run import GbmConfig
    from mtlsweep.models.motif_gbm import GbmModel, fit_gbm, save_models
    store = _track_store(n=1200)
    va = store.splits["valid"]
    cfg = GbmConfig(features=["gc"], n_estimators=40, cache_dir=None)
    scores = {}
    for use in (True, False):
        fit = fit_gbm(cfg, store, tracks=["DNase"] if use else ())
        assert any(n.startswith("track:DNase:") for n in fit.feature_names) == use
        scores[use] = roc_auc_score(va.labels[:, 0], fit.probs["valid"][:, 0])
        if use:
            save_models(fit, cfg, tmp_path)
            model = GbmModel.load(tmp_path)
            np.testing.assert_allclose(model.predict_proba(va.codes, tracks=va.tracks[:, :1]),
                                       fit.probs["valid"], atol=1e-5)
            with pytest.raises(DataError, match="reads tracks DNase"):
                model.predict_proba(va.codes)
    assert scores[True] > 0.9 and scores[False] < 0.65, scores


def test_negative_fraction_keeps_positives_and_redraws(tmp_path, tiny_config):
    from mtlsweep.training.engine import Trainer
    cfg = tiny_config(**{"data.negative_fraction": 0.25, "train.epochs": 1})
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    labels = tr.store.splits["train"].labels
    pos = np.flatnonzero((labels == 1).any(axis=1))
    neg = np.flatnonzero(~(labels == 1).any(axis=1))
    rows0, rows1 = tr.epoch_rows(0), tr.epoch_rows(1)
    assert set(pos) <= set(rows0) and len(rows0) == len(pos) + round(0.25 * len(neg))
    assert not np.array_equal(rows0, rows1)
    np.testing.assert_array_equal(rows0, Trainer(cfg, tmp_path / "r2", progress=False).epoch_rows(0))
    assert tr.steps_per_epoch == len(rows0) // 32
    res = tr.fit()
    # metrics on the full valid split, whatever the train fraction
    assert res.best_val_auroc > 0.5
    assert Trainer(tiny_config(), tmp_path / "r3", progress=False).epoch_rows(0) is None


# ----------------------------------------------------------------------------- CLI and compare


def test_cli_labels_build_end_to_end(tmp_path, fasta, capsys):
    from mtlsweep.app.cli import main
    bw = write_bigwig(tmp_path / "dnase.bw", chroms=("chr1", "chr2", "chr3"), half_chr2=False)
    labels = write_labels(tmp_path / "labels.tsv.gz", _dream_rows(step=400), gz=True)
    rc = main(["data", "build", "--labels", str(labels), str(fasta), "--out", str(tmp_path / "out"),
               "--track", f"DNase={bw}", "--track-transform", "log1p", "--test-chroms", "chr3"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "DNase" in out and "store.h5" in out
    assert main(["data", "info", str(tmp_path / "out" / "store.h5")]) == 0
    assert "track:     DNase" in capsys.readouterr().out
    # user mistakes: one line on stderr, exit 2, nothing written
    for argv, needle in (
            (["data", "build", "--labels", str(labels), str(fasta), str(fasta), "--out", str(tmp_path / "x")],
             "FASTA (with --labels)"),
            (["data", "build", "--labels", str(labels), str(fasta), "--out", str(tmp_path / "x"),
              "--negatives", "background"], "--negatives"),
            (["data", "build", "--labels", str(labels), str(fasta), "--out", str(tmp_path / "x"),
              "--track", "DNase"], "--track"),
            (["data", "build", "--labels", str(labels), str(fasta), "--out", str(tmp_path / "x"),
              "--label-map", "{bad"], "--label-map")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()

