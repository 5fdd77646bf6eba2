"""JASPAR motifs as probability matrices: the offline pyjaspar databases and JASPAR/MEME text files.

The file parsers are this module's own, not Bio.motifs (which pyjaspar brings in): tried on the
tests' files, Bio.motifs returns no motif and no error for a JASPAR matrix with three rows,
cuts a tab-separated name ("My factor") at its first space, refuses MEME files without an
ALPHABET line, and its errors name neither the file nor the line; a user's bad file must get
one line naming both.
"""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyjaspar import JASPAR_LATEST_RELEASE, jaspar_releases, jaspardb

from mtlsweep.data.errors import DataError
from mtlsweep.data.onehot import reverse_complement

ALPHABET = "ACGT"


@dataclass(eq=False)
class Motif:
    """pfm: float64 [4, W], rows A,C,G,T, every column sums to 1."""

    matrix_id: str
    name: str
    pfm: np.ndarray

    @property
    def width(self) -> int:
        return int(self.pfm.shape[1])

    def information_content(self) -> float:
        return float(information_content(self.pfm).sum())


def counts_to_pfm(counts, where: str) -> np.ndarray:
    """[4, W] counts or probabilities -> column-normalized pfm; `where` names the source in errors."""
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != 4 or arr.shape[1] < 1:
        raise DataError(f"{where}: matrix must be 4 rows (A,C,G,T) by >=1 columns, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"{where}: matrix entries must be finite and >= 0")
    sums = arr.sum(axis=0)
    if np.any(sums <= 0):
        col = int(np.flatnonzero(sums <= 0)[0]) + 1
        raise DataError(f"{where}: column {col} sums to 0; every column needs a positive total")
    pfm = arr / sums
    pfm.setflags(write=False)
    return pfm


def information_content(pfm: np.ndarray) -> np.ndarray:
    """Per-column information content in bits against a uniform background."""
    p = np.asarray(pfm, dtype=np.float64)
    safe = np.where(p > 0, p, 1.0)
    return 2.0 + np.sum(p * np.log2(safe), axis=0)


def log_odds(pfm: np.ndarray, background=(0.25, 0.25, 0.25, 0.25), pseudocount: float = 0.01) -> np.ndarray:
    """log2 of (pfm smoothed toward the background) over the background, [4, W].

    The pseudocount is spread in proportion to the background so that a zero in the matrix
    becomes a finite penalty rather than -inf.
    """
    bg = np.asarray(background, dtype=np.float64).reshape(-1)
    if bg.shape != (4,) or np.any(~np.isfinite(bg)) or np.any(bg <= 0):
        raise DataError(f"background must be 4 positive frequencies (A,C,G,T), got {tuple(np.asarray(background).ravel())}")
    bg = bg / bg.sum()
    if not (np.isfinite(pseudocount) and pseudocount >= 0):
        raise DataError(f"pseudocount must be >= 0, got {pseudocount}")
    p = np.asarray(pfm, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != 4:
        raise DataError(f"pfm must have shape [4, W], got {p.shape}")
    smoothed = (p + pseudocount * bg[:, None]) / (1.0 + pseudocount)
    with np.errstate(divide="ignore"):
        return np.log2(smoothed / bg[:, None])


def pfm_similarity_many(pfm: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """For each of `others`, the best alignment score with `pfm` over offsets and both strands.

    The score is the dot product of the matrices centred at 0.25 over the overlapping columns,
    divided by the norms of the whole centred matrices: uninformative columns count for
    nothing, and informative columns left outside the overlap count against the match. 1 means
    identical up to shift and strand; unrelated JASPAR motifs score about 0.2-0.5.
    """
    ca = np.asarray(pfm, dtype=np.float64) - 0.25
    if not others:
        return np.zeros(0)
    wmax = max(o.shape[1] for o in others)
    stacked = np.zeros((2, len(others), 4, wmax))
    norms = np.empty(len(others))
    for k, o in enumerate(others):
        cb = np.asarray(o, dtype=np.float64) - 0.25
        stacked[0, k, :, : cb.shape[1]] = cb
        stacked[1, k, :, : cb.shape[1]] = reverse_complement(cb)
        norms[k] = np.sqrt(np.sum(cb * cb))
    wa = ca.shape[1]
    best = np.full(len(others), -np.inf)
    for shift in range(-(wmax - 1), wa):
        lo, hi = max(0, shift), min(wa, shift + wmax)
        dots = np.einsum("rw,skrw->sk", ca[:, lo:hi], stacked[:, :, :, lo - shift : hi - shift])
        best = np.maximum(best, dots.max(axis=0))
    den = np.sqrt(np.sum(ca * ca)) * norms
    return np.where(den > 0, best / np.where(den > 0, den, 1.0), 0.0)


def pfm_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """See pfm_similarity_many."""
    return float(pfm_similarity_many(a, [b])[0])


# ---------------------------------------------------------------- pyjaspar


def _open_db(release: str | None):
    release = JASPAR_LATEST_RELEASE if release is None else release
    if release not in jaspar_releases:
        raise DataError(f"JASPAR release {release!r} is not available; allowed: {', '.join(sorted(jaspar_releases))}")
    return jaspardb(release=release), release


def _distinct(conn, sql: str) -> list[str]:
    return sorted({str(row[0]) for row in conn.execute(sql).fetchall() if row[0] is not None})


@functools.lru_cache(maxsize=16)
def _load_cached(collection: str, tax_group: str, release: str | None) -> tuple[Motif, ...]:
    db, release = _open_db(release)
    try:
        collections = _distinct(db.conn, "select distinct COLLECTION from MATRIX")
        if collection.upper() not in {c.upper() for c in collections}:
            raise DataError(f"JASPAR collection {collection!r} is not in {release}; allowed: {', '.join(collections)}")
        groups = _distinct(db.conn, "select distinct VAL from MATRIX_ANNOTATION where TAG='tax_group'")
        if tax_group.lower() not in {g.lower() for g in groups}:
            raise DataError(f"JASPAR tax group {tax_group!r} is not in {release}; allowed: {', '.join(groups)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyjaspar warns instead of raising on an empty selection
            found = db.fetch_motifs(collection=collection.upper(), tax_group=[tax_group.lower()])
    finally:
        db.conn.close()
    motifs = []
    for m in found:
        counts = [list(m.counts[base]) for base in ALPHABET]
        motifs.append(Motif(str(m.matrix_id), str(m.name), counts_to_pfm(counts, f"{release} {m.matrix_id}")))
    if not motifs:
        raise DataError(f"JASPAR {release} has no {collection} motifs for tax group {tax_group!r}")
    motifs.sort(key=lambda mo: mo.matrix_id)
    return tuple(motifs)


def load_motifs(collection: str = "CORE", tax_group: str = "vertebrates", release: str | None = None) -> list[Motif]:
    """Latest version of each matrix in the offline pyjaspar database, sorted by matrix_id.

    release=None is pyjaspar's newest release. The result is cached per process; the pfms are
    read-only so that callers cannot corrupt the cache.
    """
    if not isinstance(collection, str) or not isinstance(tax_group, str):
        raise DataError(f"JASPAR collection and tax_group must be strings, got {collection!r}, {tax_group!r}")
    if release is None:

        release = JASPAR_LATEST_RELEASE  # one cache entry whether the release is named or not
    return list(_load_cached(collection, tax_group, release))


# ---------------------------------------------------------------- motif files

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def read_motif_file(path) -> list[Motif]:
    """Motifs from a JASPAR-format (.jaspar/.pfm) or MEME-format text file, in file order."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: motif file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text file (expected JASPAR or MEME motif format)") from None
    lines = text.splitlines()
    if any(ln.startswith("MEME version") for ln in lines) or any(ln.startswith("MOTIF") for ln in lines):
        motifs = _parse_meme(p, lines)
    elif any(ln.startswith(">") for ln in lines):
        motifs = _parse_jaspar(p, lines)
    else:
        raise DataError(f"{p}: unrecognized motif file; expected JASPAR ('>ID name' headers) or MEME ('MEME version' / 'MOTIF' lines)")
    if not motifs:
        raise DataError(f"{p}: no motifs found")
    return motifs


def _numbers(p: Path, lineno: int, text: str) -> list[float]:
    out = []
    for tok in text.split():
        if not re.fullmatch(_NUM, tok):
            raise DataError(f"{p}:{lineno}: expected numbers, got {tok!r}")
        out.append(float(tok))
    return out


def _parse_jaspar(p: Path, lines: list[str]) -> list[Motif]:
    motifs: list[Motif] = []
    header: tuple[int, str, str] | None = None
    rows: list[tuple[int, str]] = []

    def finish() -> None:
        if header is None:
            return
        lineno, mid, name = header
        if len(rows) != 4:
            raise DataError(f"{p}:{lineno}: motif {mid} has {len(rows)} matrix rows; JASPAR needs 4 (A,C,G,T)")
        by_base: dict[str, list[float]] = {}
        for i, (ln, row) in enumerate(rows):
            m = re.fullmatch(r"\s*([ACGTacgt])?\s*\[?([^\[\]]*)\]?\s*", row)
            if m is None:
                raise DataError(f"{p}:{ln}: malformed matrix row {row.strip()!r}; expected 'A [ n n ... ]' or 'n n ...'")
            base = (m.group(1) or ALPHABET[i]).upper()
            if base in by_base:
                raise DataError(f"{p}:{ln}: motif {mid} repeats row {base}")
            by_base[base] = _numbers(p, ln, m.group(2))
        widths = {len(v) for v in by_base.values()}
        if len(widths) != 1:
            raise DataError(f"{p}:{lineno}: motif {mid} rows have different lengths {sorted(widths)}")
        motifs.append(Motif(mid, name, counts_to_pfm([by_base[b] for b in ALPHABET], f"{p}:{lineno} motif {mid}")))

    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(">"):
            finish()
            parts = line[1:].split(None, 1)
            if not parts:
                raise DataError(f"{p}:{lineno}: empty motif header; expected '>ID name'")
            header = (lineno, parts[0], parts[1].strip() if len(parts) > 1 else parts[0])
            rows = []
        elif header is None:
            raise DataError(f"{p}:{lineno}: matrix row before any '>ID name' header")
        else:
            rows.append((lineno, line))
    finish()
    return motifs


def _parse_meme(p: Path, lines: list[str]) -> list[Motif]:
    motifs: list[Motif] = []
    i, n = 0, len(lines)
    current: tuple[int, str, str] | None = None
    while i < n:
        line = lines[i].strip()
        lineno = i + 1
        i += 1
        if line.startswith("ALPHABET"):
            alpha = line.split("=", 1)[1].strip().split()[0] if "=" in line else ""
            if alpha.upper() != "ACGT":
                raise DataError(f"{p}:{lineno}: MEME alphabet {alpha!r} is not supported; only ACGT (DNA)")
        elif line.startswith("MOTIF"):
            parts = line.split()
            if current is not None:
                raise DataError(f"{p}:{current[0]}: motif {current[1]} has no letter-probability matrix")
            if len(parts) < 2:
                raise DataError(f"{p}:{lineno}: MOTIF line needs an identifier")
            current = (lineno, parts[1], parts[2] if len(parts) > 2 else parts[1])
        elif line.startswith("letter-probability matrix"):
            if current is None:
                raise DataError(f"{p}:{lineno}: letter-probability matrix before any MOTIF line")
            m = re.search(r"\bw=\s*(\d+)", line)
            width = int(m.group(1)) if m else None
            m = re.search(r"\balength=\s*(\d+)", line)
            if m and int(m.group(1)) != 4:
                raise DataError(f"{p}:{lineno}: alength={m.group(1)}; only DNA motifs (alength= 4) are supported")
            rows = []
            while i < n:
                row = lines[i].strip()
                if not row:
                    if width is not None and len(rows) < width:
                        i += 1
                        continue
                    break
                if not re.match(_NUM, row):
                    break
                vals = _numbers(p, i + 1, row)
                if len(vals) != 4:
                    raise DataError(f"{p}:{i + 1}: expected 4 probabilities (A C G T) per row, got {len(vals)}")
                rows.append(vals)
                i += 1
                if width is not None and len(rows) == width:
                    break
            mlineno, mid, name = current
            if not rows:
                raise DataError(f"{p}:{lineno}: motif {mid} has an empty letter-probability matrix")
            if width is not None and len(rows) != width:
                raise DataError(f"{p}:{lineno}: motif {mid} declares w= {width} but has {len(rows)} rows")
            arr = np.asarray(rows, dtype=np.float64).T
            sums = arr.sum(axis=0)
            if np.any(np.abs(sums - 1.0) > 0.02):
                bad = int(np.flatnonzero(np.abs(sums - 1.0) > 0.02)[0]) + 1
                raise DataError(f"{p}:{lineno}: motif {mid} row {bad} sums to {sums[bad - 1]:.3f}; probabilities must sum to 1")
            motifs.append(Motif(mid, name, counts_to_pfm(arr, f"{p}:{mlineno} motif {mid}")))
            current = None
    if current is not None:
        raise DataError(f"{p}:{current[0]}: motif {current[1]} has no letter-probability matrix")
    return motifs


def scan_max(codes: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Best score of the [4, W] matrix `lo` in each sequence of codes [N, L], over both strands.

    An N base (code 4) scores 0 in every column. Integer matrices give exact integer scores.
    """
    codes = np.asarray(codes)
    lo = np.asarray(lo)
    if codes.ndim != 2:
        raise DataError(f"codes must be a [N, L] array, got shape {codes.shape}")
    if lo.ndim != 2 or lo.shape[0] != 4:
        raise DataError(f"score matrix must have shape [4, W], got {lo.shape}")
    w = lo.shape[1]
    n_pos = codes.shape[1] - w + 1
    if n_pos < 1:
        raise DataError(f"sequences of length {codes.shape[1]} are shorter than the motif ({w})")
    best = None
    # The reverse complement of the matrix scans the minus strand of the same positions.
    for mat in (lo, reverse_complement(lo)):
        table = np.vstack([mat, np.zeros((1, w), dtype=mat.dtype)])
        score = np.zeros((codes.shape[0], n_pos), dtype=np.result_type(mat.dtype, np.int64))
        for j in range(w):
            score += table[:, j][codes[:, j:j + n_pos]]
        top = score.max(axis=1)
        best = top if best is None else np.maximum(best, top)
    return best
