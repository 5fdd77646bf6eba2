"""Negatives for a peak sample sheet beyond Basset's (other tasks' peaks).

- ``background``: genomic windows of the build's length that overlap no peak of any task and no
  positive window, drawn uniformly over the genome, with at most ``max_n`` N bases, and
  accepted so that their GC content follows the positives' (bins of ``GC_BIN`` width: each bin
  takes ``ratio`` x the positives in it);
- ``flank``: the windows ``distance`` bp either side of each positive window (its start moved
  by -distance and +distance), kept when they overlap no peak or positive window, then
  subsampled to ``ratio`` x the positives.

Both are seeded; what was asked, drawn and obtained goes into the build report. Negatives are
0 for every task; splits are assigned afterwards, with the positives, by the same plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from mtlsweep.data.errors import DataError
from mtlsweep.data.onehot import N_CODE

NEGATIVES = ("peaks", "background", "flank")
GC_BIN = 0.05
N_GC_BINS = int(round(1 / GC_BIN))
_ROUNDS = 20


@dataclass
class Blocked:
    """Sorted, merged intervals per chromosome index that no negative may overlap."""
    starts: dict[int, np.ndarray]
    ends: dict[int, np.ndarray]

    @classmethod
    def from_intervals(cls, chrom: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> "Blocked":
        s_out, e_out = {}, {}
        for ci in np.unique(chrom).tolist():
            m = chrom == ci
            order = np.argsort(starts[m], kind="stable")
            s, e = starts[m][order], ends[m][order]
            # merge, so that "overlaps any" is one searchsorted
            run_end = np.maximum.accumulate(e)
            new = np.r_[True, s[1:] > run_end[:-1]]
            s_out[ci] = s[new]
            e_out[ci] = np.maximum.reduceat(run_end, np.flatnonzero(new))
        return cls(s_out, e_out)

    def overlaps(self, ci: int, starts: np.ndarray, length: int) -> np.ndarray:
        if ci not in self.starts:
            return np.zeros(len(starts), dtype=bool)
        bs, be = self.starts[ci], self.ends[ci]
        # the last blocked interval starting before the window's end must end before its start
        j = np.searchsorted(bs, starts + length, side="left") - 1
        return (j >= 0) & (be[np.maximum(j, 0)] > starts)


def gc_and_n(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GC fraction among A/C/G/T bases and N fraction, per row of codes [n, L]."""
    known = (codes < N_CODE).sum(axis=1)
    gc = ((codes == 1) | (codes == 2)).sum(axis=1)
    return np.where(known > 0, gc / np.maximum(known, 1), 0.5), 1.0 - known / codes.shape[1]


def gc_bins(gc: np.ndarray) -> np.ndarray:
    return np.minimum((gc / GC_BIN).astype(np.int64), N_GC_BINS - 1)


def _windows(chrom_codes: np.ndarray, starts: np.ndarray, L: int) -> np.ndarray:
    return chrom_codes[starts[:, None] + np.arange(L)]


def check_options(kind: str, ratio: float, max_n: float, distance, seq_len: int, min_found: float = 0.9) -> None:
    if kind not in NEGATIVES:
        raise DataError(f"--negatives {kind!r} is not allowed; choose one of {', '.join(NEGATIVES)}")
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio <= 100):
        raise DataError(f"--negative-ratio {ratio!r} is not allowed; it must be in (0, 100] negatives per positive")
    if not (isinstance(max_n, (int, float)) and 0 <= max_n <= 1):
        raise DataError(f"--max-n-fraction {max_n!r} is not allowed; it must be in [0, 1]")
    if not (isinstance(min_found, (int, float)) and not isinstance(min_found, bool) and 0 <= min_found <= 1):
        raise DataError(f"--min-negatives {min_found!r} is not allowed; it must be a fraction in [0, 1] of the "
                        "negatives requested")
    if distance is not None and (isinstance(distance, bool) or not isinstance(distance, int) or distance < seq_len):
        raise DataError(f"--flank-distance {distance!r} is not allowed with --length {seq_len}; it must be an "
                        f"integer >= the length, so that a flank does not overlap its own peak window")


