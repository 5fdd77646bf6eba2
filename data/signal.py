"""Signal tracks (DNase, ATAC, ...) from bigWig or bedGraph files, cut to the training windows.

`--track NAME=FILE` names a track; the file is a bigWig (read with pyBigWig, by its magic bytes)
or a bedGraph (``chrom start end value``, plain or gzip; loaded as sorted interval arrays, so use
bigWig for genome-wide signal). Per window the track gives one value per base, reversed with
the sequence for windows on '-'; bases without coverage and windows on a chromosome the track
does not have are 0 and counted in the build report. Optionally the values are averaged over
bins of `resolution` bp (each base keeps its bin's mean, so the store's layout stays N x C x L).

Transforms run in the order given: ``log1p``, ``clip=HI`` (to [-HI, HI]) or ``clip=LO:HI``, and
``zscore`` (per track, with mean and standard deviation over the bases of the train split
only, so nothing of valid or test leaks into training). The stored values are float16.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyBigWig

from mtlsweep.data.errors import DataError

TRANSFORMS = ("log1p", "zscore", "clip")
_BIGWIG_MAGIC = (0x888FFC26).to_bytes(4, "little")
# A span read of one chunk of windows on one chromosome is split where the windows lie further
# apart than this, so that scattered rows never read the chromosome between them.
_MAX_SPAN = 1 << 20
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class TrackSpec:
    name: str
    path: Path


def parse_track_arg(arg: str) -> TrackSpec:
    """``NAME=FILE`` (the --track flag)."""
    name, sep, path = arg.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise DataError(f"--track {arg!r}: expected NAME=FILE, e.g. --track dnase=K562.bigWig")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"--track {name}={path}: file not found")
    return TrackSpec(name, p)


def check_tracks(specs: Sequence[TrackSpec]) -> None:
    """Unique names and readable files, checked before any pass over the windows."""
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise DataError(f"--track {s.name}=...: track name {s.name!r} given twice; names must be unique")
        seen.add(s.name)
        _magic(s.path)


def parse_transforms(text: Optional[str]) -> list[tuple[str, tuple[float, float] | None]]:
    """``log1p,clip=5,zscore`` -> [("log1p", None), ("clip", (-5, 5)), ("zscore", None)]."""
    out: list[tuple[str, tuple[float, float] | None]] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, arg = part.partition("=")
        if name not in TRANSFORMS:
            raise DataError(f"--track-transform {part!r}: unknown transform; allowed: log1p, zscore, "
                            f"clip=HI or clip=LO:HI, comma-separated in the order to apply")
        if name == "clip":
            try:
                lo, hi = (float(v) for v in arg.split(":")) if ":" in arg else (-float(arg), float(arg))
            except ValueError:
                raise DataError(f"--track-transform {part!r}: clip needs a bound, clip=HI or clip=LO:HI") from None
            if not lo < hi:
                raise DataError(f"--track-transform {part!r}: clip needs LO < HI")
            out.append(("clip", (lo, hi)))
        elif arg:
            raise DataError(f"--track-transform {part!r}: {name} takes no value")
        else:
            out.append((name, None))
    if sum(n == "zscore" for n, _ in out) > 1:
        raise DataError("--track-transform: zscore given twice; allowed once")
    return out


def describe_transforms(transforms) -> str:
    return ",".join(n if a is None else f"clip={a[0]:g}:{a[1]:g}" for n, a in transforms) or "none"


# ----------------------------------------------------------------------------- files


class _BigWig:
    format = "bigWig"

    def __init__(self, path: Path):
        try:
            self._bw = pyBigWig.open(str(path))
        except RuntimeError:
            raise DataError(f"{path}: cannot open as bigWig (damaged or not a bigWig file)") from None
        if self._bw is None or not self._bw.isBigWig():
            raise DataError(f"{path}: not a bigWig file (a bigBed?); allowed: bigWig or bedGraph")
        self.chroms: dict[str, int] = dict(self._bw.chroms())

    def values(self, chrom: str, start: int, end: int) -> np.ndarray:
        n = self.chroms[chrom]
        out = np.full(end - start, np.nan, dtype=np.float32)
        a, b = max(start, 0), min(end, n)
        if a < b:
            out[a - start:b - start] = self._bw.values(chrom, a, b, numpy=True)
        return out

    def close(self) -> None:
        self._bw.close()


class _BedGraph:
    format = "bedGraph"

    def __init__(self, path: Path):
        per: dict[str, list] = {}
        opener = gzip.open if _magic(path)[:2] == b"\x1f\x8b" else open
        try:
            with opener(path, "rb") as fh:
                for lineno, raw in enumerate(fh, start=1):
                    if not raw.strip() or raw.startswith((b"#", b"track", b"browser")):
                        continue
                    f = raw.split()
                    try:
                        if len(f) < 4:
                            raise ValueError
                        s, e, v = int(f[1]), int(f[2]), float(f[3])
                    except ValueError:
                        raise DataError(f"{path}:{lineno}: expected chrom, start, end, value (a bedGraph "
                                        f"line), got {raw.decode('utf-8', 'replace').strip()[:60]!r}") from None
                    if s < 0 or e <= s:
                        raise DataError(f"{path}:{lineno}: start {s}, end {e}; a bedGraph needs 0 <= start < end")
                    per.setdefault(f[0].decode("utf-8", "replace"), []).append((s, e, v))
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot read bedGraph ({type(e).__name__}: {e})") from None
        if not per:
            raise DataError(f"{path}: no bedGraph lines (chrom start end value)")
        self._iv: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for chrom, rows in per.items():
            a = np.array(rows, dtype=np.float64)
            order = np.argsort(a[:, 0], kind="stable")
            a = a[order]
            starts, ends = a[:, 0].astype(np.int64), a[:, 1].astype(np.int64)
            if len(starts) > 1 and (starts[1:] < ends[:-1]).any():
                i = int(np.flatnonzero(starts[1:] < ends[:-1])[0])
                raise DataError(f"{path}: intervals {chrom}:{starts[i]}-{ends[i]} and {chrom}:{starts[i + 1]}-"
                                f"{ends[i + 1]} overlap; a bedGraph has one value per base")
            self._iv[chrom] = (starts, ends, a[:, 2].astype(np.float32))
        self.chroms = {c: int(v[1][-1]) for c, v in self._iv.items()}

    def values(self, chrom: str, start: int, end: int) -> np.ndarray:
        out = np.full(end - start, np.nan, dtype=np.float32)
        starts, ends, vals = self._iv[chrom]
        i = max(int(np.searchsorted(ends, start, side="right")), 0)
        j = int(np.searchsorted(starts, end, side="left"))
        for s, e, v in zip(starts[i:j].tolist(), ends[i:j].tolist(), vals[i:j].tolist()):
            out[max(s, start) - start:min(e, end) - start] = v
        return out

    def close(self) -> None:
        pass


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except FileNotFoundError:
        raise DataError(f"--track {path}: file not found") from None
    except OSError as e:
        raise DataError(f"--track {path}: cannot read ({e.strerror or e})") from None


def open_signal(path: Path):
    return _BigWig(path) if _magic(path) == _BIGWIG_MAGIC else _BedGraph(path)


def _other_name(chrom: str, names) -> Optional[str]:
    alt = chrom[3:] if chrom.startswith("chr") else "chr" + chrom
    if chrom in ("chrM", "MT"):
        alt = "MT" if chrom == "chrM" else "chrM"
    return alt if alt in names else None


# ----------------------------------------------------------------------------- extraction


@dataclass
class TrackReport:
    name: str
    path: str
    format: str = ""
    bases: int = 0
    missing_bases: int = 0                 # no coverage, or on a chromosome the file lacks
    chroms_missing: dict[str, int] = field(default_factory=dict)   # chrom -> windows
    name_mismatch: dict[str, str] = field(default_factory=dict)    # FASTA name -> the file's name
    train_mean: Optional[float] = None     # of the values before zscore (train split)
    train_std: Optional[float] = None

    @property
    def missing_fraction(self) -> float:
        return self.missing_bases / self.bases if self.bases else 0.0


class TrackSet:
    """The opened track files with their transforms; cuts [n, C, L] float16 blocks for windows."""

    def __init__(self, specs: Sequence[TrackSpec], transforms, resolution: int, seq_len: int,
                 fasta_chroms: Sequence[str]):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1 \
                or seq_len % resolution:
            raise DataError(f"--track-resolution {resolution!r} is not allowed with --length {seq_len}; "
                            f"it must be a positive divisor of the length")
        self.specs = list(specs)
        self.names = [s.name for s in specs]
        self.transforms = list(transforms)
        self.resolution = resolution
        self.seq_len = seq_len
        self.files = [open_signal(s.path) for s in specs]
        self.reports = [TrackReport(s.name, str(s.path), f.format) for s, f in zip(specs, self.files)]
        names = [n for n, _ in self.transforms]
        z = names.index("zscore") if "zscore" in names else None
        self._pre = self.transforms if z is None else self.transforms[:z]
        self._post = [] if z is None else self.transforms[z + 1:]
        self.needs_stats = z is not None
        self._sums = np.zeros((len(specs), 2), dtype=np.float64)
        self._count = 0
        self.mean = np.zeros(len(specs))
        self.std = np.ones(len(specs))
        for f, rep in zip(self.files, self.reports):
            for c in fasta_chroms:
                if c not in f.chroms:
                    alt = _other_name(c, f.chroms)
                    if alt:
                        rep.name_mismatch[c] = alt

    def check_coverage(self, used_chroms: Sequence[str]) -> None:
        """A track sharing no chromosome with the windows is a user error, not zeros."""
        for f, rep in zip(self.files, self.reports):
            if used_chroms and not any(c in f.chroms for c in used_chroms):
                have = ", ".join(list(f.chroms)[:6]) + (", ..." if len(f.chroms) > 6 else "")
                hint = ""
                mism = [c for c in used_chroms if c in rep.name_mismatch]
                if mism:
                    hint = (f"; the names differ (FASTA {mism[0]!r}, track {rep.name_mismatch[mism[0]]!r}): "
                            f"rename the chromosomes of one file")
                raise DataError(f"--track {rep.name}={rep.path}: none of the windows' chromosomes "
                                f"({', '.join(list(used_chroms)[:4])}) is in the file (has {have}){hint}")

    def close(self) -> None:
        for f in self.files:
            f.close()

    def _raw(self, c: int, chrom: str, starts: np.ndarray, count: bool) -> np.ndarray:
        """Per-base values [n, L] float32 (0 where missing) of track c for windows on chrom."""
        L, n = self.seq_len, len(starts)
        f, rep = self.files[c], self.reports[c]
        out = np.zeros((n, L), dtype=np.float32)
        if count:
            rep.bases += n * L
        if chrom not in f.chroms:
            if count:
                rep.missing_bases += n * L
                rep.chroms_missing[chrom] = rep.chroms_missing.get(chrom, 0) + n
            return out
        order = np.argsort(starts, kind="stable")
        s_sorted = starts[order]
        breaks = np.flatnonzero(np.diff(s_sorted) > _MAX_SPAN) + 1
        offs = np.arange(L)
        missing = 0
        for grp in np.split(np.arange(n), breaks):
            a, b = int(s_sorted[grp[0]]), int(s_sorted[grp[-1]]) + L
            span = f.values(chrom, a, b)
            block = span[(s_sorted[grp] - a)[:, None] + offs]
            nan = np.isnan(block)
            missing += int(nan.sum())
            block[nan] = 0.0
            out[order[grp]] = block
        if count:
            rep.missing_bases += missing
        return out

    def _pre_values(self, chrom: str, starts: np.ndarray, strand: np.ndarray, count: bool) -> np.ndarray:
        n, L, r = len(starts), self.seq_len, self.resolution
        x = np.empty((n, len(self.files), L), dtype=np.float32)
        for c in range(len(self.files)):
            v = self._raw(c, chrom, starts, count)
            if r > 1:
                v = np.repeat(v.reshape(n, L // r, r).mean(axis=2), r, axis=1)
            x[:, c] = v
        minus = strand == 1
        if minus.any():
            x[minus] = x[minus][:, :, ::-1]
        return _apply(x, self._pre)

    def add_train_stats(self, chrom: str, starts: np.ndarray, strand: np.ndarray) -> None:
        """Accumulate the train split's per-track mean and variance (before zscore)."""
        x = self._pre_values(chrom, starts, strand, count=False).astype(np.float64)
        self._sums[:, 0] += x.sum(axis=(0, 2))
        self._sums[:, 1] += (x * x).sum(axis=(0, 2))
        self._count += x.shape[0] * x.shape[2]

    def finish_stats(self) -> None:
        if self._count == 0:
            return
        mean = self._sums[:, 0] / self._count
        var = np.maximum(self._sums[:, 1] / self._count - mean ** 2, 0.0)
        self.mean, self.std = mean, np.sqrt(var)
        for c, rep in enumerate(self.reports):
            rep.train_mean, rep.train_std = float(mean[c]), float(self.std[c])

    def values(self, chrom: str, starts: np.ndarray, strand: np.ndarray) -> np.ndarray:
        """[n, C, L] float16, transformed; coverage counted in the reports."""
        x = self._pre_values(chrom, starts, strand, count=True)
        if self.needs_stats:
            std = np.where(self.std > 0, self.std, 1.0)
            x = (x - self.mean[None, :, None].astype(np.float32)) / std[None, :, None].astype(np.float32)
            x = _apply(x, self._post)
        np.clip(x, -FLOAT16_MAX, FLOAT16_MAX, out=x)
        return x.astype(np.float16)

    def info(self) -> list[dict]:
        """What the store keeps about each track (attribute ``track_info``)."""
        return [{"name": s.name, "source": str(s.path), "format": rep.format,
                 "transform": describe_transforms(self.transforms), "resolution": self.resolution,
                 "train_mean": rep.train_mean, "train_std": rep.train_std}
                for s, rep in zip(self.specs, self.reports)]

    def report(self) -> list[dict]:
        out = []
        for info, rep in zip(self.info(), self.reports):
            out.append({**info, "bases": rep.bases, "missing_bases": rep.missing_bases,
                        "missing_fraction": round(rep.missing_fraction, 6),
                        "chroms_missing": dict(sorted(rep.chroms_missing.items())),
                        "name_mismatch": rep.name_mismatch})
        return out

    def warnings(self) -> list[str]:
        out = []
        for rep in self.reports:
            if rep.chroms_missing:
                chroms = ", ".join(f"{c} ({n} windows)" for c, n in list(rep.chroms_missing.items())[:5])
                renamed = [f"{c}->{rep.name_mismatch[c]}" for c in rep.chroms_missing if c in rep.name_mismatch]
                out.append(f"track {rep.name!r}: chromosome(s) not in {Path(rep.path).name}: {chroms}; their "
                           f"values are 0" + (f" (named differently there: {', '.join(renamed[:3])})"
                                              if renamed else ""))
            if rep.missing_fraction > 0.5:
                out.append(f"track {rep.name!r}: {100 * rep.missing_fraction:.0f}% of the bases have no coverage "
                           f"(stored as 0)")
        return out


