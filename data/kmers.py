"""k-mer counts of sequence codes: per window index, and of both strands (canonical k-mers).

A window holding an N is not a k-mer and is not counted. On both strands a k-mer and its
reverse complement are one feature (the canonical k-mer, the smaller index of the two): each
window counts once for its own strand and once for the other, so both-strand counts are twice
the canonical counts of the forward strand; they are given as shares of the windows.
"""
from __future__ import annotations

import functools
from itertools import product

import numpy as np

from mtlsweep.data.onehot import ALPHABET, N_CODE

CHUNK = 65536     # sequences per pass: bounded temporaries on millions of sequences


def window_index(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(index [n, L-k+1] int64 in 0..4^k-1, ok [n, L-k+1]: the window holds no N)."""
    codes = np.asarray(codes)
    n, L = codes.shape
    n_win = max(0, L - k + 1)
    index = np.zeros((n, n_win), dtype=np.int64)
    ok = np.ones((n, n_win), dtype=bool)
    for j in range(k):
        c = codes[:, j:j + n_win]
        index = index * 4 + np.minimum(c, 3)
        ok &= c < N_CODE
    return index, ok


def kmer_names(k: int) -> list[str]:
    return ["".join(p) for p in product(ALPHABET, repeat=k)]


@functools.lru_cache(maxsize=16)
def canonical_columns(k: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """(column of each of the 4^k k-mers, names of the canonical k-mers in column order)."""
    idx = np.arange(4 ** k, dtype=np.int64)
    digits = (idx[:, None] // 4 ** np.arange(k - 1, -1, -1)) % 4          # most significant first
    rc = ((3 - digits[:, ::-1]) * 4 ** np.arange(k - 1, -1, -1)).sum(axis=1)
    canon = np.minimum(idx, rc)
    kept, column = np.unique(canon, return_inverse=True)
    names = kmer_names(k)
    return column.astype(np.int64), tuple(names[i] for i in kept)


def both_strand_counts(codes: np.ndarray, k: int) -> np.ndarray:
    """[N, n_canonical(k)] float32: each canonical k-mer's share of the N-free windows of both strands."""
    codes = np.asarray(codes)
    column, names = canonical_columns(k)
    out = np.zeros((codes.shape[0], len(names)), dtype=np.float32)
    for a in range(0, codes.shape[0], CHUNK):
        part = codes[a:a + CHUNK]
        index, ok = window_index(part, k)
        n = part.shape[0]
        flat = (np.arange(n, dtype=np.int64)[:, None] * len(names) + column[index])[ok]
        counts = np.bincount(flat, minlength=n * len(names)).reshape(n, len(names)).astype(np.float32)
        out[a:a + n] = counts / np.maximum(ok.sum(axis=1, keepdims=True), 1)
    return out
