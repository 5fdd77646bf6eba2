"""The TorchJD weighting arms, random loss weighting and fixed task weights inside a real backward
pass: each arm trains, a task switched off or unlabelled is left out, random weights are seeded,
fixed weights scale the losses; the hand-written PCGrad agrees with TorchJD's."""
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn
from torchjd import aggregation as jd

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.registry import WEIGHTINGS
from mtlsweep.config.run import RunConfig, load_config
from mtlsweep.schedules import jacobian_weighting as jw
from mtlsweep.schedules.factory import build_weighting
from mtlsweep.schedules.weighting import Fixed, PCGrad, RandomLoss
from mtlsweep.search.space import load_space
from mtlsweep.training.loss import masked_bce_per_task
from tests.test_schedules_training import TASKS
from tests.test_schedules_training import setup as _setup

REPO = Path(__file__).resolve().parents[1]
JACOBIAN_ARMS = [e.name for e in WEIGHTINGS if e.target.startswith("mtlsweep.schedules.jacobian_weighting:")]


def setup(weighting, **over):
    # The tiny hard model and batch of the schedule tests, with this weighting.
    return _setup(2, **{"schedule.weighting": weighting, **over})


def flat_grad(params):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def step_grads(cfg, model, x, y, mask, weights, seed=0):
    """Shared and tower gradients of one backward pass of a freshly built weighting."""
    weighting = build_weighting(cfg.schedule, 4, seed=seed, task_names=TASKS)
    model.zero_grad(set_to_none=True)
    per_task, known = masked_bce_per_task(model(x), y, mask)
    weighting.backward(per_task, weights, model, known)
    return flat_grad(model.shared_parameters()), flat_grad(model.tower_parameters()), weighting


def test_the_arms_the_issue_names_are_registered():
    assert {"upgrad", "nash_mtl", "cagrad", "aligned_mtl", "imtl_g"} <= set(JACOBIAN_ARMS)
    assert {"random", "fixed"} <= set(WEIGHTINGS.names)
    assert all(WEIGHTINGS[a].kind == "shared" for a in JACOBIAN_ARMS)


@pytest.mark.parametrize("arm", JACOBIAN_ARMS)
def test_each_jacobian_arm_trains_a_step_and_leaves_towers_their_own_gradient(arm):
    cfg, model, x, y, mask = setup(arm)
    before = [p.detach().clone() for p in model.shared_parameters()]
    shared, towers, weighting = step_grads(cfg, model, x, y, mask, torch.ones(4))
    assert torch.isfinite(shared).all() and shared.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.shared_parameters()))
    model.zero_grad(set_to_none=True)
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    assert torch.isfinite(per_task).all()
    # The towers' gradients are those of the plain sum (after the step, so recompute both).
    _, towers, _ = step_grads(cfg, model, x, y, mask, torch.ones(4))
    model.zero_grad(set_to_none=True)
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    per_task.sum().backward()
    assert torch.allclose(towers, flat_grad(model.tower_parameters()), atol=1e-6)
    assert "weighting/jd_cos_to_sum" in weighting.report()


@pytest.mark.parametrize("arm", JACOBIAN_ARMS)
def test_a_task_switched_off_or_unlabelled_is_left_out_of_the_jacobian(arm):
    cfg, model, x, y, mask = setup(arm)
    seen = []
    jacobian = jw.per_task_gradients
    with mock.patch.object(jw, "per_task_gradients", lambda losses, *a: seen.append(len(losses)) or jacobian(losses, *a)):
        off = torch.tensor([1.0, 1.0, 0.0, 1.0])
        g_off, _, _ = step_grads(cfg, model, x, y, mask, off)
        flipped = y.clone()
        flipped[:, 2] = 1 - flipped[:, 2]
        assert torch.equal(g_off, step_grads(cfg, model, x, flipped, mask, off)[0])
        # No labelled sample of task c in the batch (known 0): its labels say nothing either.
        unlabelled = mask.clone()
        unlabelled[:, 2] = False
        g_unknown, _, _ = step_grads(cfg, model, x, y, unlabelled, torch.ones(4))
        assert torch.equal(g_unknown, step_grads(cfg, model, x, flipped, unlabelled, torch.ones(4))[0])
        # ...while with task c counted its labels do matter.
        g_all = step_grads(cfg, model, x, y, mask, torch.ones(4))[0]
        assert not torch.allclose(g_all, step_grads(cfg, model, x, flipped, mask, torch.ones(4))[0])
    assert seen == [3, 3, 3, 3, 4, 4]