def _apply(x: np.ndarray, transforms) -> np.ndarray:
    for name, arg in transforms:
        if name == "log1p":
            if (x < 0).any():
                raise DataError(f"--track-transform log1p: the track has negative values (min {float(x.min()):g}); "
                                f"log1p needs values >= 0 (put clip=0:HI before it, or leave log1p out)")
            np.log1p(x, out=x)
        elif name == "clip":
            np.clip(x, arg[0], arg[1], out=x)
    return x


def extract_tracks(tracks: TrackSet, chrom_names: Sequence[str], chrom: np.ndarray, starts: np.ndarray,
                   strand: np.ndarray, train_rows: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """[N, C, L] float16 for in-memory windows (a peaks build); stats from `train_rows` only."""
    N = len(starts)
    out = np.empty((N, len(tracks.names), tracks.seq_len), dtype=np.float16)
    is_train = np.zeros(N, dtype=bool)
    is_train[train_rows] = True
    used = [chrom_names[i] for i in np.unique(chrom).tolist()]
    tracks.check_coverage(used)
    passes = (True, False) if tracks.needs_stats else (False,)
    for stats_pass in passes:
        for ci in np.unique(chrom).tolist():
            rows = np.flatnonzero(chrom == ci)
            if stats_pass:
                rows = rows[is_train[rows]]
            for a in range(0, len(rows), chunk):
                r = rows[a:a + chunk]
                if stats_pass:
                    tracks.add_train_stats(chrom_names[ci], starts[r], strand[r])
                else:
                    out[r] = tracks.values(chrom_names[ci], starts[r], strand[r])
        if stats_pass:
            tracks.finish_stats()
    return out
