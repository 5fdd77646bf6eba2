import argparse
import csv
import json
import math

import pytest

from mtlsweep.analysis.cost_scaling import (
    exponents_of,
    growth_exponent,
    measure_isolated,
    measure_point,
    model_config,
    run_study,
)
from mtlsweep.analysis.learning_curves import time_to_target
from mtlsweep.app.analyses import run_cost as run
from mtlsweep.app.analysis_flags import add_cost_arguments as add_arguments
from mtlsweep.data.errors import DataError
from mtlsweep.models import build_model

TINY = dict(arch="tiny", steps=4, warmup=1, batch=16, seq_len=100, threads=1)


def test_hard_cost_grows_much_slower_in_t_than_single_task_towers():
    points = run_study([1, 2, 4, 8, 16], ["single", "hard"], isolate=False, **TINY)
    e = exponents_of(points)
    # Towers: T separate networks per step; hard: one trunk, only the output layer grows. What the
    # models compute is exact; the measured times only keep its order (their size is the bench's to
    # report: a busy machine moves them).
    assert e["single"]["n_params"] == pytest.approx(1.0, abs=1e-9)
    assert e["single"]["flops_per_sample"] == pytest.approx(1.0, abs=1e-9)
    assert e["hard"]["n_params"] < 0.05 and e["hard"]["flops_per_sample"] < 0.05
    assert e["single"]["time_per_step_s"] > e["hard"]["time_per_step_s"]
    by = {(p.family, p.n_tasks): p for p in points}
    assert all(p.time_per_step_s > 0 and math.isfinite(p.epoch_s) for p in points)
    assert by[("hard", 16)].samples_per_s > by[("single", 16)].samples_per_s


def test_parameters_and_flops_are_exactly_linear_in_t_for_single_task_towers():
    one = build_model(model_config("single", "tiny"), 1, 4, 100, None, 0)
    for t in (2, 3, 7, 16):
        m = build_model(model_config("single", "tiny"), t, 4, 100, None, 0)
        assert m.n_params() == t * one.n_params()
        assert m.flops_per_sample() == t * one.flops_per_sample()
    # Hard: every extra task adds one output unit (weights + bias) and nothing else.
    h1 = build_model(model_config("hard", "tiny"), 1, 4, 100, None, 0)
    h9 = build_model(model_config("hard", "tiny"), 9, 4, 100, None, 0)
    assert h9.n_params() - h1.n_params() == 8 * (16 + 1)


def test_soft_family_pays_for_its_coupling_and_cross_stitch_is_available():
    cfg = model_config("soft", "tiny")
    assert cfg.sharing.shared_layers == 0 and cfg.sharing.coupling == "l2" and cfg.sharing.strength == 0.01
    assert model_config("soft", "tiny", soft_coupling="cross_stitch").sharing.coupling == "cross_stitch"
    p = measure_point("soft", 3, **TINY)
    assert p.time_per_step_s > 0 and p.n_params == 3 * build_model(model_config("single", "tiny"), 1, 4, 100,
                                                                   None, 0).n_params()
    with pytest.raises(DataError, match="unknown family"):
        model_config("branchy", "tiny")


def test_a_configuration_measured_in_a_fresh_subprocess():
    p = measure_isolated("hard", 4, isolated=True, **TINY)
    assert p.family == "hard" and p.n_tasks == 4 and p.mem_method == "fresh subprocess, peak RSS"
    assert p.peak_mb > p.mem_mb > 0 and p.samples_per_s == pytest.approx(16 / p.time_per_step_s)
    assert p.epoch_s == pytest.approx(math.ceil(100_000 / 16) * p.time_per_step_s)


def test_growth_exponent_is_the_log_log_slope():
    assert growth_exponent([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert growth_exponent([1, 2, 4, 8], [5, 5, 5, 5]) == pytest.approx(0.0, abs=1e-12)
    assert growth_exponent([1, 4], [1, 16]) == pytest.approx(2.0)
    assert math.isnan(growth_exponent([4], [1.0]))


def test_time_to_target_reads_the_learning_curve():
    history = [{"epoch": 1, "val/auroc_mean": 0.6, "cost/epoch_s": 10.0},
               {"epoch": 2, "val/auroc_mean": float("nan"), "cost/epoch_s": 11.0},
               {"epoch": 3, "val/auroc_mean": 0.81, "cost/epoch_s": 12.0},
               {"epoch": 4, "val/auroc_mean": 0.9, "cost/epoch_s": 9.0}]
    assert time_to_target(history, 0.8) == (3.0, 33.0)
    assert time_to_target(history, 0.6).epochs == 1.0
    never = time_to_target(history, 0.95)
    assert math.isnan(never.epochs) and math.isnan(never.seconds)


def test_cost_command_writes_table_plot_and_exponents(tmp_path, capsys):
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--tasks", "1,2,4", "--families", "hard,soft", "--arch", "tiny", "--steps", "2",
                         "--warmup", "0", "--batch", "8", "--seq-len", "60", "--in-process", "--threads", "1",
                         "--out", str(tmp_path)])
    assert run(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "cost_scaling.csv")))
    # soft needs two towers: no T = 1 point.
    assert [(r["family"], r["n_tasks"]) for r in rows] == [("hard", "1"), ("hard", "2"), ("hard", "4"),
                                                           ("soft", "2"), ("soft", "4")]
    payload = json.loads((tmp_path / "cost_scaling.json").read_text())
    assert set(payload["exponents"]) == {"hard", "soft"} and payload["settings"]["arch"] == "tiny"
    assert (tmp_path / "cost_scaling.png").stat().st_size > 10_000
    assert "growth exponent in T, hard" in capsys.readouterr().out
    bad = p.parse_args(["--tasks", "1,x"])
    with pytest.raises(DataError, match="--tasks"):
        run(bad)

