"""Peak BED/narrowPeak files + genome FASTA -> Basset training data.

Follows Basset's `preprocess_features.py`: every peak becomes a window of `seq_len` bp around
its midpoint (narrowPeak: its summit); windows on the same chromosome and strand that overlap
by more than `merge_overlap` bp form a cluster; inside a cluster the adjacent pair with the
largest overlap is merged (new centre = the activity-weighted mean of the two centres,
re-extended to `seq_len`) until no adjacent pair overlaps by `merge_overlap` or more. A merged
window is active in every sample of its members. Then sequences are cut from the FASTA, the
windows are split by chromosome or at random, and written as a Basset HDF5 plus a store.

Two deliberate departures from Basset, both reported: windows that run off a chromosome end
are skipped and counted (Basset shifts them inwards, which moves the peak off centre), and the
merged centre is computed in exact integer arithmetic instead of floats.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pyfaidx
from tqdm.auto import tqdm

from mtlsweep.data.basset_hdf5 import LAYOUTS, write_basset
from mtlsweep.data.errors import DataError
from mtlsweep.data.negatives import Blocked, gc_and_n, gc_summary, sample_background, sample_flanks
from mtlsweep.data.negatives import check_options as check_negatives
from mtlsweep.data.onehot import reverse_complement_codes, seq_to_codes
from mtlsweep.data.signal import TrackSet, TrackSpec, check_tracks, extract_tracks, parse_transforms
from mtlsweep.data.store import SplitArrays, Store

SKIP_REASONS = ("malformed", "unknown_chrom", "off_chrom_end")
MERGE_MODES = ("basset", "span")
ON_ERROR = ("fail", "skip")
OUTPUT_NAMES = {"basset": "basset.h5", "store": "store.h5", "report": "build_report.json"}

_SHEET_HEADER_NAMES = {"name", "task", "target", "label", "sample", "cell_type", "celltype"}
_SHEET_HEADER_PATHS = {"path", "file", "bed", "filename", "peaks", "bed_file", "peak_file"}
_COMMENT_PREFIXES = (b"#", b"track", b"browser")
_MAX_EXAMPLES = 10


# ----------------------------------------------------------------------------- sample sheet

@dataclass(frozen=True)
class SampleEntry:
    name: str
    path: Path
    line: int  # line of the sheet, for error messages


def read_sample_sheet(path: str | os.PathLike) -> list[SampleEntry]:
    """`name<TAB>path` per line; optional `name<TAB>path` header; `#` comments and blank lines
    ignored; relative paths resolved against the sheet's directory."""
    sheet = Path(path)
    if not sheet.is_file():
        raise DataError(f"sample sheet {sheet}: file not found")
    try:
        text = sheet.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"sample sheet {sheet}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    entries: list[SampleEntry] = []
    first_line_of: dict[str, int] = {}
    seen_data = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            raise DataError(f"sample sheet {sheet} line {lineno}: expected 2 columns name<TAB>path, "
                            f"got {len(fields)}: {raw.strip()[:80]!r}")
        name, file_field = fields[0].strip(), fields[1].strip()
        if not seen_data:
            seen_data = True
            if name.lower() in _SHEET_HEADER_NAMES and file_field.lower() in _SHEET_HEADER_PATHS:
                continue
        if not name:
            raise DataError(f"sample sheet {sheet} line {lineno}: empty task name")
        if name in first_line_of:
            raise DataError(f"sample sheet {sheet} line {lineno}: duplicate task name {name!r} "
                            f"(first on line {first_line_of[name]}); task names must be unique")
        first_line_of[name] = lineno
        file_path = Path(file_field).expanduser()
        if not file_path.is_absolute():
            file_path = sheet.parent / file_path
        if not file_path.is_file():
            raise DataError(f"sample sheet {sheet} line {lineno}: peak file {str(file_path)!r} "
                            f"of task {name!r} not found")
        entries.append(SampleEntry(name, file_path, lineno))
    if not entries:
        raise DataError(f"sample sheet {sheet}: no samples; expected lines name<TAB>path")
    return entries


# ----------------------------------------------------------------------------- windows

def peak_center(start: int, end: int, summit: int = -1) -> int:
    """Basset's midpoint int(0.5 + (start + end - 1) / 2) == (start + end) // 2; a narrowPeak
    summit (offset from start, -1 = none) takes precedence."""
    return start + summit if summit >= 0 else (start + end) // 2


def window_start(center: int, seq_len: int) -> int:
    """The window [start, start + seq_len) puts `center` at index seq_len // 2, as Basset does."""
    return center - seq_len // 2


# ----------------------------------------------------------------------------- reading peaks

@dataclass
class FileReport:
    task: str
    path: str
    format: str = "bed"
    sha256: str = ""
    lines: int = 0
    comment_lines: int = 0
    peaks_read: int = 0
    kept: int = 0
    summits_used: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    unknown_chroms: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # first skipped lines, with the reason


