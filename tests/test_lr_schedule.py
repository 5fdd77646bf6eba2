"""optim.lr_schedule: the rate each epoch trains with, as configured, continued by a resume, and
leaving the identity of a constant-rate run as it was before schedules existed."""
import math

import pytest
import torch
from conftest import run

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import config_fingerprint, run_identity
from mtlsweep.config.run import RunConfig
from mtlsweep.training.lr_schedule import lr_factor


def _optim(**kw):
    return RunConfig().with_overrides({f"optim.{k}": v for k, v in kw.items()}).optim


def test_cosine_follows_torchs_annealing_stepped_once_an_epoch():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.01 * 0.1)
    cfg = _optim(lr=0.01, lr_schedule="cosine", lr_min_ratio=0.1)
    for epoch in range(1, 9):
        assert 0.01 * lr_factor(cfg, epoch, 8, []) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_plateau_cuts_after_its_patience_without_a_gain_and_stops_at_the_floor():
    cfg = _optim(lr_schedule="plateau", lr_patience=2, lr_factor=0.5, lr_min_ratio=0.2)
    scores = [0.6, 0.7, 0.7, 0.69, 0.71, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    history = [{"val/auroc_mean": s} for s in scores]
    got = [lr_factor(cfg, e, 20, history) for e in range(1, len(scores) + 2)]
    # gains at epochs 1, 2 and 5; cut after epochs 4 and 7 (two without a gain each), then after 9
    # to the floor, where the cut after 11 leaves it
    assert got == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2]
    assert lr_factor(_optim(), 7, 20, history) == 1.0


def test_a_run_trains_each_epoch_at_its_schedules_rate_and_a_resume_goes_on_with_it(tiny_config, tmp_path):
    from test_engine import Crash
    cfg = tiny_config(**{"train.epochs": 5, "train.patience": 5, "optim.lr": 0.01, "optim.lr_schedule": "cosine"})
    full = run(cfg, tmp_path / "full")
    want = [0.01 * lr_factor(cfg.optim, e, 5, []) for e in range(1, 6)]
    assert [h["optim/lr_effective"] for h in full.history] == pytest.approx(want)
    assert {h["optim/lr"] for h in full.history} == {0.01}       # as tuned: what a certificate reads
    assert want[0] == pytest.approx(0.01) and want[-1] < 0.002
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, tmp_path / "part", callbacks=[Crash(2)])
    resumed = run(cfg, tmp_path / "part", resume=True)
    assert [h["optim/lr_effective"] for h in resumed.history] == pytest.approx(want)
    assert [h["val/loss"] for h in resumed.history] == [h["val/loss"] for h in full.history]


def test_a_plateau_run_cuts_its_rate_when_validation_stalls(tiny_config, tmp_path):
    # A rate far too high for the tiny model: validation stalls at once, and the schedule cuts it.
    cfg = tiny_config(**{"train.epochs": 8, "train.patience": 4, "optim.lr": 0.5, "optim.lr_schedule": "plateau",
                         "optim.lr_patience": 1, "optim.lr_factor": 0.1})
    result = run(cfg, tmp_path / "run")
    rates = [h["optim/lr_effective"] for h in result.history]
    assert rates == pytest.approx([0.5 * lr_factor(cfg.optim, e, 8, result.history) for e in range(1, len(rates) + 1)])
    assert min(rates) < 0.5, rates


def test_a_plateau_patience_that_early_stopping_would_preempt_is_refused_in_one_line(tiny_config):
    with pytest.raises(ConfigError) as e:
        tiny_config(**{"optim.lr_schedule": "plateau", "optim.lr_patience": 3, "train.patience": 3})
    assert "optim.lr_patience=3 must be below train.patience=3" in str(e.value) and "\n" not in str(e.value)


def test_a_constant_rate_keeps_its_identity_and_a_schedule_changes_it(tiny_config):
    cfg = tiny_config()
    flat = run_identity(cfg, "fp", ["t"])["config"]
    assert not any(k.startswith(("optim.lr_schedule", "optim.lr_patience", "optim.lr_factor", "optim.lr_min"))
                   for k in flat)            # a run from before schedules existed has the same identity
    fp = config_fingerprint(cfg, "fp", ["t"])
    assert config_fingerprint(cfg.with_overrides({"optim.lr_factor": 0.5}), "fp", ["t"]) == fp   # not read
    cosine = cfg.with_overrides({"optim.lr_schedule": "cosine"})
    assert config_fingerprint(cosine, "fp", ["t"]) != fp
    assert config_fingerprint(cosine.with_overrides({"optim.lr_patience": 2}), "fp", ["t"]) == \
        config_fingerprint(cosine, "fp", ["t"])
    assert config_fingerprint(cosine.with_overrides({"optim.lr_min_ratio": 0.1}), "fp", ["t"]) != \
        config_fingerprint(cosine, "fp", ["t"])
    assert not math.isnan(lr_factor(cosine.optim, 1, 3, []))
