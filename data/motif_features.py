"""Known motifs scored along the sequence, as a feature table for classical models.

Every motif's log-odds matrix (data.jaspar.log_odds, uniform background) is a filter over the
one-hot batch, padded with zero columns to a common width, with the reverse-complement strand
as a second filter (the matrix flipped on both axes); see MotifScanner for how the filters are
applied (one conv1d per width group, or the equivalent table gather). An N base is 0.25 in all
four one-hot rows, so it scores the average of the column. Per motif the table can hold:

- ``max``: best score over positions and both strands;
- ``count``: windows (both strands) scoring at least ``hit_threshold`` x the motif's best
  possible score; a palindromic site counts once per strand;
- ``bins``: best score among the windows whose centre falls in each of ``n_bins`` equal parts
  of the sequence (a bin with no window gets the motif's lowest possible score);

and per sequence ``gc`` (G+C fraction among A/C/G/T bases, 0.5 if there are none) and ``kmer``
(frequencies of the 4^k forward-strand k-mers among the windows without an N).

Tables are cached as .npy files keyed by (data fingerprint, split, options, motif set) and
written atomically, so concurrent trials on one node can share them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mtlsweep.config.run import GBM_CACHE_DIR, GBM_FEATURES
from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import Motif, log_odds
from mtlsweep.data.kmers import kmer_names, window_index
from mtlsweep.data.onehot import N_CODE, codes_to_onehot_np, reverse_complement

FEATURES = GBM_FEATURES
MOTIF_FEATURES = ("max", "count", "bins")
MAX_KMER = 4
DEFAULT_CACHE_DIR = GBM_CACHE_DIR
# Bumped whenever a feature's definition changes, so that old cache files are never reused.
FEATURE_VERSION = 1
# Bytes of the [B, L, 2M] float32 score tensor per batch. Measured on 1019 JASPAR motifs at
# L = 600: 16 sequences (~80 MB) beat both 4 and 64 by 1.5-2x (cache reuse vs per-call overhead).
_SCORE_BYTES = 80 * 2**20
_MAX_BATCH = 4096


@dataclass(frozen=True)
class FeatureOptions:
    features: tuple[str, ...] = ("max",)
    hit_threshold: float = 0.8
    n_bins: int = 3
    kmer_k: int = 3
    pseudocount: float = 0.01

    def __post_init__(self) -> None:
        feats = self.features
        if isinstance(feats, str):
            feats = (feats,)
        feats = tuple(feats)
        bad = [f for f in feats if f not in FEATURES]
        if bad or not feats:
            raise DataError(f"motif features: features={list(feats)!r}; allowed: a non-empty list of {list(FEATURES)}")
        if len(set(feats)) != len(feats):
            raise DataError(f"motif features: features={list(feats)!r} lists a feature twice")
        # Canonical order: the same set in any order is the same table and the same cache entry.
        object.__setattr__(self, "features", tuple(f for f in FEATURES if f in feats))
        if not (isinstance(self.hit_threshold, (int, float)) and 0.0 < float(self.hit_threshold) <= 1.0):
            raise DataError(f"motif features: hit_threshold={self.hit_threshold!r}; allowed: 0 < x <= 1 "
                            "(fraction of the motif's best possible log-odds score)")
        object.__setattr__(self, "hit_threshold", float(self.hit_threshold))
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, (int, np.integer)) or self.n_bins < 1:
            raise DataError(f"motif features: n_bins={self.n_bins!r}; allowed: an integer >= 1")
        if (isinstance(self.kmer_k, bool) or not isinstance(self.kmer_k, (int, np.integer))
                or not 1 <= self.kmer_k <= MAX_KMER):
            raise DataError(f"motif features: kmer_k={self.kmer_k!r}; allowed: an integer 1..{MAX_KMER}")
        if not (isinstance(self.pseudocount, (int, float)) and 0.0 <= float(self.pseudocount) < 1e6):
            raise DataError(f"motif features: pseudocount={self.pseudocount!r}; allowed: a number >= 0")

    @property
    def uses_motifs(self) -> bool:
        return any(f in MOTIF_FEATURES for f in self.features)

    def key(self) -> dict:
        """Only the options that change the table (hit_threshold matters only with count, ...)."""
        out: dict = {"features": list(self.features)}
        if self.uses_motifs:
            out["pseudocount"] = self.pseudocount
        if "count" in self.features:
            out["hit_threshold"] = self.hit_threshold
        if "bins" in self.features:
            out["n_bins"] = int(self.n_bins)
        if "kmer" in self.features:
            out["kmer_k"] = int(self.kmer_k)
        return out


def motif_set_hash(motifs: Sequence[Motif]) -> str:
    """sha256 over ids and matrices, in order (the order fixes the feature columns)."""
    h = hashlib.sha256()
    for m in motifs:
        pfm = np.ascontiguousarray(m.pfm, dtype="<f8")
        h.update(m.matrix_id.encode("utf-8") + b"\0" + str(pfm.shape).encode() + pfm.tobytes())
    return h.hexdigest()


def width_groups(widths: Sequence[int], max_groups: int) -> list[np.ndarray]:
    """Split motif indices into <= max_groups groups by width, minimizing the padded columns
    (sum over groups of size x widest member): exact dynamic programme over distinct widths."""
    widths = np.asarray(widths, dtype=np.int64)
    u, counts = np.unique(widths, return_counts=True)
    D, G = len(u), max(1, min(int(max_groups), len(u)))
    cum = np.concatenate([[0], np.cumsum(counts)])
    cost = np.full((G + 1, D + 1), np.inf)
    cost[0, 0] = 0.0
    back = np.zeros((G + 1, D + 1), dtype=np.int64)
    for g in range(1, G + 1):
        for j in range(1, D + 1):
            for i in range(j):
                c = cost[g - 1, i] + (cum[j] - cum[i]) * u[j - 1]
                if c < cost[g, j]:
                    cost[g, j], back[g, j] = c, i
    g = int(np.argmin(cost[1:, D])) + 1  # fewest groups among equal costs
    bounds, j = [], D
    while j > 0:
        i = back[g, j]
        bounds.append((u[i], u[j - 1]))
        j, g = i, g - 1
    groups = [np.flatnonzero((widths >= lo) & (widths <= hi)) for lo, hi in reversed(bounds)]
    # Sorted by width inside a group, so that equal widths are contiguous columns (see _Group.runs).
    return [g[np.argsort(widths[g], kind="stable")] for g in groups]


_PAD = 5  # code of a position past the sequence end (0-3 = ACGT, 4 = N)
METHODS = ("gather", "conv")


class _Group:
    """Motifs of similar width, padded with zero columns to the widest of them."""

    def __init__(self, index: np.ndarray, lo: list[np.ndarray]):
        self.index = torch.from_numpy(index)
        self.widths = np.array([x.shape[1] for x in lo], dtype=np.int64)
        self.width = W = int(self.widths.max())
        self.n = M = len(lo)
        w = np.zeros((2, M, 4, W), dtype=np.float32)
        for k, x in enumerate(lo):
            # Both strands left-aligned, so a window's start p is the same site on both strands.
            w[0, k, :, : x.shape[1]] = x
            w[1, k, :, : x.shape[1]] = reverse_complement(x)
        self.weight = torch.from_numpy(w.reshape(2 * M, 4, W))
        # gather: row j * 6 + code holds column j of every filter for that base. N scores the
        # column mean (the one-hot's 0.25s); past the end a real column scores -inf (the window
        # does not fit) and a padding column 0.
        table = np.zeros((W, 6, 2 * M), dtype=np.float32)
        table[:, :4, :] = w.reshape(2 * M, 4, W).transpose(2, 1, 0)
        table[:, 4, :] = table[:, :4, :].mean(axis=1)
        real = np.arange(W)[:, None] < np.concatenate([self.widths, self.widths])[None, :]
        table[:, _PAD, :] = np.where(real, -np.inf, 0.0)
        self.table = torch.from_numpy(table.reshape(W * 6, 2 * M))
        self.offsets = np.arange(W, dtype=np.int64) * 6
        # (width, first column, end column) of each run of equal widths (the group is sorted).
        cuts = np.flatnonzero(np.diff(self.widths)) + 1
        starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [M]])
        self.runs = [(int(self.widths[a]), int(a), int(e)) for a, e in zip(starts, ends)]
        self._invalid: dict[int, torch.Tensor] = {}

    def invalid(self, seq_len: int) -> torch.Tensor:
        """[L, 2M] True where a window runs past the sequence end."""
        if seq_len not in self._invalid:
            bad = np.arange(seq_len)[:, None] > (seq_len - self.widths)[None, :]
            self._invalid[seq_len] = torch.from_numpy(np.concatenate([bad, bad], axis=1))
        return self._invalid[seq_len]

    def scores_gather(self, padded: np.ndarray, L: int) -> torch.Tensor:
        """padded codes [B, >= L + W - 1] -> [B, L, 2M]: one embedding_bag sum per window."""
        B = padded.shape[0]
        win = np.lib.stride_tricks.sliding_window_view(padded, self.width, axis=1)[:, :L]
        idx = torch.from_numpy((win.astype(np.int64) + self.offsets).reshape(B * L, self.width))
        return F.embedding_bag(idx, self.table, mode="sum").view(B, L, 2 * self.n)

    def scores_conv(self, onehot: torch.Tensor, L: int) -> torch.Tensor:
        """right-padded one-hot [B, 4, >= L + W - 1] -> [B, L, 2M] (a transposed view)."""
        s = F.conv1d(onehot[:, :, : L + self.width - 1], self.weight).transpose(1, 2)
        return s.masked_fill_(self.invalid(L), float("-inf")).contiguous()


class MotifScanner:
    """All motifs of a set scored at every window of both strands; ``scan`` gives the
    per-position scores, ``motif_block`` the feature table.

    Motifs are split into up to ``max_groups`` groups by width (exact optimum of the padded
    column count): JASPAR CORE vertebrates runs from 4 to 33 columns (mean 10), so padding all
    to the widest would compute ~2.7x more than 4 groups. Within a group, the scores are

    - ``method="conv"``: one conv1d of the one-hot batch with every motif as a filter
      (max_groups=1 makes it a single conv1d over the whole set);
    - ``method="gather"`` (default): the same sums read from a table of filter columns per base
      (F.embedding_bag): the one-hot is all zeros but one, so this skips 3 of the conv's 4
      multiply-adds per column; about 2x faster on CPU, equal to float32 rounding.
    """

    def __init__(self, motifs: Sequence[Motif], pseudocount: float = 0.01,
                 background=(0.25, 0.25, 0.25, 0.25), max_groups: int = 4, method: str = "gather"):
        motifs = list(motifs)
        if not motifs:
            raise DataError("motif features: the motif set is empty; allowed: at least one motif")
        if method not in METHODS:
            raise DataError(f"motif features: method={method!r}; allowed: {', '.join(METHODS)}")
        ids = [m.matrix_id for m in motifs]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"motif features: motif {dup!r} appears twice; feature names must be unique")
        self.motifs = motifs
        self.ids = ids
        self.method = method
        lo = [log_odds(m.pfm, background, pseudocount) for m in motifs]
        self.widths = np.array([x.shape[1] for x in lo], dtype=np.int64)
        self.width = int(self.widths.max())
        self.groups = [_Group(idx, [lo[i] for i in idx]) for idx in width_groups(self.widths, max_groups)]
        self.max_score = np.array([x.max(axis=0).sum() for x in lo])
        self.min_score = np.array([x.min(axis=0).sum() for x in lo])
        self.hash = motif_set_hash(motifs)
        self.pseudocount = float(pseudocount)

    @property
    def n_motifs(self) -> int:
        return len(self.motifs)

    def check_length(self, seq_len: int) -> None:
        if seq_len < self.width:
            k = int(np.argmax(self.widths))
            raise DataError(f"motif features: motif {self.ids[k]} is {self.width} wide but sequences are "
                            f"{seq_len} long; allowed: motifs no wider than the sequences")

    def macs_per_sample(self, seq_len: int) -> int:
        """Multiply-adds per sequence of the conv formulation, group padding included."""
        return int(sum(2 * g.n * 4 * g.width * seq_len for g in self.groups))

    def _prepare(self, codes: np.ndarray):
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise DataError(f"motif features: codes must be [N, L], got shape {codes.shape}")
        self.check_length(codes.shape[1])
        if codes.size and int(codes.max()) > N_CODE:
            raise DataError(f"motif features: code {int(codes.max())} in the sequences; allowed: 0-3 (A,C,G,T), 4 (N)")
        if self.method == "gather":
            return np.pad(codes.astype(np.uint8, copy=False), ((0, 0), (0, self.width - 1)),
                          constant_values=_PAD)
        x = torch.from_numpy(np.ascontiguousarray(codes_to_onehot_np(codes, np.float32)))
        return F.pad(x, (0, self.width - 1))

    def _scores(self, g: _Group, prepared, L: int) -> torch.Tensor:
        if self.method == "gather":
            return g.scores_gather(prepared, L)
        return g.scores_conv(prepared, L)

    @torch.inference_mode()
    def scan(self, codes: np.ndarray) -> np.ndarray:
        """codes [B, L] -> scores [B, 2, M, L] float32 (strand 0 = as given, 1 = reverse
        complement; index = window start); windows past the sequence end are -inf."""
        B, L = np.shape(codes)
        prepared = self._prepare(codes)
        out = torch.empty((B, 2, self.n_motifs, L))
        for g in self.groups:
            out[:, :, g.index] = self._scores(g, prepared, L).permute(0, 2, 1).reshape(B, 2, g.n, L)
        return out.numpy()

    def feature_names(self, options: FeatureOptions) -> list[str]:
        return feature_names(self.ids, options)

    @torch.inference_mode()
    def motif_block(self, codes: np.ndarray, options: FeatureOptions) -> np.ndarray:
        """Motif features (max, count, bins, as selected) of one batch of codes [B, L]: [B, F_motif].

        The reductions run in numpy: over the position axis of [B, L, 2M] they measured 3-10x
        faster than torch's on CPU (torch's bool sum and sliced amax are slow there).
        """
        B, L = np.shape(codes)
        prepared = self._prepare(codes)
        M = self.n_motifs
        feats = options.features
        n_bins = int(options.n_bins)
        best = np.empty((B, M), np.float32) if "max" in feats else None
        count = np.empty((B, M), np.float32) if "count" in feats else None
        binned = np.empty((B, M, n_bins), np.float32) if "bins" in feats else None
        for g in self.groups:
            s = self._scores(g, prepared, L).numpy()  # [B, L, 2Mg]
            cols = g.index.numpy()
            if best is not None:
                top = s.max(axis=1)
                best[:, cols] = np.maximum(top[:, : g.n], top[:, g.n:])
            if count is not None:
                thr = options.hit_threshold * self.max_score[cols]
                # Tolerance for float32 rounding: a perfect site must count at hit_threshold = 1.
                thr = (thr - 1e-4 * np.maximum(np.abs(thr), 1.0)).astype(np.float32)
                hits = (s >= np.concatenate([thr, thr])).sum(axis=1, dtype=np.int32)
                count[:, cols] = hits[:, : g.n] + hits[:, g.n:]
            if binned is not None:
                both = np.maximum(s[:, :, : g.n], s[:, :, g.n:])
                out = np.empty((B, g.n, n_bins), np.float32)
                for w, c0, c1 in g.runs:
                    for b, (p0, p1) in enumerate(bin_ranges(L, w, n_bins)):
                        out[:, c0:c1, b] = both[:, p0:p1, c0:c1].max(axis=1) if p1 > p0 else \
                            self.min_score[cols[c0:c1]][None, :]
                binned[:, cols] = out
        parts = [t for t in (best, count) if t is not None]
        if binned is not None:
            parts.append(binned.reshape(B, M * n_bins))
        return np.concatenate(parts, axis=1)


@functools.lru_cache(maxsize=4096)
def bin_ranges(seq_len: int, width: int, n_bins: int) -> list[tuple[int, int]]:
    """Per bin, the window starts [p0, p1) of a width-`width` motif whose centre falls in it:
    bin = floor(centre * n_bins / L), centre = start + (width - 1) / 2; empty bins give p0 == p1."""
    starts = np.arange(seq_len - width + 1)
    b = np.minimum(np.floor((starts + (width - 1) / 2.0) * n_bins / seq_len).astype(np.int64), n_bins - 1)
    return [(int(np.searchsorted(b, k, "left")), int(np.searchsorted(b, k, "right"))) for k in range(n_bins)]


def feature_names(motif_ids: Sequence[str], options: FeatureOptions) -> list[str]:
    names: list[str] = []
    for f in options.features:
        if f in ("max", "count"):
            names += [f"{f}/{i}" for i in motif_ids]
        elif f == "bins":
            names += [f"bin{b}/{i}" for i in motif_ids for b in range(options.n_bins)]
        elif f == "gc":
            names.append("gc")
        elif f == "kmer":
            names += [f"kmer/{s}" for s in kmer_names(options.kmer_k)]
    return names


def gc_fraction(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    known = (codes < N_CODE).sum(axis=1)
    gc = ((codes == 1) | (codes == 2)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known > 0, gc / np.maximum(known, 1), 0.5).astype(np.float32)


def kmer_frequencies(codes: np.ndarray, k: int) -> np.ndarray:
    """[N, 4^k] float32: each forward-strand k-mer's share of the N-free windows (0 with none)."""
    codes = np.asarray(codes)
    n = codes.shape[0]
    index, ok = window_index(codes, k)
    flat = (np.arange(n, dtype=np.int64)[:, None] * 4 ** k + index)[ok]
    counts = np.bincount(flat, minlength=n * 4 ** k).reshape(n, 4 ** k).astype(np.float32)
    total = ok.sum(axis=1, keepdims=True)
    return counts / np.maximum(total, 1)


