"""Schedules and task weightings inside a real model's backward pass."""
import math

import numpy as np
import pytest
import torch

from mtlsweep.models import build_model
from mtlsweep.schedules.factory import build_schedule, build_weighting
from mtlsweep.config.run import RunConfig
from mtlsweep.training.loss import masked_bce_per_task

ARCH = {"model.arch.conv_channels": [6, 6, 6], "model.arch.conv_widths": [5, 3, 3], "model.arch.pool": [2, 2, 2],
        "model.arch.dense": [8, 8], "model.arch.dropout": 0.0}
TASKS = ["a", "b", "c", "d"]


def setup(k=2, **over):
    cfg = RunConfig().with_overrides({**ARCH, "model.sharing.shared_layers": k, **over})
    torch.manual_seed(0)
    model = build_model(cfg.model, n_tasks=4, in_channels=4, seq_len=40, task_names=TASKS, seed=0)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (16, 40)), 4).float().transpose(1, 2)
    y = (torch.rand(16, 4) < 0.4).float()
    mask = torch.ones(16, 4, dtype=torch.bool)
    return cfg, model, x, y, mask


def grads(model, params):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def test_warm_start_phase_only_the_warm_task_moves_shared_parameters():
    cfg, model, x, y, mask = setup(k=2, **{"schedule.warm_start.task": "c", "schedule.warm_start.epochs": 1})
    sched = build_schedule(cfg.schedule, TASKS, prevalence=np.full(4, 0.4), sizes=np.full(4, 16), epochs=3)
    w = sched.weights(1, 0, 10)
    assert w.tolist() == [0, 0, 1, 0]
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    build_weighting(cfg.schedule, 4).backward(per_task, w, model)
    shared = model.shared_parameters()
    got = grads(model, shared)
    model.zero_grad()
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    per_task[2].backward()
    want = grads(model, shared)
    assert all(torch.equal(g, h) for g, h in zip(got, want))
    # Every other task's own parameters got exactly zero gradient.
    model.zero_grad()
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    (w * per_task).sum().backward()
    others = [p for p in model.tower_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert others, "task c's tower learns"
    assert sched.weights(2, 0, 10).tolist() == [1, 1, 1, 1]


def test_uncertainty_weights_are_trained():
    cfg, model, x, y, mask = setup(**{"schedule.weighting": "uncertainty"})
    weighting = build_weighting(cfg.schedule, 4)
    opt = torch.optim.Adam(list(model.parameters()) + list(weighting.parameters()), lr=0.05)
    before = weighting.log_var.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        per_task, _ = masked_bce_per_task(model(x), y, mask)
        weighting.backward(per_task, torch.ones(4), model)
        opt.step()
    assert not torch.equal(before, weighting.log_var.detach())
    assert "weighting/log_var_mean" in weighting.report()


def test_gradnorm_pushes_weights_against_gradient_norm_imbalance():
    cfg, model, x, y, mask = setup(k=2, **{"schedule.weighting": "gradnorm", "schedule.gradnorm_alpha": 0.0})
    weighting = build_weighting(cfg.schedule, 4)
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    weighting.backward(per_task, torch.ones(4), model)
    norms = weighting.last_norms
    g = weighting.task_weights.grad
    # alpha = 0: the target is the mean norm; tasks above it get a positive gradient (weight goes down).
    above = norms > norms.mean()
    assert above.any() and (~above).any()
    assert torch.all(g[above] > 0) and torch.all(g[~above] < 0)
    opt = torch.optim.SGD(weighting.parameters(), lr=0.5)
    opt.step()
    weighting.after_step()
    assert weighting.task_weights.detach().sum().item() == pytest.approx(4.0)
    new = weighting.task_weights.detach() * norms / weighting.task_weights.detach().mean()
    assert new.std() < norms.std()     # norms weighted by the new weights are closer together


def test_pcgrad_leaves_towers_alone_and_sums_projected_shared_gradients():
    cfg, model, x, y, mask = setup(k=2, **{"schedule.weighting": "pcgrad"})
    weighting = build_weighting(cfg.schedule, 4)
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    weighting.backward(per_task, torch.ones(4), model)
    towers = grads(model, model.tower_parameters())
    shared = torch.cat([g.flatten() for g in grads(model, model.shared_parameters())])
    model.zero_grad()
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    per_task.sum().backward()
    plain_towers = grads(model, model.tower_parameters())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(towers, plain_towers))
    # One active task: PCGrad is plain summation.
    model.zero_grad()
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    weighting.backward(per_task, torch.tensor([0.0, 1.0, 0.0, 0.0]), model)
    one = torch.cat([g.flatten() for g in grads(model, model.shared_parameters())])
    model.zero_grad()
    per_task, _ = masked_bce_per_task(model(x), y, mask)
    per_task[1].backward()
    plain_one = torch.cat([g.flatten() for g in grads(model, model.shared_parameters())])
    assert torch.allclose(one, plain_one, atol=1e-6)
    assert shared.abs().sum() > 0


