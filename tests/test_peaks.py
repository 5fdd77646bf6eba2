"""Peak files + FASTA -> Basset HDF5 + store (data/peaks.py), on a tiny genome written here."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genome_files import write_fasta, write_text

from mtlsweep.data.errors import DataError
from mtlsweep.data.onehot import reverse_complement_codes, seq_to_codes
from mtlsweep.data.peaks import (assign_splits, build_from_peaks, format_report, merge_peaks, merge_windows,
                        read_peaks, read_sample_sheet, MergedPeaks, SplitPlan)

CHROMS = {"chr1": 3000, "chr2": 2000, "chr3": 1600}
L, OVERLAP = 200, 50


def _genome() -> dict[str, str]:
    rng = np.random.default_rng(7)
    out = {}
    for name, n in CHROMS.items():
        seq = list("".join(rng.choice(list("ACGT"), n)))
        seq[520:530] = "N" * 10           # inside the chr1 and chr3 windows below
        seq[1000:1010] = list("acgtacgtac")  # soft-masked bases must come out uppercase
        out[name] = "".join(seq)
    return out


GENOME = _genome()


@pytest.fixture()
def fasta(tmp_path):
    return write_fasta(tmp_path / "genome.fa", GENOME, 60, description="test")


def _write(path, lines, gz=False):
    return write_text(path, "".join(line + "\n" for line in lines), gz)


def _np(chrom, start, end, summit):
    return f"{chrom}\t{start}\t{end}\tp\t0\t.\t5.0\t3.0\t2.0\t{summit}"


@pytest.fixture()
def sheet(tmp_path):
    """Three samples; the expected windows (L=200, centre at index 100) are in the comments."""
    d = tmp_path / "peaks"
    d.mkdir()
    _write(d / "a.bed", [
        "track name=a",
        "chr1\t400\t500",        # centre 450 -> window 350
        "chr1\t2950\t3000",      # centre 2975 -> [2875, 3075) off chr1's end: skipped
        "chrUn\t100\t200",       # not in the FASTA: skipped
        "chr2\t1000\t1100",      # centre 1050 -> 950
        "chr3\t500\t700",        # centre 600 -> 500
    ])
    _write(d / "b.narrowPeak", [
        _np("chr1", 300, 700, 180),   # summit 480 (midpoint would be 500) -> 380
        _np("chr2", 10, 200, 5),      # summit 15 -> [-85, 115): skipped
        _np("chr2", 1500, 1600, -1),  # no summit: midpoint 1550 -> 1450
        _np("chr3", 900, 1000, 50),   # summit 950 -> 850
    ])
    _write(d / "c.bed.gz", [
        "chr1\t1500\t1700",      # 1600 -> 1500
        "chr2\t1040\t1080",      # 1060 -> 960
        "chr3\t520\t560",        # 540 -> 440
    ], gz=True)
    path = tmp_path / "samples.tsv"
    path.write_text("name\tpath\nA\tpeaks/a.bed\nB\tpeaks/b.narrowPeak\nC\tpeaks/c.bed.gz\n")
    return path


# Hand-merged (Basset: new centre = int(0.5 + weighted mean of (start + end - 1) / 2), weights
# 1 + number of active tasks):
#   chr1: A 350 + B 380 overlap 170 > 50: centres 449.5, 479.5 -> 464.5 -> 465 -> start 365
#   chr2: A 950 + C 960: 1049.5, 1059.5 -> 1055 -> 955;  B 1450 alone (500 bp away)
#   chr3: C 440 + A 500: 539.5, 599.5 -> 570 -> 470;     B 850 alone
EXPECTED = [  # header, activity (A, B, C)
    ("chr1:365-565(+)", [1, 1, 0]),
    ("chr1:1500-1700(+)", [0, 0, 1]),
    ("chr2:955-1155(+)", [1, 0, 1]),
    ("chr2:1450-1650(+)", [0, 1, 0]),
    ("chr3:470-670(+)", [1, 0, 1]),
    ("chr3:850-1050(+)", [0, 1, 0]),
]


def _slice(header: str) -> np.ndarray:
    chrom, rest = header.split(":")
    span, strand = rest[:-3], rest[-2]
    start, end = map(int, span.split("-"))
    codes = seq_to_codes(GENOME[chrom][start:end].upper())
    return reverse_complement_codes(codes) if strand == "-" else codes


def _build(sheet, fasta, out, **kw):
    kw.setdefault("seq_len", L)
    kw.setdefault("merge_overlap", OVERLAP)
    return build_from_peaks(sheet, fasta, out, **kw)


# ----------------------------------------------------------------------------- merging


def test_merge_weighted_centre_and_threshold():
    # 1000/1100/1240 form one cluster (gaps < 200 - 50); 1000+1100 merge (overlap 100, centres
    # 1099.5 and 1199.5 -> 1150 -> 1050); then 1050 vs 1240 overlaps 10 < 50: stays apart.
    assert merge_windows([1240, 1000, 1100], [2, 0, 1], L, OVERLAP) == [
        (1050, frozenset({0, 1})), (1240, frozenset({2}))]
    # Weights: {0,1} at 2000 (weight 3) + {2} at 2100 (weight 2):
    # (3 * 2099.5 + 2 * 2199.5) / 5 = 2139.5 -> 2140 -> start 2040 (2050 if unweighted).
    assert merge_windows([2000, 2000, 2100], [0, 1, 2], L, OVERLAP) == [(2040, frozenset({0, 1, 2}))]
    # Overlap exactly 50 is not "more than 50": two sequences.
    assert merge_windows([2500, 2650], [0, 1], L, OVERLAP) == [
        (2500, frozenset({0})), (2650, frozenset({1}))]
    # Tie 100/100 -> the first pair merges (100+200 -> 250 centre -> 150); 150 vs 300 overlaps
    # exactly 50, which Basset's inner loop merges (>=): (3 * 249.5 + 2 * 399.5) / 5 = 309.5 -> 210.
    assert merge_windows([100, 200, 300], [0, 1, 2], L, OVERLAP) == [(210, frozenset({0, 1, 2}))]


def test_merge_span_mode_and_same_task_union():
    # span: the cluster 1000..1440 becomes one window centred on 1220.
    assert merge_windows([1000, 1100, 1240], [0, 1, 2], L, OVERLAP, mode="span") == [
        (1120, frozenset({0, 1, 2}))]
    # Two peaks of one task merged keep a single active task.
    assert merge_windows([500, 520], [1, 1], L, OVERLAP) == [(510, frozenset({1}))]
    # merge_overlap = L disables merging.
    assert len(merge_windows([500, 500], [0, 1], L, L)) == 2


def test_merge_default_length_and_chrom_strand_groups(tmp_path):
    lengths = {"chr1": 3000, "chr2": 2000}
    bed = _write(tmp_path / "x.bed", ["chr1\t1000\t1100\tp\t0\t+", "chr1\t1000\t1100\tp\t0\t-",
                                      "chr2\t1000\t1100"])
    w, rep = read_peaks(bed, lengths)  # L = 600: centre 1050 -> [750, 1350)
    assert w.start.tolist() == [750, 750, 750] and w.strand.tolist() == [0, 1, 0]
    assert w.chrom.tolist() == [0, 0, 1]
    merged = merge_peaks([w], lengths, 600)  # same place, other strand or chromosome: no merge
    assert len(merged) == 3
    assert merged.headers(600) == ["chr1:750-1350(+)", "chr1:750-1350(-)", "chr2:750-1350(+)"]


# ----------------------------------------------------------------------------- reading


def test_read_peaks_counts_skips_and_summits(sheet):
    w, rep = read_peaks(sheet.parent / "peaks" / "a.bed", CHROMS, L, task="A")
    assert w.start.tolist() == [350, 950, 500] and w.chrom.tolist() == [0, 1, 2]
    assert (rep.format, rep.lines, rep.comment_lines, rep.peaks_read, rep.kept) == ("bed", 6, 1, 5, 3)
    assert rep.skipped == {"malformed": 0, "unknown_chrom": 1, "off_chrom_end": 1}
    assert rep.unknown_chroms == {"chrUn": 1}
    assert any("a.bed:3: off_chrom_end" in e for e in rep.examples)
    w, rep = read_peaks(sheet.parent / "peaks" / "b.narrowPeak", CHROMS, L)
    assert w.start.tolist() == [380, 1450, 850]
    assert (rep.format, rep.summits_used, rep.skipped["off_chrom_end"]) == ("narrowPeak", 2, 1)
    w, rep = read_peaks(sheet.parent / "peaks" / "c.bed.gz", CHROMS, L)
    assert w.start.tolist() == [1500, 960, 440]


def test_narrowpeak_detected_by_content_and_bad_summit(tmp_path):
    f = _write(tmp_path / "enc.bed", [_np("chr1", 300, 700, 180)])
    w, rep = read_peaks(f, CHROMS, L)
    assert rep.format == "narrowPeak" and w.start.tolist() == [380]
    f = _write(tmp_path / "bad.narrowPeak", [_np("chr1", 300, 700, 180), _np("chr1", 300, 700, 400)])
    with pytest.raises(DataError, match=r"bad.narrowPeak:2: summit offset 400 outside the peak"):
        read_peaks(f, CHROMS, L)


@pytest.mark.parametrize("line, why", [
    ("chr1\t100", "expected at least 3 columns"),
    ("chr1\t1x\t200", "start '1x' is not a non-negative integer"),
    ("chr1\t100\t2.5", "end '2.5' is not a non-negative integer"),
    ("chr1\t-5\t200", "start '-5' is not a non-negative integer"),
    ("chr1\t300\t300", "start 300 >= end 300"),
])
def test_malformed_line_fails_naming_file_and_line(tmp_path, line, why):
    f = _write(tmp_path / "m.bed", ["chr1\t400\t500", "# comment", line])
    with pytest.raises(DataError, match=r"m\.bed:3: " + why.replace(".", r"\.")) as e:
        read_peaks(f, CHROMS, L)
    assert "\n" not in str(e.value)
    w, rep = read_peaks(f, CHROMS, L, on_error="skip")
    assert rep.skipped["malformed"] == 1 and rep.kept == 1
    assert len(rep.examples) == 1 and rep.examples[0].startswith("m.bed:3: malformed: " + why)


def test_outside_peaks_can_fail(tmp_path):
    f = _write(tmp_path / "o.bed", ["chr1\t400\t500", "chrZ\t1\t2"])
    with pytest.raises(DataError, match=r"o\.bed:2: chromosome 'chrZ' is not in"):
        read_peaks(f, CHROMS, L, on_outside="fail")
    f = _write(tmp_path / "e.bed", ["chr2\t1950\t1990"])
    with pytest.raises(DataError, match=r"e\.bed:1: .*runs off the chromosome \(length 2000\)"):
        read_peaks(f, CHROMS, L, on_outside="fail")


@pytest.mark.parametrize("lines", [[], ["track name=x", "# nothing", ""]])
def test_empty_file_is_an_error(tmp_path, lines):
    f = _write(tmp_path / "empty.bed", lines)
    with pytest.raises(DataError, match=r"empty\.bed: empty peak file"):
        read_peaks(f, CHROMS, L)


# ----------------------------------------------------------------------------- sample sheet


def test_sample_sheet_header_relative_paths_and_errors(tmp_path, sheet):
    entries = read_sample_sheet(sheet)
    assert [e.name for e in entries] == ["A", "B", "C"]
    assert entries[1].path == sheet.parent / "peaks" / "b.narrowPeak" and entries[1].line == 3
    bad = tmp_path / "dup.tsv"
    bad.write_text("A\tpeaks/a.bed\n# c\nA\tpeaks/c.bed.gz\n")
    with pytest.raises(DataError, match=r"dup\.tsv line 3: duplicate task name 'A' \(first on line 1\)"):
        read_sample_sheet(bad)
    bad.write_text("A\tpeaks/a.bed\nB\tpeaks/missing.bed\n")
    with pytest.raises(DataError, match=r"dup\.tsv line 2: peak file .*missing\.bed.* not found"):
        read_sample_sheet(bad)
    bad.write_text("A\tpeaks/a.bed\textra\n")
    with pytest.raises(DataError, match=r"dup\.tsv line 1: expected 2 columns"):
        read_sample_sheet(bad)
    bad.write_text("# only a comment\n")
    with pytest.raises(DataError, match=r"dup\.tsv: no samples"):
        read_sample_sheet(bad)


# ----------------------------------------------------------------------------- splits


def _merged(chroms: list[int]) -> MergedPeaks:
    n = len(chroms)
    return MergedPeaks(list(CHROMS), np.asarray(chroms, np.int32), np.arange(n, dtype=np.int64) * 300,
                       np.zeros(n, np.int8), np.ones((n, 1), np.int8))


def test_random_split_is_seeded_disjoint_and_sized():
    peaks = _merged([0] * 30 + [1] * 10)
    a = assign_splits(peaks, SplitPlan(valid_frac=0.25, test_frac=0.1, seed=3))
    b = assign_splits(peaks, SplitPlan(valid_frac=0.25, test_frac=0.1, seed=3))
    c = assign_splits(peaks, SplitPlan(valid_frac=0.25, test_frac=0.1, seed=4))
    assert {s: len(v) for s, v in a.items()} == {"train": 26, "valid": 10, "test": 4}
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not all(np.array_equal(a[s], c[s]) for s in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(40))
    assert all(np.all(np.diff(v) > 0) for v in a.values())


def test_chromosome_split_mixed_with_random_valid():
    peaks = _merged([0] * 20 + [1] * 5 + [2] * 3)
    out = assign_splits(peaks, SplitPlan(test_chroms=("chr3",), valid_frac=0.2, seed=0))
    assert out["test"].tolist() == [25, 26, 27]
    assert len(out["valid"]) == 5 and len(out["train"]) == 20
    assert not set(out["valid"].tolist()) & set(out["train"].tolist())
    with pytest.raises(DataError, match=r"split 'test' would be empty: no merged peak lies on chromosomes chr3"):
        assign_splits(_merged([0] * 5 + [1] * 5), SplitPlan(("chr2",), ("chr3",)))


# ----------------------------------------------------------------------------- end to end


def test_build_chromosome_split_end_to_end(tmp_path, sheet, fasta):
    from mtlsweep.data.basset_hdf5 import BassetReader
    from mtlsweep.data.store import Store

    res = _build(sheet, fasta, tmp_path / "out", valid_chroms=["chr2"], test_chroms=["chr3"])
    rep = json.loads(res.report_path.read_text())
    assert rep == res.report
    assert [f["peaks_read"] for f in rep["files"]] == [5, 4, 3]
    assert [f["kept"] for f in rep["files"]] == [3, 3, 3]
    assert rep["skipped"] == {"malformed": 0, "unknown_chrom": 1, "off_chrom_end": 2}
    assert rep["unknown_chroms"] == {"chrUn": 1}
    assert (rep["windows_kept"], rep["merged"]) == (9, 6)
    assert rep["activity"] == {"A": 3, "B": 3, "C": 3}
    assert {s: v["n"] for s, v in rep["splits"].items()} == {"train": 2, "valid": 2, "test": 2}
    text = format_report(rep)
    assert "unknown_chrom 1, off_chrom_end 2" in text and "chrUn (1)" in text

    by_split = {"train": EXPECTED[0:2], "valid": EXPECTED[2:4], "test": EXPECTED[4:6]}
    with BassetReader(res.basset_path) as r:
        assert r.task_names == ["A", "B", "C"] and r.seq_len == L and r.layout == "N41L"
        assert r.headers("test") == [h for h, _ in by_split["test"]]
        for split, rows in by_split.items():
            codes, labels, tracks = r.read_split(split)
            assert tracks is None
            assert labels.tolist() == [act for _, act in rows]
            assert np.array_equal(codes, np.stack([_slice(h) for h, _ in rows]))
    store = Store.load(res.store_path)
    assert store.task_names == ["A", "B", "C"] and store.seq_len == L
    for split, rows in by_split.items():
        sa = store.splits[split]
        assert sa.headers == [h for h, _ in rows]
        assert sa.labels.tolist() == [act for _, act in rows]
        assert np.array_equal(sa.codes, np.stack([_slice(h) for h, _ in rows]))
    # chr3:470-670 holds the Ns at 520..529 (N code 4).
    assert store.splits["test"].codes[0, 50:60].tolist() == [4] * 10
    assert rep["fingerprint"] == store.fingerprint


def test_build_random_split_strand_and_determinism(tmp_path, fasta):
    lines = [f"chr1\t{s}\t{s + 100}\tp\t0\t{'-' if s == 700 else '+'}" for s in range(100, 2800, 300)]
    lines += [f"chr2\t{s}\t{s + 50}" for s in range(200, 1800, 300)]
    _write(tmp_path / "a.bed", lines)
    _write(tmp_path / "b.bed", ["chr1\t700\t800\tq\t0\t-"])  # merges with A's '-' peak only
    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"A\t{tmp_path / 'a.bed'}\nB\tb.bed\n")
    kw = dict(valid_frac=0.2, test_frac=0.2, seed=1)
    r1 = _build(sheet, fasta, tmp_path / "o1", **kw)
    r2 = _build(sheet, fasta, tmp_path / "o2", **kw)
    for k in ("basset_path", "store_path"):
        assert getattr(r1, k).read_bytes() == getattr(r2, k).read_bytes()
    r1.report.pop("outputs"), r2.report.pop("outputs")
    assert r1.report == r2.report
    assert {s: v["n"] for s, v in r1.report["splits"].items()} == {"train": 9, "valid": 3, "test": 3}
    from mtlsweep.data.store import Store

    store = Store.load(r1.store_path)
    found = {}
    for sa in store.splits.values():
        for h, c, y in zip(sa.headers, sa.codes, sa.labels):
            assert np.array_equal(c, _slice(h))
            found[h] = y.tolist()
    assert len(found) == 15
    assert found["chr1:650-850(-)"] == [1, 1]  # reverse-complemented slice, both tasks
    assert sum(v[1] for v in found.values()) == 1


def test_build_errors_write_nothing(tmp_path, sheet, fasta):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"--test-chroms: chromosome 'chr9' is not in FASTA"):
        _build(sheet, fasta, out, test_chroms=["chr9"])
    with pytest.raises(DataError, match=r"chr2 are in both --valid-chroms and --test-chroms"):
        _build(sheet, fasta, out, valid_chroms=["chr2"], test_chroms=["chr2"])
    with pytest.raises(DataError, match=r"--merge-overlap 300 is not allowed with --length 200"):
        _build(sheet, fasta, out, merge_overlap=300)
    with pytest.raises(DataError, match=r"FASTA .*nope\.fa: file not found"):
        _build(sheet, tmp_path / "nope.fa", out)
    _write(sheet.parent / "peaks" / "b.narrowPeak", [_np("chr1", 300, 700, 180), "chr1\tx\t5"])
    with pytest.raises(DataError, match=r"b\.narrowPeak:2: narrowPeak needs 10 columns, got 3"):
        _build(sheet, fasta, out)
    _write(sheet.parent / "peaks" / "b.narrowPeak", [_np("chrZ", 300, 700, 180)])
    with pytest.raises(DataError, match=r"none of the 1 peaks of task 'B' is usable \(unknown_chrom 1\)"):
        _build(sheet, fasta, out)
    assert not out.exists()


def test_build_skip_mode_and_overwrite(tmp_path, sheet, fasta):
    out = tmp_path / "out"
    with open(sheet.parent / "peaks" / "a.bed", "a") as fh:
        fh.write("chr1\t100\n")
    res = _build(sheet, fasta, out, valid_chroms=["chr2"], test_chroms=["chr3"], on_error="skip")
    assert res.report["skipped"]["malformed"] == 1
    assert res.report["files"][0]["examples"][-1].startswith("a.bed:7: malformed: expected at least 3")
    before = res.basset_path.read_bytes()
    with pytest.raises(DataError, match=r"basset\.h5 exists; pass --force"):
        _build(sheet, fasta, out, on_error="skip")
    res = _build(sheet, fasta, out, on_error="skip", overwrite=True, seq_len=100, merge_overlap=20)
    from mtlsweep.data.basset_hdf5 import BassetReader

    with BassetReader(res.basset_path) as r:
        assert r.seq_len == 100
    assert res.basset_path.read_bytes() != before
    assert sorted(p.name for p in out.iterdir()) == ["basset.h5", "build_report.json", "store.h5"]