def test_one_counted_task_is_its_ordinary_gradient():
    cfg, model, x, y, mask = setup("upgrad")
    one = torch.tensor([0.0, 1.0, 0.0, 0.0])
    g, _, _ = step_grads(cfg, model, x, y, mask, one)
    model.zero_grad(set_to_none=True)
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    per_task[1].backward()
    assert torch.allclose(g, flat_grad(model.shared_parameters()), atol=1e-7)


def test_aggregate_scale_tasks_is_native_times_the_counted_tasks():
    cfg, model, x, y, mask = setup("upgrad")
    g_tasks, _, _ = step_grads(cfg, model, x, y, mask, torch.ones(4))
    native = cfg.with_overrides({"schedule.aggregate_scale": "native"})
    g_native, _, _ = step_grads(native, model, x, y, mask, torch.ones(4))
    assert torch.allclose(g_tasks, 4 * g_native, rtol=1e-5, atol=1e-7)


class Toy(nn.Module):
    """A linear trunk and heads whose task gradients agree enough for Nash-MTL's bargaining."""

    def __init__(self, n_tasks=3):
        super().__init__()
        torch.manual_seed(1)
        self.trunk, self.heads = nn.Linear(6, 5), nn.Linear(5, n_tasks)

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def losses(self, x, y):
        return ((self.heads(torch.tanh(self.trunk(x))) - y) ** 2).mean(0)


def test_nash_mtl_state_is_in_the_state_dict_and_a_resumed_run_solves_alike():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 1).repeat(1, 3) + 0.1 * torch.randn(32, 3)
    model = Toy()
    a = jw.NashMTL(3, optim_niter=20)
    for _ in range(2):
        model.zero_grad()
        a.backward(model.losses(x, y), torch.ones(3), model)
    assert a.report()["weighting/nash_unsolved_frac"] == 0.0
    assert not torch.equal(a.alpha, torch.ones(3, dtype=torch.float64)) and a.solved_for.all()
    b = jw.NashMTL(3, optim_niter=20)
    b.load_state_dict(a.state_dict())
    grads = []
    for w in (a, b):
        model.zero_grad()
        w.backward(model.losses(x, y), torch.ones(3), model)
        grads.append(flat_grad(model.shared_parameters()))
    assert torch.equal(grads[0], grads[1])
    assert torch.equal(a.alpha, b.alpha)


def test_nash_mtl_update_every_reuses_the_weights_with_one_backward_pass():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 1).repeat(1, 3) + 0.1 * torch.randn(32, 3)
    model = Toy()
    w = jw.NashMTL(3, update_every=2, max_norm=0.0)
    model.zero_grad()
    w.backward(model.losses(x, y), torch.ones(3), model)            # step 0: solves
    alpha = w.alpha.clone()
    model.zero_grad()
    with mock.patch.object(jw, "per_task_gradients", side_effect=AssertionError("no Jacobian on a reused step")):
        w.backward(model.losses(x, y), torch.ones(3), model)        # step 1: reuses
    got = flat_grad(model.shared_parameters())
    model.zero_grad()
    (alpha.float() * model.losses(x, y)).sum().backward()
    assert torch.allclose(got, flat_grad(model.shared_parameters()), atol=1e-6)


def test_graddrop_draws_are_seeded_by_seed_and_step_and_leave_the_torch_stream_alone():
    cfg, model, x, y, mask = setup("graddrop")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    g0, _, _ = step_grads(cfg, model, x, y, mask, torch.ones(4), seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(g0, step_grads(cfg, model, x, y, mask, torch.ones(4), seed=0)[0])
    assert not torch.equal(g0, step_grads(cfg, model, x, y, mask, torch.ones(4), seed=1)[0])


def test_jacobian_arms_need_shared_layers():
    with pytest.raises(ConfigError, match="schedule.weighting=upgrad needs shared parameters"):
        RunConfig().with_overrides({"schedule.weighting": "upgrad", "model.sharing.shared_layers": 0})


# ---- random loss weighting -----------------------------------------------------------------

def draws(seed, steps=3, counted=(True,) * 4, scale="tasks"):
    w = RandomLoss(4, seed=seed, scale=scale)
    out = []
    for _ in range(steps):
        out.append(w.draw(torch.tensor(counted)))
        w.steps += 1
    return torch.stack(out)


def test_random_weighting_is_seeded_and_reproducible():
    a, b, c = draws(0), draws(0), draws(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])                              # redrawn each step
    assert torch.allclose(a.mean(1), torch.ones(3))                 # mean one: equal weighting's scale
    assert torch.allclose(draws(0, scale="native").sum(1), torch.ones(3))
    off = draws(0, counted=(True, False, True, True))
    assert torch.equal(off[:, 1], torch.zeros(3)) and torch.allclose(off.sum(1), torch.full((3,), 3.0))