def test_famo_logits_follow_the_slower_task_with_a_known_first_step():
    from mtlsweep.schedules.weighting import FAMO
    famo = FAMO(2, lr=0.025, gamma=0.01)
    p = torch.tensor([1.0, 1.0], requires_grad=True)
    famo.backward(p * p, torch.ones(2), None, torch.tensor([8.0, 8.0]))
    assert torch.equal(famo.logits, torch.zeros(2))          # nothing to compare with yet
    # Task 0's loss halved, task 1's stayed: d(xi) = z * (delta - z.delta) = [+c, -c], and Adam's
    # first step is lr * sign, so task 1 (the one that did not improve) gains exactly 0.025.
    p.grad = None
    q = torch.tensor([0.5 ** 0.5, 1.0], requires_grad=True)
    famo.backward(q * q, torch.ones(2), None, torch.tensor([8.0, 8.0]))
    assert torch.allclose(famo.logits, torch.tensor([-0.025, 0.025]), atol=1e-7)
    z = torch.softmax(famo.logits, 0)
    # The step is sum_t (z_t / l_t) / c * grad l_t with c = sum_t z_t / l_t.
    l = torch.tensor([0.5, 1.0])
    c = (z / l).sum()
    want = (z / l / c) * 2 * q.detach()                       # d(q^2)/dq = 2q
    assert torch.allclose(q.grad, want, atol=1e-6)
    assert famo.report()["weighting/famo_weight_max"] == pytest.approx(float(z.max()))


def test_famo_leaves_a_task_without_labels_out():
    from mtlsweep.schedules.weighting import FAMO
    famo = FAMO(3)
    for step, known in enumerate(([4.0, 4.0, 4.0], [0.0, 4.0, 4.0], [0.0, 4.0, 4.0])):
        p = torch.tensor([1.0, 0.9 - 0.1 * step, 0.8], requires_grad=True)
        losses = p * p
        losses = torch.where(torch.tensor(known) > 0, losses, torch.zeros(3))   # what the masked loss gives
        obj = famo.backward(losses, torch.ones(3), None, torch.tensor(known))
        assert math.isfinite(obj) and torch.isfinite(p.grad).all()
        assert p.grad[0] == 0 if known[0] == 0 else p.grad[0] != 0
    assert famo.logits[0] == 0 and famo.prev_loss[0] == 1.0   # untouched since its labels went away
    assert famo.logits[1] != 0


def test_famo_trains_and_resumes_in_the_engine(tmp_path, tiny_config):
    from mtlsweep.training.engine import LAST, Trainer
    cfg = tiny_config(**{"schedule.weighting": "famo", "train.epochs": 2})
    full = Trainer(cfg, tmp_path / "a", progress=False).fit()
    half = Trainer(cfg.with_overrides({"train.epochs": 1}), tmp_path / "b", progress=False)
    half.fit()
    resumed = Trainer(cfg, tmp_path / "b", progress=False)
    resumed.resume(tmp_path / "b" / LAST)
    assert torch.equal(resumed.weighting.logits, half.weighting.logits)
    assert resumed.fit().best_val_auroc == pytest.approx(full.best_val_auroc, abs=1e-9)
