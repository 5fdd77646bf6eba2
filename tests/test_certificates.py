"""Convergence and tuning certificates: what makes an arm fit for a verdict."""
from pathlib import Path

import pytest

from mtlsweep.training.certificates import (edge, epoch_convergence, finish_overrides, fitted_convergence,
                                            tuning_edges)


def test_a_run_whose_best_epoch_is_its_last_is_not_converged_and_says_how_to_finish():
    c = epoch_convergence(60, 60, Path("/runs/r"), epoch_cap=60, patience=8)
    assert not c.converged
    assert "best epoch 60 of 60" in c.detail
    assert "mtlsweep train --config /runs/r/config.yaml --resume /runs/r --set train.epochs=120" in c.detail
    # a plateau of max(3, 10% of the epochs run) after the best epoch is converged
    assert epoch_convergence(40, 48, Path("r"), 60, 8).converged
    assert not epoch_convergence(55, 60, Path("r"), 60, 8).converged       # 5 < 6
    assert epoch_convergence(10, 13, Path("r"), 60, 3).converged           # 3 >= max(3, 2)
    # stopped by a patience shorter than the rule asks: more patience, not more epochs
    assert finish_overrides(100, 104, epoch_cap=150, patience=4) == {"train.epochs": 150, "train.patience": 15}
    assert finish_overrides(60, 60, epoch_cap=60, patience=30) == {"train.epochs": 120}


def test_fitted_references_are_converged_when_every_task_stopped_on_its_own():
    assert fitted_convergence({"a": True, "b": True}, "stopped", "raise it").converged
    c = fitted_convergence({"a": True, "b": False}, "stopped", "raise gbm.n_estimators")
    assert not c.converged and "1/2 tasks" in c.detail and "b" in c.detail and "raise gbm.n_estimators" in c.detail


@pytest.mark.parametrize("value,spec,side", [
    (0.0125, {"values": [0.002, 0.005, 0.0125]}, "high"),
    (0.002, {"values": [0.002, 0.005, 0.0125]}, "low"),
    (0.005, {"values": [0.002, 0.005, 0.0125]}, None),
    (0.0, {"values": [0.0, 0.01, 0.1]}, None),                      # 0 is a bound of its own: nothing to widen
    (0.011, {"low": 0.001, "high": 0.1, "log": True}, None),        # log-midpoint
    (0.0012, {"low": 0.001, "high": 0.1, "log": True}, "low"),      # within 10% of the log range
    (0.15, {"low": 0.0, "high": 1.0}, None),
    (0.95, {"low": 0.0, "high": 1.0}, "high"),
    (2, {"low": 0, "high": 2, "int": True}, "high"),
    ("l2", {"values": ["none", "l2"]}, None),                       # an unordered choice has no edge
])
def test_a_value_at_the_edge_of_its_range_is_flagged(value, spec, side):
    assert edge(value, spec) == side


def test_tuning_edges_name_the_key_the_value_and_the_remedy():
    lines = tuning_edges({"optim.lr": 0.0125, "optim.weight_decay": 0.1},
                         {"optim.lr": {"values": [0.002, 0.005, 0.0125]}, "optim.weight_decay": {"values": [0.03, 0.1, 0.3]}})
    assert [str(e) for e in lines] == ["optim.lr=0.0125 at the high edge of {0.002, 0.005, 0.0125}: widen"]
    assert (lines[0].key, lines[0].side) == ("optim.lr", "high")
    per_task = tuning_edges({"kmer.C": [1.0, 0.1, 0.1]}, {"kmer.C": {"values": [0.01, 0.1, 1.0]}})
    assert [str(e) for e in per_task] == ["kmer.C=1.0 at the high edge of {0.01, 0.1, 1} for 1/3 tasks: widen"]
