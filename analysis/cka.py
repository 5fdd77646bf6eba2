"""Linear centered kernel alignment (CKA) between two sets of activations of the same inputs.

Kornblith et al. 2019: for activation matrices X [n, p1], Y [n, p2] (a conv map flattened to
n × (C·L)), with K = X Xᵀ and L = Y Yᵀ,

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)),

invariant to orthogonal transforms and isotropic scaling of either side, 1 for identical
representations. ``linear_cka`` is the full-probe form (biased HSIC = ‖Yᵀ X‖²_F on centered
features, or the unbiased estimator of Song et al. 2012 on the Gram matrices).

For probes too large for one Gram matrix, ``MinibatchCKA`` follows Nguyen, Raghu & Kornblith
2021: the unbiased HSIC of each minibatch is averaged over minibatches, separately for the
numerator and both self-terms, and CKA is formed from the averages. Being built from unbiased
estimates, the result does not depend on the batch size in expectation.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

MIN_BATCH = 4     # the unbiased HSIC divides by n(n-3)


def _as_matrix(x) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() < 2:
        raise ValueError(f"activations must be [n, features...], got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1).double()


def gram_linear(x) -> Tensor:
    x = _as_matrix(x)
    return x @ x.T


def center_gram(k: Tensor) -> Tensor:
    k = k.clone()
    k -= k.mean(0, keepdim=True)
    k -= k.mean(1, keepdim=True)
    return k


def hsic_unbiased(k: Tensor, l: Tensor) -> float:
    """Song et al. 2012 unbiased HSIC estimator (up to the constant factor, which cancels in CKA)."""
    n = k.shape[0]
    if n < MIN_BATCH:
        raise ValueError(f"the unbiased HSIC needs at least {MIN_BATCH} examples, got {n}")
    kt = k - torch.diag(torch.diag(k))
    lt = l - torch.diag(torch.diag(l))
    term = (kt * lt).sum() + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2.0 * (kt.sum(0) @ lt.sum(0)) / (n - 2)
    return float(term / (n * (n - 3)))


def linear_cka(x, y, unbiased: bool = False) -> float:
    """CKA of the full probe. Biased form computed in whichever space is smaller."""
    x, y = _as_matrix(x), _as_matrix(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    if unbiased:
        k, l = gram_linear(x), gram_linear(y)
        xy, xx, yy = hsic_unbiased(k, l), hsic_unbiased(k, k), hsic_unbiased(l, l)
        return _ratio(xy, xx, yy)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    n, p1, p2 = x.shape[0], x.shape[1], y.shape[1]
    if n * n < p1 * p2:
        k, l = x @ x.T, y @ y.T
        xy, xx, yy = (k * l).sum(), (k * k).sum(), (l * l).sum()
    else:
        xy = ((y.T @ x) ** 2).sum()
        xx = ((x.T @ x) ** 2).sum()
        yy = ((y.T @ y) ** 2).sum()
    return _ratio(float(xy), float(xx), float(yy))


def _ratio(xy: float, xx: float, yy: float) -> float:
    den = xx * yy
    return xy / math.sqrt(den) if den > 0 else math.nan


class MinibatchCKA:
    """Accumulates unbiased minibatch HSIC for every (row, column) representation pair.

    ``update(rows, cols)`` takes dicts name -> activations of the same minibatch ([b, ...]);
    ``pairs`` (optional) restricts which (row, col) cells are computed, the rest stay NaN.
    """

    def __init__(self, rows: Sequence[str], cols: Sequence[str], pairs=None):
        self.rows, self.cols = list(rows), list(cols)
        self.want = np.ones((len(self.rows), len(self.cols)), dtype=bool)
        if pairs is not None:
            self.want[:] = False
            ri = {r: i for i, r in enumerate(self.rows)}
            ci = {c: j for j, c in enumerate(self.cols)}
            for r, c in pairs:
                self.want[ri[r], ci[c]] = True
        self.xy = np.zeros(self.want.shape)
        self.xx = np.zeros(len(self.rows))
        self.yy = np.zeros(len(self.cols))
        self.batches = 0
        self.examples = 0

    @staticmethod
    def _prepared(acts: Mapping[str, Tensor], names: Sequence[str]):
        """Per representation: diagonal-free Gram K̃ (flattened), its column sums and total."""
        grams, sums, totals = [], [], []
        for name in names:
            k = gram_linear(acts[name])
            k.fill_diagonal_(0.0)
            grams.append(k.reshape(-1))
            s = k.sum(0)
            sums.append(s)
            totals.append(s.sum())
        return torch.stack(grams), torch.stack(sums), torch.stack(totals)

    @staticmethod
    def _hsic(a, b, n: int) -> Tensor:
        """hsic_unbiased for every pair (a_i, b_j) at once."""
        ga, sa, ta = a
        gb, sb, tb = b
        term = ga @ gb.T + torch.outer(ta, tb) / ((n - 1) * (n - 2)) - 2.0 * (sa @ sb.T) / (n - 2)
        return term / (n * (n - 3))

    @staticmethod
    def _hsic_self(a, n: int) -> Tensor:
        g, s, t = a
        term = (g * g).sum(1) + t * t / ((n - 1) * (n - 2)) - 2.0 * (s * s).sum(1) / (n - 2)
        return term / (n * (n - 3))

    def update(self, rows: Mapping[str, Tensor], cols: Mapping[str, Tensor]) -> None:
        n = next(iter(rows.values())).shape[0]
        if n < MIN_BATCH:
            raise ValueError(f"minibatch CKA needs batches of at least {MIN_BATCH} examples, got {n}")
        for acts in (*rows.values(), *cols.values()):
            if acts.shape[0] != n:
                raise ValueError("every representation of a minibatch must hold the same examples")
        a = self._prepared(rows, self.rows)
        b = self._prepared(cols, self.cols)
        self.xy += self._hsic(a, b, n).cpu().numpy()
        self.xx += self._hsic_self(a, n).cpu().numpy()
        self.yy += self._hsic_self(b, n).cpu().numpy()
        self.batches += 1
        self.examples += n

    def result(self) -> np.ndarray:
        """[rows, cols] CKA from the batch-averaged HSIC terms (NaN where not requested)."""
        if not self.batches:
            raise ValueError("minibatch CKA: no batch was added")
        den = np.sqrt(np.maximum(self.xx[:, None] * self.yy[None, :], 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 0, self.xy / np.where(den > 0, den, 1.0), np.nan)
        return np.where(self.want, out, np.nan)