def test_random_weighting_takes_the_run_seed_and_resumes_its_draws():
    cfg = RunConfig().with_overrides({"schedule.weighting": "random"})
    w = build_weighting(cfg.schedule, 4, seed=7)
    assert w.seed == 7
    p = torch.ones(4, requires_grad=True)
    for _ in range(2):
        w.backward(p * 1.0, torch.ones(4), None, torch.ones(4))
    resumed = build_weighting(cfg.schedule, 4, seed=7)
    resumed.load_state_dict(w.state_dict())
    counted = torch.ones(4, dtype=torch.bool)
    assert torch.equal(resumed.draw(counted), w.draw(counted)) and int(resumed.steps) == 2
    # The objective is the drawn weights times the ordering's weights times the losses.
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0], requires_grad=True)
    order = torch.tensor([1.0, 0.5, 0.0, 1.0])
    lam = w.draw(order != 0)
    assert w.backward(losses, order, None, torch.ones(4)) == pytest.approx(float((lam * order * losses.detach()).sum()))
    assert torch.allclose(losses.grad, lam * order)
    assert "weighting/random_weight_max" in w.report()


# ---- fixed task weights --------------------------------------------------------------------

def test_fixed_weights_scale_the_losses():
    cfg, model, x, y, mask = setup("fixed", **{"schedule.task_weights": [2.0, 1.0, 0.5, 0.0]})
    g, towers, _ = step_grads(cfg, model, x, y, mask, torch.ones(4))
    model.zero_grad(set_to_none=True)
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    (torch.tensor([2.0, 1.0, 0.5, 0.0]) * per_task).sum().backward()
    assert torch.allclose(g, flat_grad(model.shared_parameters()), atol=1e-7)
    by_name = cfg.with_overrides({"schedule.task_weights": {"b": 3.0}})
    assert build_weighting(by_name.schedule, 4, task_names=TASKS).task_weights.tolist() == [1.0, 3.0, 1.0, 1.0]
    # Read from the config when built, not from a checkpoint: population-based training changes them.
    assert "task_weights" not in Fixed([1.0, 2.0]).state_dict()


@pytest.mark.parametrize("over,pattern", [
    ({"schedule.task_weights": [1.0, -1.0]}, r"schedule\.task_weights: weights must be finite numbers >= 0"),
    ({"schedule.task_weights": [0.0, 0.0]}, r"schedule\.task_weights: at least one task needs a weight > 0"),
    ({"schedule.task_weights": "heavy"}, r"schedule\.task_weights: expected a list of one weight per task"),
    ({"schedule.task_weights": {"a": True}}, r"schedule\.task_weights: weights must be finite numbers"),
    ({"schedule.task_weights": [1.0], "schedule.weighting": "equal"},
     r"schedule\.task_weights is read by schedule\.weighting=fixed only"),
])
def test_bad_task_weights_are_refused_when_the_config_loads(over, pattern):
    with pytest.raises(ConfigError, match=pattern):
        RunConfig().with_overrides({"schedule.weighting": "fixed", **over})


@pytest.mark.parametrize("value,pattern", [
    ([1.0, 2.0], r"schedule\.task_weights has 2 weights; the run has 4 tasks"),
    ({"e": 2.0}, r"schedule\.task_weights: 'e' is not among the run's tasks \(a, b, c, d\)"),
])
def test_task_weights_that_do_not_fit_the_run_are_refused_when_built(value, pattern):
    cfg = RunConfig().with_overrides({"schedule.weighting": "fixed", "schedule.task_weights": value})
    with pytest.raises(ValueError, match=pattern):
        build_weighting(cfg.schedule, 4, task_names=TASKS)