def sample_background(load_codes, lengths: Mapping[str, int], blocked: Blocked, pos_gc: np.ndarray,
                      seq_len: int, ratio: float, max_n: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(chrom index, start) of GC-matched background windows, and their report section.
    `load_codes(name)` gives a chromosome's uint8 codes."""
    names = list(lengths)
    L = seq_len
    rng = np.random.default_rng([seed, 1])
    pos_bins = gc_bins(pos_gc)
    need = np.round(ratio * np.bincount(pos_bins, minlength=N_GC_BINS)).astype(np.int64)
    target = int(need.sum())
    room = np.array([max(lengths[c] - L + 1, 0) for c in names], dtype=np.float64)
    if room.sum() <= 0:
        raise DataError(f"--negatives background: every chromosome is shorter than --length {L}")
    got_c, got_s = [], []
    drawn = rejected_overlap = rejected_n = 0
    taken: set[tuple[int, int]] = set()
    for _ in range(_ROUNDS):
        if need.sum() == 0:
            break
        n_draw = int(max(4 * need.sum(), 1000))
        per_chrom = rng.multinomial(n_draw, room / room.sum())
        for ci, k in enumerate(per_chrom.tolist()):
            if k == 0 or need.sum() == 0:
                continue
            starts = rng.integers(0, int(room[ci]), size=k)
            drawn += k
            ok = ~blocked.overlaps(ci, starts, L)
            rejected_overlap += int((~ok).sum())
            starts = starts[ok]
            if not len(starts):
                continue
            gc, nf = gc_and_n(_windows(load_codes(names[ci]), starts, L))
            ok = nf <= max_n
            rejected_n += int((~ok).sum())
            starts, b = starts[ok], gc_bins(gc[ok])
            for s, bi in zip(starts.tolist(), b.tolist()):
                if need[bi] > 0 and (ci, s) not in taken:
                    taken.add((ci, s))
                    need[bi] -= 1
                    got_c.append(ci)
                    got_s.append(s)
    chrom = np.asarray(got_c, dtype=np.int32)
    start = np.asarray(got_s, dtype=np.int64)
    order = np.lexsort((start, chrom))
    report = {"method": "background", "seed": seed, "ratio": ratio, "max_n_fraction": max_n,
              "gc_bin_width": GC_BIN, "requested": target, "obtained": int(len(start)),
              "drawn": drawn, "rejected_overlap": rejected_overlap, "rejected_n": rejected_n,
              "shortfall_by_gc_bin": {f"{i * GC_BIN:.2f}-{(i + 1) * GC_BIN:.2f}": int(v)
                                      for i, v in enumerate(need.tolist()) if v}}
    return chrom[order], start[order], report


def sample_flanks(lengths: Mapping[str, int], blocked: Blocked, pos_chrom: np.ndarray, pos_start: np.ndarray,
                  seq_len: int, distance: int, ratio: float, seed: int, load_codes, max_n: float
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    names = list(lengths)
    L = seq_len
    cand_c = np.concatenate([pos_chrom, pos_chrom]).astype(np.int32)
    cand_s = np.concatenate([pos_start - distance, pos_start + distance]).astype(np.int64)
    hi = np.array([lengths[c] for c in names], dtype=np.int64)[cand_c] - L
    ok = (cand_s >= 0) & (cand_s <= hi)
    off_end = int((~ok).sum())
    cand_c, cand_s = cand_c[ok], cand_s[ok]
    keep = np.ones(len(cand_s), dtype=bool)
    rejected_n = 0
    for ci in np.unique(cand_c).tolist():
        m = np.flatnonzero(cand_c == ci)
        keep[m] &= ~blocked.overlaps(ci, cand_s[m], L)
        m = m[keep[m]]
        if len(m):
            _, nf = gc_and_n(_windows(load_codes(names[ci]), cand_s[m], L))
            rejected_n += int((nf > max_n).sum())
            keep[m[nf > max_n]] = False
    rejected_overlap = int(len(keep) - keep.sum()) - rejected_n
    pairs = np.unique(np.stack([cand_c[keep].astype(np.int64), cand_s[keep]], axis=1), axis=0)
    target = int(round(ratio * len(pos_start)))
    rng = np.random.default_rng([seed, 2])
    if len(pairs) > target:
        pairs = pairs[np.sort(rng.choice(len(pairs), size=target, replace=False))]
    report = {"method": "flank", "seed": seed, "ratio": ratio, "distance": distance, "max_n_fraction": max_n,
              "requested": target, "obtained": int(len(pairs)), "candidates": int(2 * len(pos_start)),
              "rejected_off_chrom_end": off_end, "rejected_overlap": rejected_overlap, "rejected_n": rejected_n}
    return pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int64), report


def gc_summary(pos_gc: np.ndarray, neg_gc: np.ndarray) -> dict:
    """Positives' and negatives' GC (mean, and the largest difference of the binned distributions)."""
    hp = np.bincount(gc_bins(pos_gc), minlength=N_GC_BINS) / max(len(pos_gc), 1)
    hn = np.bincount(gc_bins(neg_gc), minlength=N_GC_BINS) / max(len(neg_gc), 1)
    return {"positives_gc_mean": round(float(pos_gc.mean()), 4) if len(pos_gc) else None,
            "negatives_gc_mean": round(float(neg_gc.mean()), 4) if len(neg_gc) else None,
            "max_gc_bin_difference": round(float(np.abs(hp - hn).max()), 4)}
