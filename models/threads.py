"""Capping a fit's threads (torch and OpenMP: features, scikit-learn, xgboost) and restoring them after."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def limited_threads(n_jobs: Optional[int]):
    """At most ``n_jobs`` threads for torch and every OpenMP/BLAS pool inside the block (None: no cap)."""
    if n_jobs is None:
        yield
        return

    before = torch.get_num_threads()
    torch.set_num_threads(n_jobs)
    try:
        with threadpool_limits(limits=n_jobs):
            yield
    finally:
        torch.set_num_threads(before)