@dataclass
class PeakWindows:
    """Windows of one file, already extended: chromosome index (order of `chrom_lengths`),
    strand (0 = '+' or unstranded, 1 = '-') and window start."""
    chrom: np.ndarray   # int32
    strand: np.ndarray  # int8
    start: np.ndarray   # int64
    peak_start: np.ndarray | None = None   # int64, the peak itself (for negatives that avoid it)
    peak_end: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.start)


def _open_binary(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_float(b: bytes) -> bool:
    try:
        float(b)
    except ValueError:
        return False
    return True


def _looks_like_narrowpeak(fields: list[bytes]) -> bool:
    return (len(fields) == 10 and fields[9].lstrip(b"-").isdigit()
            and all(_is_float(f) for f in (fields[6], fields[7], fields[8])))


def _show(b: bytes) -> str:
    return repr(b.decode("utf-8", "replace")[:40])


def read_peaks(path: str | os.PathLike, chrom_lengths: Mapping[str, int], seq_len: int = 600, *,
               task: str = "", on_error: str = "fail", on_outside: str = "skip",
               fasta_name: str = "the FASTA") -> tuple[PeakWindows, FileReport]:
    """Parse one BED/narrowPeak file (plain or gzip) into windows of `seq_len` bp.

    Malformed lines (fewer than 3 columns, narrowPeak without 10 columns, non-integer or
    negative coordinates, start >= end, summit outside the peak) raise DataError naming the file
    and line when on_error="fail", else are skipped and counted. Peaks on chromosomes missing from
    `chrom_lengths` and windows running off a chromosome end are skipped and counted when
    on_outside="skip", else raise. A file with no peak lines raises.
    """
    path = Path(path)
    _check_choice("on_error", on_error, ON_ERROR)
    _check_choice("on_outside", on_outside, ON_ERROR)
    chrom_index = {name.encode(): i for i, name in enumerate(chrom_lengths)}
    lengths = list(chrom_lengths.values())
    rep = FileReport(task=task, path=str(path), sha256=_sha256(path))
    narrow = path.name.lower().removesuffix(".gz").endswith(".narrowpeak")
    format_known = narrow
    chrom_out, strand_out, start_out = array("i"), array("b"), array("q")
    pstart_out, pend_out = array("q"), array("q")
    skipped = rep.skipped

    def skip(reason: str, lineno: int, why: str) -> None:
        if (on_error if reason == "malformed" else on_outside) == "fail":
            hint = "--on-error skip" if reason == "malformed" else "--on-outside skip"
            raise DataError(f"{path}:{lineno}: {why} (pass {hint} to skip and count such lines)")
        skipped[reason] += 1
        if len(rep.examples) < _MAX_EXAMPLES:
            rep.examples.append(f"{path.name}:{lineno}: {reason}: {why}")

    try:
        with _open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                rep.lines += 1
                line = raw.rstrip(b"\r\n")
                if not line.strip() or line.startswith(_COMMENT_PREFIXES):
                    rep.comment_lines += 1
                    continue
                rep.peaks_read += 1
                fields = line.split(b"\t") if b"\t" in line else line.split()
                if not format_known:
                    narrow, format_known = _looks_like_narrowpeak(fields), True
                n_fields = len(fields)
                if narrow and n_fields != 10:
                    skip("malformed", lineno, f"narrowPeak needs 10 columns, got {n_fields}")
                    continue
                if n_fields < 3:
                    skip("malformed", lineno, f"expected at least 3 columns (chrom, start, end), got {n_fields}")
                    continue
                c, s, e = fields[0], fields[1].strip(), fields[2].strip()
                if not s.isdigit():
                    skip("malformed", lineno, f"start {_show(s)} is not a non-negative integer")
                    continue
                if not e.isdigit():
                    skip("malformed", lineno, f"end {_show(e)} is not a non-negative integer")
                    continue
                start, end = int(s), int(e)
                if start >= end:
                    skip("malformed", lineno, f"start {start} >= end {end}; BED needs start < end")
                    continue
                summit = -1
                if narrow:
                    sm = fields[9].strip()
                    if not sm.lstrip(b"-").isdigit():
                        skip("malformed", lineno, f"summit {_show(sm)} is not an integer")
                        continue
                    summit = int(sm)
                    if summit < -1 or summit >= end - start:
                        skip("malformed", lineno, f"summit offset {summit} outside the peak "
                                                  f"(allowed -1 or 0..{end - start - 1})")
                        continue
                ci = chrom_index.get(c)
                if ci is None:
                    name = c.decode("utf-8", "replace")
                    rep.unknown_chroms[name] = rep.unknown_chroms.get(name, 0) + 1
                    skip("unknown_chrom", lineno, f"chromosome {name!r} is not in {fasta_name}")
                    continue
                ws = window_start(peak_center(start, end, summit), seq_len)
                if ws < 0 or ws + seq_len > lengths[ci] or end > lengths[ci]:
                    skip("off_chrom_end", lineno,
                         f"{c.decode()}:{start}-{end} extended to [{ws}, {ws + seq_len}) runs off "
                         f"the chromosome (length {lengths[ci]})")
                    continue
                if summit >= 0:
                    rep.summits_used += 1
                chrom_out.append(ci)
                strand_out.append(1 if n_fields > 5 and fields[5].strip() == b"-" else 0)
                start_out.append(ws)
                pstart_out.append(start)
                pend_out.append(end)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read peak file ({type(e).__name__}: {e})") from None
    rep.format = "narrowPeak" if narrow else "bed"
    rep.kept = len(start_out)
    if rep.peaks_read == 0:
        raise DataError(f"{path}: empty peak file (no peak lines){f' for task {task!r}' if task else ''}")
    windows = PeakWindows(np.frombuffer(chrom_out, dtype=np.int32).copy(),
                          np.frombuffer(strand_out, dtype=np.int8).copy(),
                          np.frombuffer(start_out, dtype=np.int64).copy(),
                          np.frombuffer(pstart_out, dtype=np.int64).copy(),
                          np.frombuffer(pend_out, dtype=np.int64).copy())
    return windows, rep


# ----------------------------------------------------------------------------- merging

def _merge_cluster(starts: list[int], masks: list[int], seq_len: int, merge_overlap: int,
                   mode: str, chrom_len: int | None) -> tuple[list[int], list[int]]:
    if len(starts) == 1:
        return starts, masks
    hi = None if chrom_len is None else chrom_len - seq_len
    if mode == "span":
        mid = (starts[0] + starts[-1] + seq_len) // 2
        s = max(0, mid - seq_len // 2)
        union = 0
        for m in masks:
            union |= m
        return [s if hi is None else min(s, hi)], [union]
    # Basset's merge_peaks: repeatedly merge the adjacent pair with the largest overlap (first on
    # ties) while that overlap is >= merge_overlap.
    starts, masks = list(starts), list(masks)
    ov = [starts[i] + seq_len - starts[i + 1] for i in range(len(starts) - 1)]
    while ov:
        best = max(ov)
        if best < merge_overlap:
            break
        i = ov.index(best)
        w1, w2 = 1 + masks[i].bit_count(), 1 + masks[i + 1].bit_count()
        # int(0.5 + weighted mean of (start + end - 1) / 2), in integers.
        num = w1 * (2 * starts[i] + seq_len - 1) + w2 * (2 * starts[i + 1] + seq_len - 1) + (w1 + w2)
        mid = num // (2 * (w1 + w2))
        s = max(0, mid - seq_len // 2)
        starts[i] = s if hi is None else min(s, hi)
        masks[i] |= masks[i + 1]
        del starts[i + 1], masks[i + 1], ov[i]
        if i > 0:
            ov[i - 1] = starts[i - 1] + seq_len - starts[i]
        if i < len(ov):
            ov[i] = starts[i] + seq_len - starts[i + 1]
    return starts, masks


def _merge_sorted(starts: list[int], masks: list[int], seq_len: int, merge_overlap: int,
                  mode: str, chrom_len: int | None) -> tuple[list[int], list[int]]:
    """Windows of one chromosome and strand, sorted by start."""
    out_s: list[int] = []
    out_m: list[int] = []
    i, n = 0, len(starts)
    while i < n:
        j = i + 1
        # All windows have the same length, so the open cluster ends at its last window's end.
        while j < n and starts[j - 1] + seq_len - merge_overlap > starts[j]:
            j += 1
        s, m = _merge_cluster(starts[i:j], masks[i:j], seq_len, merge_overlap, mode, chrom_len)
        out_s.extend(s)
        out_m.extend(m)
        i = j
    return out_s, out_m


def merge_windows(starts: Sequence[int], tasks: Sequence[int], seq_len: int,
                  merge_overlap: int = 200, mode: str = "basset",
                  chrom_len: int | None = None) -> list[tuple[int, frozenset[int]]]:
    """Merge the windows of one chromosome and strand; `tasks[i]` is the sample of window i.
    Returns (window start, set of active tasks) sorted by start."""
    _check_choice("merge_mode", mode, MERGE_MODES)
    order = sorted(range(len(starts)), key=lambda k: (starts[k], tasks[k]))
    s, m = _merge_sorted([int(starts[k]) for k in order], [1 << int(tasks[k]) for k in order],
                         seq_len, merge_overlap, mode, chrom_len)
    return [(a, frozenset(_bits(b))) for a, b in zip(s, m)]


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


@dataclass
class MergedPeaks:
    chrom_names: list[str]
    chrom: np.ndarray     # int32 [N], index into chrom_names
    start: np.ndarray     # int64 [N]
    strand: np.ndarray    # int8 [N], 0 '+', 1 '-'
    activity: np.ndarray  # int8 [N, T], 1 = active in that sample

    def __len__(self) -> int:
        return len(self.start)

    def headers(self, seq_len: int, idx: np.ndarray | None = None) -> list[str]:
        """Basset's peak ids: chrom:start-end(strand)."""
        rows = range(len(self)) if idx is None else idx
        return [f"{self.chrom_names[self.chrom[r]]}:{self.start[r]}-{self.start[r] + seq_len}"
                f"({'-' if self.strand[r] else '+'})" for r in rows]


def merge_peaks(windows: Sequence[PeakWindows], chrom_lengths: Mapping[str, int], seq_len: int,
                merge_overlap: int = 200, mode: str = "basset") -> MergedPeaks:
    """windows[t] are task t's windows. Output in genomic order (FASTA chromosome order, start,
    strand)."""
    _check_choice("merge_mode", mode, MERGE_MODES)
    n_tasks = len(windows)
    chrom = np.concatenate([w.chrom for w in windows]) if windows else np.zeros(0, np.int32)
    strand = np.concatenate([w.strand for w in windows]) if windows else np.zeros(0, np.int8)
    start = np.concatenate([w.start for w in windows]) if windows else np.zeros(0, np.int64)
    task = np.concatenate([np.full(len(w), t, np.int64) for t, w in enumerate(windows)]) \
        if windows else np.zeros(0, np.int64)
    order = np.lexsort((task, start, strand, chrom))
    chrom, strand, start, task = chrom[order], strand[order], start[order], task[order]
    lengths = list(chrom_lengths.values())
    bounds = np.flatnonzero(np.diff(chrom.astype(np.int64) * 2 + strand)) + 1
    out_c, out_st, out_s, out_m = [], [], [], []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(start)]):
        if lo == hi:
            continue
        ci, sd = int(chrom[lo]), int(strand[lo])
        s, m = _merge_sorted(start[lo:hi].tolist(), [1 << t for t in task[lo:hi].tolist()],
                             seq_len, merge_overlap, mode, lengths[ci])
        out_c.extend([ci] * len(s))
        out_st.extend([sd] * len(s))
        out_s.extend(s)
        out_m.extend(m)
    c = np.asarray(out_c, dtype=np.int32)
    st = np.asarray(out_st, dtype=np.int8)
    s = np.asarray(out_s, dtype=np.int64)
    final = np.lexsort((st, s, c))
    activity = np.zeros((len(s), n_tasks), dtype=np.int8)
    for row, k in enumerate(final.tolist()):
        for t in _bits(out_m[k]):
            activity[row, t] = 1
    return MergedPeaks(list(chrom_lengths), c[final], s[final], st[final], activity)


# ----------------------------------------------------------------------------- splits

@dataclass(frozen=True)
class SplitPlan:
    valid_chroms: tuple[str, ...] = ()
    test_chroms: tuple[str, ...] = ()
    valid_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0

    def describe(self, split: str) -> str:
        chroms = self.valid_chroms if split == "valid" else self.test_chroms
        frac = self.valid_frac if split == "valid" else self.test_frac
        return f"chromosomes {','.join(chroms)}" if chroms else f"random {frac:g} (seed {self.seed})"


def assign_splits(peaks: MergedPeaks, plan: SplitPlan) -> dict[str, np.ndarray]:
    """Sorted row indices per split. Windows on `valid_chroms`/`test_chroms` go to that split; a
    split without chromosomes draws its fraction at random (seeded) from the windows left over,
    which stay in genomic order; the rest is train. Every split must be non-empty."""
    names = peaks.chrom_names
    held = {}
    for split, chroms in (("valid", plan.valid_chroms), ("test", plan.test_chroms)):
        ids = [names.index(c) for c in chroms]
        held[split] = np.flatnonzero(np.isin(peaks.chrom, ids)) if ids else None
    taken = np.zeros(len(peaks), dtype=bool)
    for idx in held.values():
        if idx is not None:
            taken[idx] = True
    pool = np.flatnonzero(~taken)
    rng = np.random.default_rng(plan.seed)
    perm = pool[rng.permutation(len(pool))]
    out: dict[str, np.ndarray] = {}
    used = 0
    for split, frac in (("valid", plan.valid_frac), ("test", plan.test_frac)):
        if held[split] is not None:
            out[split] = held[split]
        else:
            n = int(np.floor(frac * len(pool) + 0.5))
            out[split] = np.sort(perm[used:used + n])
            used += n
    out["train"] = np.sort(perm[used:])
    for split in ("train", "valid", "test"):
        if len(out[split]) == 0:
            if split == "train":
                why = "every merged peak went to valid or test"
            elif held[split] is not None:
                why = f"no merged peak lies on {plan.describe(split)}"
            else:
                frac = plan.valid_frac if split == "valid" else plan.test_frac
                why = f"{split}_frac={frac:g} of {len(pool)} peaks rounds to 0"
            raise DataError(f"split {split!r} would be empty: {why}; choose other split chromosomes or fractions")
    return {s: out[s] for s in ("train", "valid", "test")}


# ----------------------------------------------------------------------------- sequences

def fasta_index_path(path: Path) -> Path:
    """Where the FASTA's .fai is read from: the user's own index beside it when one is there and
    current, else one in mtlsweep's cache (``$MTLSWEEP_CACHE``, default ``~/.cache/mtlsweep``), so
    that a build writes nothing next to a user's genome."""
    own = path.with_name(path.name + ".fai")
    if own.is_file() and own.stat().st_mtime >= path.stat().st_mtime:
        return own
    cache = Path(os.environ.get("MTLSWEEP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache")
                 / "mtlsweep").expanduser()
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return cache / "fai" / f"{key}-{path.name}.fai"


def open_fasta(path: str | os.PathLike):
    """pyfaidx.Fasta over ``path``, its index at `fasta_index_path`; errors become DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FASTA {path}: file not found")
    index = fasta_index_path(path)
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        return pyfaidx.Fasta(str(path), indexname=str(index), gzi_indexname=str(index.with_suffix(".gzi")),
                             as_raw=True, sequence_always_upper=True)
    except Exception as e:  # pyfaidx raises plain Exception subclasses for bad files
        msg = " ".join(str(e).split())
        raise DataError(f"FASTA {path}: cannot index ({type(e).__name__}: {msg})") from None


def fasta_lengths(fa) -> dict[str, int]:
    return {name: int(fa.faidx.index[name].rlen) for name in fa.keys()}


class ChromCodes:
    """A chromosome's uint8 codes from the FASTA, the last one kept (builds walk the genome in order)."""

    def __init__(self, fa):
        self._fa = fa
        self._name: str | None = None
        self._codes: np.ndarray | None = None

    def __call__(self, name: str) -> np.ndarray:
        if name != self._name:
            self._codes = None  # free the previous chromosome before reading the next
            try:
                self._codes = seq_to_codes(self._fa[name][:])
            except UnicodeEncodeError:
                raise DataError(f"FASTA sequence {name!r}: non-ASCII characters; allowed IUPAC letters") from None
            self._name = name
        return self._codes


def cut_codes(chrom_codes: np.ndarray, starts: np.ndarray, strand: np.ndarray, seq_len: int) -> np.ndarray:
    """uint8 codes [n, seq_len] of one chromosome's windows; '-' windows reverse-complemented."""
    codes = chrom_codes[starts[:, None] + np.arange(seq_len, dtype=np.int64)]
    minus = np.flatnonzero(strand == 1)
    if len(minus):
        codes[minus] = reverse_complement_codes(codes[minus])
    return codes


def _bar(items, desc: str, unit: str):
    """A progress bar on a terminal (nothing on a file or pipe); a Basset-size build reads 164 BED
    files and cuts ~2M windows from 24 chromosomes."""
    return tqdm(items, desc=desc, unit=unit, leave=False, disable=None, mininterval=0.5)


def extract_codes(fa, peaks: MergedPeaks, seq_len: int) -> np.ndarray:
    """uint8 codes [N, seq_len]; windows on '-' are reverse-complemented (bedtools getfasta -s)."""
    codes = np.empty((len(peaks), seq_len), dtype=np.uint8)
    load = fa if isinstance(fa, ChromCodes) else ChromCodes(fa)
    for ci in _bar(np.unique(peaks.chrom).tolist(), "cutting sequences", "chrom"):
        rows = np.flatnonzero(peaks.chrom == ci)
        codes[rows] = cut_codes(load(peaks.chrom_names[ci]), peaks.start[rows], peaks.strand[rows], seq_len)
    return codes


# ----------------------------------------------------------------------------- build

@dataclass
class BuildResult:
    basset_path: Path
    store_path: Path
    report_path: Path
    report: dict


def _check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise DataError(f"--{name.replace('_', '-')} {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _check_args(seq_len, merge_overlap, merge_mode, on_error, on_outside, layout, plan: SplitPlan):
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise DataError(f"--length {seq_len!r} is not allowed; it must be a positive integer")
    if isinstance(merge_overlap, bool) or not isinstance(merge_overlap, (int, np.integer)) \
            or not 0 <= merge_overlap <= seq_len:
        raise DataError(f"--merge-overlap {merge_overlap!r} is not allowed with --length {seq_len}; it must be an "
                        f"integer in 0..{seq_len} ({seq_len} itself disables merging; unset, it is {seq_len // 3})")
    _check_choice("merge_mode", merge_mode, MERGE_MODES)
    _check_choice("on_error", on_error, ON_ERROR)
    _check_choice("on_outside", on_outside, ON_ERROR)
    _check_choice("layout", layout, LAYOUTS)
    for name in ("valid_frac", "test_frac"):
        v = getattr(plan, name)
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise DataError(f"--{name.replace('_', '-')} {v!r} is not allowed; it must be in [0, 1)")
    if plan.valid_frac * (not plan.valid_chroms) + plan.test_frac * (not plan.test_chroms) >= 1:
        raise DataError(f"--valid-frac + --test-frac = {plan.valid_frac + plan.test_frac:g} is not "
                        f"allowed; it must be below 1 to leave training data")
    both = set(plan.valid_chroms) & set(plan.test_chroms)
    if both:
        raise DataError(f"chromosome(s) {', '.join(sorted(both))} are in both --valid-chroms and "
                        f"--test-chroms; a chromosome can be held out for one split only")


def _check_chroms(plan: SplitPlan, lengths: Mapping[str, int], fasta: Path) -> None:
    for opt, chroms in (("--valid-chroms", plan.valid_chroms), ("--test-chroms", plan.test_chroms)):
        for c in chroms:
            if c not in lengths:
                some = ", ".join(list(lengths)[:8]) + (", ..." if len(lengths) > 8 else "")
                raise DataError(f"{opt}: chromosome {c!r} is not in FASTA {fasta} (has {some})")


def build_from_peaks(sample_sheet: str | os.PathLike, fasta: str | os.PathLike,
                     out_dir: str | os.PathLike, *, seq_len: int = 600, merge_overlap: Optional[int] = None,
                     merge_mode: str = "basset", valid_chroms: Sequence[str] = (),
                     test_chroms: Sequence[str] = (), valid_frac: float = 0.1,
                     test_frac: float = 0.1, seed: int = 0, on_error: str = "fail",
                     on_outside: str = "skip", layout: str = "N41L",
                     overwrite: bool = False, negatives: str = "peaks", negative_ratio: float = 1.0,
                     max_n_fraction: float = 0.1, flank_distance: Optional[int] = None,
                     min_negatives: float = 0.9, tracks: Sequence[TrackSpec] = (),
                     track_transform: Optional[str] = None, track_resolution: int = 1) -> BuildResult:
    """Sample sheet + FASTA -> out_dir/basset.h5, out_dir/store.h5, out_dir/build_report.json.

    Everything is read and checked before anything is written; the three files are written to
    temporary names in out_dir and renamed together at the end.
    """
    plan = SplitPlan(tuple(valid_chroms), tuple(test_chroms), valid_frac, test_frac, seed)
    if merge_overlap is None and isinstance(seq_len, (int, np.integer)) and not isinstance(seq_len, bool):
        merge_overlap = seq_len // 3        # Basset's 200 bp at 600 bp, scaled with the length
    _check_args(seq_len, merge_overlap, merge_mode, on_error, on_outside, layout, plan)
    check_negatives(negatives, negative_ratio, max_n_fraction, flank_distance, seq_len, min_negatives)
    transforms = parse_transforms(track_transform)
    check_tracks(tracks)
    out_dir = Path(out_dir)
    targets = {k: out_dir / v for k, v in OUTPUT_NAMES.items()}
    check_outputs(out_dir, targets.values(), overwrite)

    entries = read_sample_sheet(sample_sheet)
    fasta = Path(fasta)
    fa = open_fasta(fasta)
    track_set = None
    try:
        lengths = fasta_lengths(fa)
        _check_chroms(plan, lengths, fasta)
        if tracks:
            track_set = TrackSet(tracks, transforms, track_resolution, seq_len, list(lengths))
        windows, files = [], []
        for entry in _bar(entries, "reading peak files", "file"):
            w, rep = read_peaks(entry.path, lengths, seq_len, task=entry.name, on_error=on_error,
                                on_outside=on_outside, fasta_name=f"FASTA {fasta.name}")
            if rep.kept == 0:
                raise DataError(f"{entry.path}: none of the {rep.peaks_read} peaks of task "
                                f"{entry.name!r} is usable ({_skip_text(rep.skipped)}); "
                                f"check the genome build and chromosome names")
            windows.append(w)
            files.append(rep)
        merged = merge_peaks(windows, lengths, seq_len, merge_overlap, merge_mode)
        load = ChromCodes(fa)
        neg_report = {"method": "peaks"}
        if negatives != "peaks":
            merged, neg_report = _add_negatives(merged, windows, lengths, load, seq_len, negatives,
                                                negative_ratio, max_n_fraction, flank_distance, seed)
            found, asked = neg_report["obtained"], neg_report["requested"]
            if asked and found < min_negatives * asked:
                raise DataError(f"--negatives {negatives}: {found} of the {asked} negatives requested were found "
                                f"(--min-negatives {min_negatives:g} asks for at least {min_negatives * asked:.0f}); "
                                f"lower --negative-ratio or --max-n-fraction, or pass --min-negatives "
                                f"{found / asked:.2f} to accept them")
        split_idx = assign_splits(merged, plan)
        codes = extract_codes(load, merged, seq_len)
        if negatives != "peaks":
            neg_report.update(gc_summary(*_gc_of(codes, merged)))
        track_values = None
        if track_set is not None:
            track_values = extract_tracks(track_set, merged.chrom_names, merged.chrom, merged.start,
                                          merged.strand, split_idx["train"])
    finally:
        fa.close()
        if track_set is not None:
            track_set.close()

    task_names = [e.name for e in entries]
    report = _make_report(Path(sample_sheet), fasta, seq_len, merge_overlap, merge_mode, plan,
                          files, windows, merged, split_idx, task_names, targets)
    report["negatives"] = neg_report
    if neg_report.get("requested") and neg_report["obtained"] < neg_report["requested"]:
        report["warnings"].append(f"--negatives {negatives}: {neg_report['obtained']} of {neg_report['requested']} "
                                  f"negatives found (see negatives in {targets['report'].name})")
    if track_set is not None:
        report["tracks"] = track_set.report()
        report["warnings"].extend(track_set.warnings())
    _write_outputs(out_dir, targets, task_names, merged, codes, split_idx, seq_len, layout,
                   report, overwrite, track_values, track_set)
    return BuildResult(targets["basset"], targets["store"], targets["report"], report)


def check_outputs(out_dir: Path, targets, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output directory {out_dir} is a file; give a directory")
    if not overwrite:
        for p in targets:
            if p.exists():
                raise DataError(f"{p} exists; pass --force to replace it")


def _gc_of(codes: np.ndarray, merged: MergedPeaks) -> tuple[np.ndarray, np.ndarray]:
    pos = merged.activity.any(axis=1)
    gc = gc_and_n(codes)[0]
    return gc[pos], gc[~pos]


def _add_negatives(merged: MergedPeaks, windows, lengths, load, seq_len, kind, ratio, max_n, distance, seed):
    """The positives plus sampled negatives (all-zero activity), in genomic order."""
    chrom = np.concatenate([np.concatenate([w.chrom for w in windows]), merged.chrom])
    starts = np.concatenate([np.concatenate([w.peak_start for w in windows]), merged.start])
    ends = np.concatenate([np.concatenate([w.peak_end for w in windows]), merged.start + seq_len])
    blocked = Blocked.from_intervals(chrom, starts, ends)
    if kind == "background":
        pos_gc = gc_and_n(extract_codes(load, merged, seq_len))[0]
        nc, ns, rep = sample_background(load, lengths, blocked, pos_gc, seq_len, ratio, max_n, seed)
    else:
        nc, ns, rep = sample_flanks(lengths, blocked, merged.chrom, merged.start, seq_len,
                                    distance if distance is not None else seq_len, ratio, seed, load, max_n)
    c = np.concatenate([merged.chrom, nc])
    s = np.concatenate([merged.start, ns])
    st = np.concatenate([merged.strand, np.zeros(len(ns), np.int8)])
    act = np.concatenate([merged.activity, np.zeros((len(ns), merged.activity.shape[1]), np.int8)])
    order = np.lexsort((st, s, c))
    return MergedPeaks(merged.chrom_names, c[order], s[order], st[order], act[order]), rep


def _skip_text(skipped: Mapping[str, int]) -> str:
    parts = [f"{k} {v}" for k, v in skipped.items() if v]
    return ", ".join(parts) if parts else "none skipped"


# Past this many peak windows per merged sequence, a build warns: most peaks lost their own sequence.
MERGE_WARN_RATIO = 2.0


def _make_report(sheet, fasta, seq_len, merge_overlap, merge_mode, plan, files, windows, merged,
                 split_idx, task_names, targets) -> dict:
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    unknown: dict[str, int] = {}
    for f in files:
        for k, v in f.skipped.items():
            skipped[k] += v
        for k, v in f.unknown_chroms.items():
            unknown[k] = unknown.get(k, 0) + v
    warnings = []
    kept = sum(len(w) for w in windows)
    ratio = kept / max(len(merged), 1)
    if ratio > MERGE_WARN_RATIO:
        warnings.append(f"merging joined {kept} windows into {len(merged)} sequences ({ratio:.1f} per sequence): "
                        f"the peaks lie denser than --length {seq_len}; a smaller --length or a larger "
                        f"--merge-overlap (at most {seq_len}, which disables merging) keeps more of them apart")
    splits = {}
    for split, idx in split_idx.items():
        pos = merged.activity[idx].sum(axis=0).astype(int).tolist()
        splits[split] = {"n": int(len(idx)), "method": "rest" if split == "train" else plan.describe(split),
                         "positives": dict(zip(task_names, pos))}
        for t, p in zip(task_names, pos):
            if p == 0:
                warnings.append(f"task {t!r} has no active sequence in split {split!r}")
    return {
        "sample_sheet": str(sheet),
        "fasta": str(fasta),
        "fasta_index": str(fasta_index_path(fasta)),
        "seq_len": seq_len,
        "merge_overlap": merge_overlap,
        "merge_mode": merge_mode,
        "split": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(plan).items()},
        "tasks": task_names,
        "files": [asdict(f) for f in files],
        "peaks_read": sum(f.peaks_read for f in files),
        "windows_kept": kept,
        "merge_ratio": round(ratio, 3),
        "skipped": skipped,
        "unknown_chroms": dict(sorted(unknown.items())),
        "merged": len(merged),
        "activity": dict(zip(task_names, merged.activity.sum(axis=0).astype(int).tolist())),
        "splits": splits,
        "warnings": warnings,
        "outputs": {k: str(v) for k, v in targets.items()},
    }


def _write_outputs(out_dir, targets, task_names, merged, codes, split_idx, seq_len, layout,
                   report, overwrite, track_values=None, track_set=None) -> None:
    headers = {s: merged.headers(seq_len, idx) for s, idx in split_idx.items()}
    arrays = {s: (codes[idx], merged.activity[idx]) for s, idx in split_idx.items()}
    tracks = {s: track_values[idx] for s, idx in split_idx.items()} if track_values is not None else None
    track_names = track_set.names if track_set is not None else []
    track_info = track_set.info() if track_set is not None else []
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    ok = False
    try:
        tmp = {k: tmp_dir / v.name for k, v in targets.items()}
        write_basset(tmp["basset"], task_names, arrays, test_headers=headers["test"], layout=layout,
                     tracks=tracks, track_names=track_names or None, track_info=track_info)
        store = Store.from_arrays(task_names, {s: SplitArrays(c, y, tracks[s] if tracks else None, headers[s])
                                               for s, (c, y) in arrays.items()}, track_names=track_names,
                                  track_info=track_info)
        store.save(tmp["store"])
        report["fingerprint"] = store.fingerprint
        tmp["report"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
        for k in ("basset", "store", "report"):
            if not overwrite and targets[k].exists():
                raise DataError(f"{targets[k]} appeared while building; pass --force to replace it")
        for k in ("basset", "store", "report"):
            os.replace(tmp[k], targets[k])
        ok = True
    finally:
        for p in tmp_dir.iterdir():
            p.unlink()
        tmp_dir.rmdir()
        if created and not ok:
            out_dir.rmdir()


def format_extras(report: Mapping) -> list[str]:
    """The negatives and tracks lines of a build's summary (peaks and labels builds alike)."""
    lines = []
    neg = report.get("negatives") or {}
    if neg.get("method", "peaks") not in ("peaks", "labels"):
        lines.append(f"negatives: {neg['method']}, {neg['obtained']} of {neg['requested']} requested (seed {neg['seed']}, "
                     f"ratio {neg['ratio']:g}); GC positives {neg.get('positives_gc_mean')} vs negatives "
                     f"{neg.get('negatives_gc_mean')}, largest GC-bin difference {neg.get('max_gc_bin_difference')}")
    for t in report.get("tracks") or []:
        stats = "" if t["train_mean"] is None else f", train mean {t['train_mean']:.4g} sd {t['train_std']:.4g}"
        lines.append(f"track {t['name']}: {t['source']} ({t['format']}), transform {t['transform']}, resolution "
                     f"{t['resolution']} bp, {100 * t['missing_fraction']:.2f}% of bases without coverage{stats}")
    return lines


def format_report(report: Mapping) -> str:
    """The printed summary of a build (`mtlsweep data build`)."""
    lines = [f"read {report['peaks_read']} peaks from {len(report['files'])} files; kept "
             f"{report['windows_kept']} windows of {report['seq_len']} bp; skipped: "
             f"{_skip_text(report['skipped'])}"]
    for f in report["files"]:
        lines.append(f"  {f['task']}: {f['path']} ({f['format']}) {f['peaks_read']} read, "
                     f"{f['kept']} kept, skipped: {_skip_text(f['skipped'])}")
        lines.extend(f"    {ex}" for ex in f["examples"][:3])
    if report["unknown_chroms"]:
        lines.append("  unknown chromosomes: " + ", ".join(
            f"{k} ({v})" for k, v in list(report["unknown_chroms"].items())[:10]))
    lines.append(f"merged into {report['merged']} sequences ({report.get('merge_ratio', 0):.2f} windows each; "
                 f"overlap >= {report['merge_overlap']} bp, {report['merge_mode']} merge)")
    lines.append("splits: " + ", ".join(f"{s} {v['n']} ({v['method']})" for s, v in report["splits"].items()))
    lines.append("active per task: " + ", ".join(f"{t} {n}" for t, n in report["activity"].items()))
    lines.extend(format_extras(report))
    lines.extend(f"mtlsweep: warning: {w}" for w in report["warnings"])
    lines.append("wrote " + ", ".join(report["outputs"].values()))
    return "\n".join(lines)