def test_the_fixed_weight_grid_example_is_valid():
    base = load_config(REPO / "search" / "configs" / "hard.yaml")
    space = load_space(REPO / "search" / "spaces" / "grids" / "fixed_weights.yaml", base)
    cfgs = [base.with_overrides(space.overrides(p)) for p in space.points()]
    assert {c.schedule.weighting for c in cfgs} == {"equal", "fixed"}
    assert {"schedule.task_weights.g0_t00"} <= set().union(*(c.flatten() for c in cfgs))


# ---- PCGrad against TorchJD's ---------------------------------------------------------------

def test_pcgrad_agrees_with_torchjd_on_a_fixed_gradient_matrix():
    """Ours draws one order per step for every task, TorchJD one per task (torch.randperm): with
    two tasks there is one order, and with the identity order for both they must agree."""
    gen = torch.Generator().manual_seed(0)
    for n in (2, 5):
        g = (torch.randn(n, 40, generator=gen, dtype=torch.float64)
             + 0.3 * torch.randn(1, 40, generator=gen, dtype=torch.float64))
        g[1] = -0.8 * g[0] + 0.1 * g[1]                             # a sure conflict
        ours, conflicts = PCGrad.project(g, list(range(n)))
        with mock.patch("torch.randperm", lambda k, **kw: torch.arange(k)):
            theirs = jd.PCGrad()(g)
        assert conflicts > 0
        assert torch.allclose(ours.sum(0), theirs, rtol=1e-10, atol=1e-12)
    # Two tasks: every order is the same order.
    g2 = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5]], dtype=torch.float64)
    assert torch.allclose(PCGrad.project(g2, [1, 0])[0].sum(0), jd.PCGrad()(g2))
    # The Gramian form equals the projection done on the rows themselves.
    rows = g.clone()
    sq = (g * g).sum(1)
    for j in np.random.default_rng(0).permutation(len(g)):
        dots = rows @ g[j]
        hit = dots < 0
        hit[j] = False
        rows[hit] -= (dots[hit] / sq[j]).unsqueeze(1) * g[j]
    W, _ = PCGrad.project_weights(g @ g.T, np.random.default_rng(0).permutation(len(g)).tolist())
    assert torch.allclose(W @ g, rows, atol=1e-12)


# ---- through the engine --------------------------------------------------------------------

def test_the_engine_seeds_random_weighting_checkpoints_its_draws_and_refuses_unknown_task_names(tiny_config, tmp_path):
    from conftest import run

    from mtlsweep.training.checkpoint import load_checkpoint
    cfg = tiny_config(**{"schedule.weighting": "random", "train.epochs": 1, "train.seed": 3,
                         "train.steps_per_epoch": 4})
    assert run(cfg, tmp_path / "r").best_epoch == 1
    assert int(load_checkpoint(tmp_path / "r" / "last.pt")["weighting"]["steps"]) == 4
    cfg = tiny_config(**{"schedule.weighting": "upgrad", "train.epochs": 1, "train.steps_per_epoch": 2})
    assert run(cfg, tmp_path / "u").best_epoch == 1
    bad = tiny_config(**{"schedule.weighting": "fixed", "schedule.task_weights": {"task9": 2.0}})
    with pytest.raises(ConfigError, match=r"schedule\.task_weights: 'task9' is not among the run's tasks"):
        run(bad, tmp_path / "f")


def test_task_weights_are_checked_against_data_tasks_when_the_config_loads():
    base = {"schedule.weighting": "fixed", "data.tasks": ["a", "b"]}
    with pytest.raises(ConfigError, match=r"schedule\.task_weights has 3 weights; data\.tasks selects 2 tasks"):
        RunConfig().with_overrides({**base, "schedule.task_weights": [1.0, 2.0, 3.0]})
    with pytest.raises(ConfigError, match=r"schedule\.task_weights: 'c' is not among data\.tasks"):
        RunConfig().with_overrides({**base, "schedule.task_weights": {"c": 2.0}})
    assert RunConfig().with_overrides({**base, "schedule.task_weights": {"b": 2.0}}).schedule.task_weights == {"b": 2.0}
