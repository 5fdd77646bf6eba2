"""Sequence codes (uint8, 0-3 = A,C,G,T, 4 = N) and their one-hot form (N = 0.25 in all four)."""
from __future__ import annotations

import numpy as np
import torch

ALPHABET = "ACGT"
N_CODE = 4

_ASCII_TO_CODE = np.full(256, N_CODE, dtype=np.uint8)
for _i, _b in enumerate(ALPHABET):
    _ASCII_TO_CODE[ord(_b)] = _i
    _ASCII_TO_CODE[ord(_b.lower())] = _i

# Row c of the table is the one-hot column of code c.
_LUT = np.zeros((5, 4), dtype=np.float32)
_LUT[np.arange(4), np.arange(4)] = 1.0
_LUT[N_CODE] = 0.25
_LUT_CACHE: dict[tuple, torch.Tensor] = {}


def seq_to_codes(seq: str | bytes) -> np.ndarray:
    """Any IUPAC letter other than A/C/G/T (either case) becomes N."""
    raw = seq.encode("ascii") if isinstance(seq, str) else seq
    return _ASCII_TO_CODE[np.frombuffer(raw, dtype=np.uint8)]


def codes_to_seq(codes: np.ndarray) -> str:
    return "".join("ACGTN"[c] for c in np.asarray(codes))


def codes_to_onehot_np(codes: np.ndarray, dtype=np.float16) -> np.ndarray:
    """(N, L) codes -> (N, 4, L) one-hot."""
    return _LUT.astype(dtype)[codes].transpose(0, 2, 1)


def codes_to_onehot(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) uint8 codes on any device -> (B, 4, L) one-hot on that device."""
    key = (codes.device, dtype)
    lut = _LUT_CACHE.get(key)
    if lut is None:
        lut = _LUT_CACHE[key] = torch.from_numpy(_LUT).to(device=codes.device, dtype=dtype)
    return lut[codes.long()].transpose(1, 2)


def reverse_complement(matrix: np.ndarray) -> np.ndarray:
    """A [4, W] matrix over A,C,G,T (counts, PFM, log-odds, filter) as the other strand sees it:
    rows complemented (the A,C,G,T order makes that a reversal) and columns reversed."""
    return matrix[::-1, ::-1]


def reverse_complement_codes(codes: np.ndarray) -> np.ndarray:
    """A<->T, C<->G, N stays N; reversed along the last axis."""
    comp = np.array([3, 2, 1, 0, 4], dtype=np.uint8)
    return comp[codes][..., ::-1]