def default_batch_size(n_motifs: int, seq_len: int) -> int:
    per_seq = 2 * max(n_motifs, 1) * seq_len * 4
    return int(max(1, min(_MAX_BATCH, _SCORE_BYTES // per_seq)))


@dataclass
class CacheStats:
    """How often tables were computed or loaded in this process (cheap to keep; tests use it)."""
    computed: int = 0
    loaded: int = 0
    last_path: Optional[Path] = None


cache_stats = CacheStats()


def _fill(out: np.ndarray, codes: np.ndarray, scanner: Optional[MotifScanner], options: FeatureOptions,
          batch_size: int, progress: bool) -> None:
    n = codes.shape[0]
    col = 0
    if scanner is not None:
        f = options.features
        n_motif_cols = scanner.n_motifs * (("max" in f) + ("count" in f) + int(options.n_bins) * ("bins" in f))
        bar = None
        if progress:
            bar = tqdm(total=n, desc="motif features", unit="seq", leave=False, disable=None, mininterval=0.5)
        for a in range(0, n, batch_size):
            b = min(n, a + batch_size)
            out[a:b, :n_motif_cols] = scanner.motif_block(codes[a:b], options)
            if bar is not None:
                bar.update(b - a)
        if bar is not None:
            bar.close()
        col = n_motif_cols
    chunk = 65536  # bounded temporaries for the k-mer index on millions of sequences
    if "gc" in options.features:
        for a in range(0, n, chunk):
            out[a:a + chunk, col] = gc_fraction(codes[a:a + chunk])
        col += 1
    if "kmer" in options.features:
        width = 4 ** options.kmer_k
        for a in range(0, n, chunk):
            out[a:a + chunk, col:col + width] = kmer_frequencies(codes[a:a + chunk], options.kmer_k)
        col += width
    if col != out.shape[1]:
        raise RuntimeError(f"motif features: filled {col} columns of {out.shape[1]}")


def compute_features(codes: np.ndarray, motifs: Sequence[Motif] | None, options: FeatureOptions, *,
                     batch_size: Optional[int] = None, progress: bool = False,
                     out: Optional[np.ndarray] = None) -> np.ndarray:
    """The feature table [N, F] float32 for codes [N, L] (uint8, 0-3 = ACGT, 4 = N); no cache."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DataError(f"motif features: codes must be [N, L], got shape {codes.shape}")
    scanner = None
    if options.uses_motifs:
        if not motifs:
            raise DataError(f"motif features: features {list(options.features)} need motifs; the motif set is empty")
        scanner = motifs if isinstance(motifs, MotifScanner) else MotifScanner(motifs, options.pseudocount)
        scanner.check_length(codes.shape[1])
    ids = scanner.ids if scanner is not None else []
    n_cols = len(feature_names(ids, options))
    if out is None:
        out = np.empty((codes.shape[0], n_cols), dtype=np.float32)
    bs = batch_size or default_batch_size(scanner.n_motifs if scanner else 1, codes.shape[1])
    _fill(out, codes, scanner, options, bs, progress)
    cache_stats.computed += 1
    return out


def cache_path(cache_dir, fingerprint: str, split: str, n: int, options: FeatureOptions,
               scanner: Optional[MotifScanner]) -> Path:
    # The method is part of the key: conv and gather agree only to float32 rounding, and a
    # cached table must be bit-identical to what this call would compute.
    motifs = {"hash": scanner.hash, "method": scanner.method} if options.uses_motifs and scanner else None
    key = {"version": FEATURE_VERSION, "fingerprint": fingerprint, "split": split, "n": int(n),
           "options": options.key(), "motifs": motifs}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{split}-{digest}.npy"


def cached_features(codes: np.ndarray, motifs: Sequence[Motif] | MotifScanner | None,
                    options: FeatureOptions, *, fingerprint: str, split: str,
                    cache_dir=DEFAULT_CACHE_DIR, batch_size: Optional[int] = None,
                    progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """(table [N, F] float32, column names), read from the cache or computed and stored there.

    cache_dir=None computes without caching. The table is filled batch by batch straight into
    a memory-mapped temporary file in the cache directory, then renamed over the final name:
    memory stays bounded on millions of sequences and no reader sees a half-written file.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DataError(f"motif features: codes must be [N, L], got shape {codes.shape}")
    scanner = None
    if options.uses_motifs:
        if motifs is None or (not isinstance(motifs, MotifScanner) and len(motifs) == 0):
            raise DataError(f"motif features: features {list(options.features)} need motifs; the motif set is empty")
        scanner = motifs if isinstance(motifs, MotifScanner) else MotifScanner(motifs, options.pseudocount)
        if scanner.pseudocount != options.pseudocount:
            raise DataError(f"motif features: scanner pseudocount {scanner.pseudocount} differs from the "
                            f"options' {options.pseudocount}")
        scanner.check_length(codes.shape[1])
    names = feature_names(scanner.ids if scanner else [], options)
    if cache_dir is None:
        return compute_features(codes, scanner, options, batch_size=batch_size, progress=progress), names
    if not isinstance(fingerprint, str) or not fingerprint:
        raise DataError("motif features: a data fingerprint is needed to cache features")
    path = cache_path(cache_dir, fingerprint, split, codes.shape[0], options, scanner)
    cache_stats.last_path = path
    table = _load(path, (codes.shape[0], len(names)))
    if table is not None:
        cache_stats.loaded += 1
        return table, names
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(codes.shape[0], len(names)))
        compute_features(codes, scanner, options, batch_size=batch_size, progress=progress, out=mm)
        mm.flush()
        del mm
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(path), names


def _load(path: Path, shape: tuple[int, int]) -> Optional[np.ndarray]:
    """The cached table, or None when missing or not the expected shape (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    if arr.dtype != np.float32 or arr.shape != shape:
        return None
    return arr


def feature_table(store, split: str, motifs, options: FeatureOptions, *, cache_dir=DEFAULT_CACHE_DIR,
                  batch_size: Optional[int] = None, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """cached_features for one split of a data.store.Store."""
    sp = store.split(split)
    return cached_features(sp.codes, motifs, options, fingerprint=store.fingerprint, split=split,
                           cache_dir=cache_dir, batch_size=batch_size, progress=progress)


def track_summary(tracks: np.ndarray, track_names, n_bins: int) -> tuple[np.ndarray, list[str]]:
    """Per track: mean, max and the mean of each of n_bins equal parts; tracks [N, C, L]."""
    N, C, L = tracks.shape
    edges = np.linspace(0, L, n_bins + 1).round().astype(int)
    cols, names = [], []
    for c, name in enumerate(track_names):
        x = tracks[:, c].astype(np.float32)
        cols += [x.mean(axis=1), x.max(axis=1)]
        names += [f"track:{name}:mean", f"track:{name}:max"]
        for b in range(n_bins):
            cols.append(x[:, edges[b]:edges[b + 1]].mean(axis=1))
            names.append(f"track:{name}:bin{b}")
    return (np.stack(cols, axis=1) if cols else np.zeros((N, 0), np.float32)), names


def select_motifs(motifs: Iterable[Motif], max_motifs: Optional[int] = None) -> list[Motif]:
    """The first max_motifs motifs in the given order (pyjaspar's are sorted by matrix_id)."""
    motifs = list(motifs)
    if max_motifs is not None:
        if isinstance(max_motifs, bool) or not isinstance(max_motifs, (int, np.integer)) or max_motifs < 1:
            raise DataError(f"motif features: max_motifs={max_motifs!r}; allowed: an integer >= 1 or None")
        motifs = motifs[: int(max_motifs)]
    return motifs
