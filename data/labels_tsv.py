"""Label matrices in the ENCODE-DREAM layout -> a store, streamed in bounded memory.

The file (plain or gzip) has a header ``chr start stop TASK1 TASK2 ...`` and one row per window;
values are U/A/B (unbound, ambiguous, bound) or 0/1/NA, mapped by `label_map` to 0/1/-1 (-1 =
unknown: masked out of the loss and the metrics). Every window is resized to `seq_len` around
its centre. Rows on `valid_chroms`/`test_chroms` go to those splits; a split without chromosomes
takes a seeded random fraction of the other rows, drawn per row from a hash of its line number
(so the split does not depend on the chunking).

Two passes over the file: the first checks every row, counts the splits and (for ``zscore``)
the tracks' train statistics; only then is the store allocated, and the second pass fills it
chunk by chunk. Memory is one chunk of rows plus one chromosome's codes, whatever the file's
length. The store appears atomically; the build report beside it.
"""
from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mtlsweep.data.basset_hdf5 import DEFAULT_LABEL_MAP, SPLITS, atomic_h5_file
from mtlsweep.data.errors import DataError
from mtlsweep.data.peaks import (
    SKIP_REASONS,
    ChromCodes,
    SplitPlan,
    _check_args,
    _check_chroms,
    _skip_text,
    check_outputs,
    cut_codes,
    fasta_index_path,
    fasta_lengths,
    format_extras,
    open_fasta,
)
from mtlsweep.data.signal import TrackSet, TrackSpec, check_tracks, parse_transforms
from mtlsweep.data.store import _Fingerprint, _StoreWriter

OUTPUTS = {"store": "store.h5", "report": "build_report.json"}
# Besides U/A/B, the numeric spelling of the same matrix.
NUMERIC_LABELS = {"0": 0, "1": 1, "-1": -1, "NA": -1, "na": -1, "NaN": -1, "nan": -1, ".": -1}
CHUNK_ROWS = 1 << 16
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}


def _label_table(label_map: Optional[Mapping]) -> dict[str, int]:
    table = dict(NUMERIC_LABELS)
    table.update(DEFAULT_LABEL_MAP if label_map is None else {str(k): v for k, v in label_map.items()})
    for k, v in table.items():
        if v not in (0, 1, -1) or isinstance(v, bool):
            raise DataError(f"--label-map: {k!r} -> {v!r}; allowed values 0, 1, -1 (unknown)")
    return table


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_text(path: Path):
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_header(path: Path) -> list[str]:
    """The task names of a labels file (its header after chr, start, stop)."""
    if not path.is_file():
        raise DataError(f"--labels {path}: file not found")
    try:
        with _open_text(path) as fh:
            line = fh.readline().rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"--labels {path}: cannot read ({type(e).__name__}: {e})") from None
    if not line.strip():
        what = "is empty" if path.stat().st_size == 0 else "has an empty first line"
        raise DataError(f"--labels {path}: {what}; expected a header chr<TAB>start<TAB>stop<TAB>TASK... and "
                        "one row per window (the ENCODE-DREAM layout)")
    cols = line.split("\t")
    if len(cols) < 4:
        raise DataError(f"--labels {path}: header has {len(cols)} tab-separated column(s); expected "
                        f"chr, start, stop and one column per task (the ENCODE-DREAM layout)")
    if cols[1].strip().isdigit():
        raise DataError(f"--labels {path}: the first line is a data row; the file needs a header "
                        f"chr<TAB>start<TAB>stop<TAB>TASK...")
    tasks = [c.strip() for c in cols[3:]]
    for i, t in enumerate(tasks):
        if not t:
            raise DataError(f"--labels {path}: header column {i + 4} (a task) is empty")
        if t in tasks[:i]:
            raise DataError(f"--labels {path}: task {t!r} is in the header twice; task names must be unique")
    return tasks


def _uniform(rows: np.ndarray, seed: int) -> np.ndarray:
    """A reproducible uniform [0, 1) per row index (splitmix64 of seed and row)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class _Rows:
    """The usable rows of one chunk."""
    chrom: np.ndarray    # object array of chromosome names
    start: np.ndarray    # int64 window start (resized)
    labels: np.ndarray   # int8 [n, T]
    split: np.ndarray    # int8, _SPLIT_CODE


class _Parser:
    def __init__(self, path: Path, tasks: list[str], table: dict[str, int], lengths: Mapping[str, int],
                 seq_len: Optional[int], plan: SplitPlan, on_error: str, on_outside: str):
        self.path, self.tasks, self.table, self.lengths = path, tasks, table, dict(lengths)
        self.seq_len, self.plan = seq_len, plan
        self.on_error, self.on_outside = on_error, on_outside
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.unknown_chroms: dict[str, int] = {}
        self.examples: list[str] = []
        self.rows_read = 0
        self.values: list[dict[str, int]] = [{} for _ in tasks]
        self._held = {c: 1 for c in plan.valid_chroms} | {c: 2 for c in plan.test_chroms}

    def chunks(self, chunk_rows: int):
        try:
            reader = pd.read_csv(self.path, sep="\t", header=0, dtype=str, na_filter=False, chunksize=chunk_rows,
                                 compression="gzip" if _is_gzip(self.path) else None, engine="c")
            line = 2
            for df in reader:
                yield line, df
                line += len(df)
        except pd.errors.ParserError as e:
            raise DataError(f"--labels {self.path}: {' '.join(str(e).split())} (every row needs "
                            f"{3 + len(self.tasks)} tab-separated columns, as the header)") from None
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"--labels {self.path}: cannot read ({type(e).__name__}: {e})") from None

    def _skip(self, reason: str, lines: np.ndarray, why: str) -> None:
        if not len(lines):
            return
        if (self.on_error if reason == "malformed" else self.on_outside) == "fail":
            hint = "--on-error skip" if reason == "malformed" else "--on-outside skip"
            raise DataError(f"{self.path}:{int(lines[0])}: {why} (pass {hint} to skip and count such rows)")
        self.skipped[reason] += len(lines)
        if len(self.examples) < 10:
            self.examples.append(f"{self.path.name}:{int(lines[0])}: {reason}: {why}")

    def parse(self, first_line: int, df, count: bool) -> _Rows:
        n = len(df)
        if count:
            self.rows_read += n
        lines = np.arange(first_line, first_line + n)
        cols = list(df.columns)
        chrom = df[cols[0]].to_numpy(dtype=object)
        s_txt, e_txt = df[cols[1]].to_numpy(dtype=object), df[cols[2]].to_numpy(dtype=object)
        ok = np.array([a.isdigit() and b.isdigit() for a, b in zip(s_txt, e_txt)], dtype=bool)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            self._skip("malformed", lines[~ok] if count else lines[:0],
                       f"start {s_txt[bad]!r} / stop {e_txt[bad]!r} are not non-negative integers")
        start = np.zeros(n, dtype=np.int64)
        stop = np.zeros(n, dtype=np.int64)
        start[ok] = np.array(s_txt[ok], dtype=np.int64)
        stop[ok] = np.array(e_txt[ok], dtype=np.int64)
        bad_order = ok & (stop <= start)
        if bad_order.any():
            i = int(np.flatnonzero(bad_order)[0])
            self._skip("malformed", lines[bad_order] if count else lines[:0],
                       f"start {start[i]} >= stop {stop[i]}; a window needs start < stop")
            ok &= ~bad_order
        if self.seq_len is None and ok.any():
            i = int(np.flatnonzero(ok)[0])
            self.seq_len = int(stop[i] - start[i])
        labels = np.empty((n, len(self.tasks)), dtype=np.int8)
        for t, name in enumerate(self.tasks):
            v = df[cols[3 + t]].to_numpy(dtype=object)
            mapped = np.fromiter((self.table.get(x, 9) for x in v), dtype=np.int8, count=n)
            wrong = ok & (mapped == 9)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                allowed = ", ".join(sorted({k for k in self.table if k}))
                what = "is empty (a missing column?)" if v[i] == "" else f"has label {v[i]!r}"
                self._skip("malformed", lines[wrong] if count else lines[:0],
                           f"task {name!r} {what}; allowed: {allowed} (or --label-map)")
                ok &= ~wrong
            labels[:, t] = mapped
            if count:
                for u, c in df[cols[3 + t]][ok].value_counts().items():
                    self.values[t][u] = self.values[t].get(u, 0) + int(c)
        known = np.array([c in self.lengths for c in chrom], dtype=bool)
        unknown = ok & ~known
        if unknown.any():
            if count:
                for c in chrom[unknown]:
                    self.unknown_chroms[c] = self.unknown_chroms.get(c, 0) + 1
            i = int(np.flatnonzero(unknown)[0])
            self._skip("unknown_chrom", lines[unknown] if count else lines[:0],
                       f"chromosome {chrom[i]!r} is not in the FASTA")
            ok &= known
        L = self.seq_len or 1
        ws = (start + stop) // 2 - L // 2
        clen = np.array([self.lengths.get(c, 0) for c in chrom], dtype=np.int64)
        off = ok & ((ws < 0) | (ws + L > clen))
        if off.any():
            i = int(np.flatnonzero(off)[0])
            self._skip("off_chrom_end", lines[off] if count else lines[:0],
                       f"{chrom[i]}:{start[i]}-{stop[i]} resized to [{ws[i]}, {ws[i] + L}) runs off the "
                       f"chromosome (length {clen[i]})")
            ok &= ~off
        split = np.array([self._held.get(c, 0) for c in chrom], dtype=np.int8)
        pool = split == 0
        u = _uniform(lines, self.plan.seed)
        vf = 0.0 if self.plan.valid_chroms else self.plan.valid_frac
        tf = 0.0 if self.plan.test_chroms else self.plan.test_frac
        split[pool & (u < vf)] = 1
        split[pool & (u >= vf) & (u < vf + tf)] = 2
        return _Rows(chrom[ok], ws[ok], labels[ok], split[ok])


def build_from_labels(labels: str | os.PathLike, fasta: str | os.PathLike, out_dir: str | os.PathLike, *,
                      seq_len: Optional[int] = None, valid_chroms: Sequence[str] = (),
                      test_chroms: Sequence[str] = (), valid_frac: float = 0.1, test_frac: float = 0.1,
                      seed: int = 0, on_error: str = "fail", on_outside: str = "skip",
                      label_map: Optional[Mapping] = None, tracks: Sequence[TrackSpec] = (),
                      track_transform: Optional[str] = None, track_resolution: int = 1,
                      overwrite: bool = False, chunk_rows: int = CHUNK_ROWS, progress: bool = True) -> dict:
    """labels TSV + FASTA (+ tracks) -> out_dir/store.h5 and out_dir/build_report.json; the report."""
    t0 = time.perf_counter()
    plan = SplitPlan(tuple(valid_chroms), tuple(test_chroms), valid_frac, test_frac, seed)
    # Peaks' checks of the shared flags; the length is checked once known when it comes from the rows.
    _check_args(seq_len if seq_len is not None else 1, 0, "basset", on_error, on_outside, "N41L", plan)
    transforms = parse_transforms(track_transform)
    check_tracks(tracks)
    table = _label_table(label_map)
    labels = Path(labels)
    tasks = read_header(labels)
    out_dir = Path(out_dir)
    targets = {k: out_dir / v for k, v in OUTPUTS.items()}
    check_outputs(out_dir, targets.values(), overwrite)
    fasta = Path(fasta)
    fa = open_fasta(fasta)
    track_set = None
    try:
        lengths = fasta_lengths(fa)
        _check_chroms(plan, lengths, fasta)
        parser = _Parser(labels, tasks, table, lengths, seq_len, plan, on_error, on_outside)
        bar = _bar(progress, None, "checking rows")
        counts = {s: 0 for s in SPLITS}
        pos = {s: np.zeros(len(tasks), np.int64) for s in SPLITS}
        known = {s: np.zeros(len(tasks), np.int64) for s in SPLITS}
        width = 1
        used: set[str] = set()
        # Pass 1: check every row and count; the tracks are opened once the length is known.
        for line, df in parser.chunks(chunk_rows):
            rows = parser.parse(line, df, count=True)
            used.update(np.unique(rows.chrom).tolist())
            for s, code in _SPLIT_CODE.items():
                m = rows.split == code
                counts[s] += int(m.sum())
                pos[s] += (rows.labels[m] == 1).sum(0)
                known[s] += (rows.labels[m] >= 0).sum(0)
            if len(rows.start):  # "chrom:start-end" is at most this many bytes
                width = max(width, max(len(c.encode()) for c in np.unique(rows.chrom)) + 2
                            + 2 * len(str(int(rows.start.max()) + parser.seq_len)))
            bar.update(len(df))
        bar.close()
        if parser.rows_read == 0:
            raise DataError(f"--labels {labels}: no data rows after the header")
        L = parser.seq_len
        if sum(counts.values()) == 0:
            raise DataError(f"--labels {labels}: none of the {parser.rows_read} rows is usable "
                            f"({_skip_text(parser.skipped)}); check the genome build and chromosome names")
        for s in SPLITS:
            if counts[s] == 0:
                raise DataError(f"split {s!r} would be empty ({plan.describe(s) if s != 'train' else 'the rest'}); "
                                f"choose other split chromosomes or fractions")
        if tracks:
            track_set = TrackSet(tracks, transforms, track_resolution, L, list(lengths))
            track_set.check_coverage(sorted(used))
            if track_set.needs_stats:
                bar = _bar(progress, parser.rows_read, "track statistics (train)")
                for line, df in parser.chunks(chunk_rows):
                    rows = parser.parse(line, df, count=False)
                    _by_chrom(rows, rows.split == 0, lambda c, idx: track_set.add_train_stats(
                        c, rows.start[idx], np.zeros(len(idx), np.int8)))
                    bar.update(len(df))
                bar.close()
                track_set.finish_stats()
        track_names = track_set.names if track_set else []
        # Pass 2: fill the store.
        load = ChromCodes(fa)
        fp = _Fingerprint(tasks, track_names, L)
        for s in SPLITS:
            fp.add_split(s, counts[s], None, streamed_headers=True)
        offset = dict.fromkeys(SPLITS, 0)
        out_dir.mkdir(parents=True, exist_ok=True)
        bar = _bar(progress, parser.rows_read, "writing store")
        with atomic_h5_file(targets["store"], overwrite) as f:
            w = _StoreWriter(f, tasks, track_names, L, {s: (counts[s], width) for s in SPLITS},
                             track_info=track_set.info() if track_set else None)
            for line, df in parser.chunks(chunk_rows):
                rows = parser.parse(line, df, count=False)
                n = len(rows.start)
                codes = np.empty((n, L), dtype=np.uint8)
                tv = np.empty((n, len(track_names), L), dtype=np.float16) if track_set else None

                def cut(c, idx):
                    strand = np.zeros(len(idx), np.int8)
                    codes[idx] = cut_codes(load(c), rows.start[idx], strand, L)
                    if track_set is not None:
                        tv[idx] = track_set.values(c, rows.start[idx], strand)
                _by_chrom(rows, np.ones(n, dtype=bool), cut)
                for s, code in _SPLIT_CODE.items():
                    idx = np.flatnonzero(rows.split == code)
                    if not len(idx):
                        continue
                    a, b = offset[s], offset[s] + len(idx)
                    c_dst, l_dst, t_dst = w.sinks[s]
                    heads = [f"{c}:{st}-{st + L}" for c, st in zip(rows.chrom[idx], rows.start[idx].tolist())]
                    c_dst[a:b] = codes[idx]
                    l_dst[a:b] = rows.labels[idx]
                    if t_dst is not None:
                        t_dst[a:b] = tv[idx]
                    w.header_sinks[s][a:b] = np.array([h.encode() for h in heads], dtype=f"S{width}")
                    fp.update(s, codes[idx], rows.labels[idx], tv[idx] if tv is not None else None)
                    fp.update_headers(s, heads)
                    offset[s] = b
                bar.update(len(df))
            fingerprint = fp.hexdigest()
            w.finish(fingerprint)
        bar.close()
    finally:
        fa.close()
        if track_set is not None:
            track_set.close()

    elapsed = time.perf_counter() - t0
    warnings = []
    splits = {}
    for s in SPLITS:
        splits[s] = {"n": counts[s], "method": "rest" if s == "train" else plan.describe(s),
                     "positives": dict(zip(tasks, pos[s].tolist())),
                     "unknown": dict(zip(tasks, (counts[s] - known[s]).tolist()))}
        for t, p in zip(tasks, pos[s].tolist()):
            if p == 0:
                warnings.append(f"task {t!r} has no bound window in split {s!r}")
    if track_set is not None:
        warnings.extend(track_set.warnings())
    report = {
        "labels": str(labels), "fasta": str(fasta), "fasta_index": str(fasta_index_path(fasta)),
        "seq_len": L, "split": {"valid_chroms": list(plan.valid_chroms), "test_chroms": list(plan.test_chroms),
                                "valid_frac": plan.valid_frac, "test_frac": plan.test_frac, "seed": plan.seed},
        "tasks": tasks, "label_map": table, "rows_read": parser.rows_read, "rows_kept": sum(counts.values()),
        "skipped": parser.skipped, "unknown_chroms": dict(sorted(parser.unknown_chroms.items())),
        "examples": parser.examples, "label_values": dict(zip(tasks, parser.values)), "splits": splits,
        "negatives": {"method": "labels"}, "tracks": track_set.report() if track_set else [],
        "seconds": round(elapsed, 2), "rows_per_s": round(parser.rows_read / elapsed, 1) if elapsed > 0 else None,
        "fingerprint": fingerprint, "warnings": warnings, "outputs": {k: str(v) for k, v in targets.items()},
    }
    tmp = targets["report"].with_name("." + targets["report"].name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, targets["report"])
    return report


def _by_chrom(rows: _Rows, mask: np.ndarray, fn) -> None:
    """fn(chrom name, row indices) per chromosome, in the order chromosomes first appear."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    names, first, inverse = np.unique(rows.chrom[idx], return_index=True, return_inverse=True)
    for k in np.argsort(first):
        fn(names[k], idx[inverse == k])


def _bar(progress: bool, total, desc: str):
    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, leave=False,
                disable=None if progress else True, mininterval=0.5)


def format_labels_report(report: Mapping) -> str:
    lines = [f"read {report['rows_read']} rows of {len(report['tasks'])} tasks from {report['labels']}; kept "
             f"{report['rows_kept']} windows of {report['seq_len']} bp; skipped: {_skip_text(report['skipped'])}"]
    lines.extend(f"  {ex}" for ex in report["examples"][:3])
    if report["unknown_chroms"]:
        lines.append("  unknown chromosomes: " + ", ".join(
            f"{k} ({v})" for k, v in list(report["unknown_chroms"].items())[:10]))
    lines.append("splits: " + ", ".join(f"{s} {v['n']} ({v['method']})" for s, v in report["splits"].items()))
    for t in report["tasks"][:10]:
        vals = ", ".join(f"{k or '(empty)'} {v}" for k, v in sorted(report["label_values"][t].items()))
        lines.append(f"  {t}: {vals}")
    if len(report["tasks"]) > 10:
        lines.append(f"  ... and {len(report['tasks']) - 10} more tasks (build_report.json: label_values)")
    lines.extend(format_extras(report))
    rate = f" ({report['rows_per_s']:,.0f} rows/s)" if report.get("rows_per_s") else ""
    lines.append(f"built in {report['seconds']:.1f} s{rate}")
    lines.extend(f"mtlsweep: warning: {w}" for w in report["warnings"])
    lines.append("wrote " + ", ".join(report["outputs"].values()))
    return "\n".join(lines)
