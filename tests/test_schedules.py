"""Orderings and weightings as exact per-step weight sequences (no model needed here)."""
import numpy as np
import pytest
import torch

from mtlsweep.schedules.base import Joint
from mtlsweep.schedules.factory import build_schedule, task_order
from mtlsweep.schedules.orderings import Annealed, Curriculum, RoundRobin, TaskPerEpoch, WarmStart
from mtlsweep.schedules.weighting import PCGrad, per_task_gradients
from mtlsweep.config.run import RunConfig

TASKS = ["a", "b", "c"]


def seq(s, epochs, steps):
    return [[int(torch.argmax(s.weights(e, k, steps))) if s.weights(e, k, steps).sum() == 1
             else tuple(s.weights(e, k, steps).tolist()) for k in range(steps)] for e in range(1, epochs + 1)]


def sched(**over):
    cfg = RunConfig().with_overrides({f"schedule.{k}": v for k, v in over.items()})
    return build_schedule(cfg.schedule, TASKS, prevalence=np.array([0.1, 0.3, 0.2]),
                          sizes=np.array([100, 400, 25]), epochs=4, seed=0)


def test_joint_is_all_ones():
    s = sched()
    assert isinstance(s, Joint) and s.weights(1, 0, 5).tolist() == [1.0, 1.0, 1.0]


def test_task_per_epoch_blocks_in_order():
    s = sched(order="task_per_epoch", order_list=["c", "a", "b"])
    assert seq(s, 2, 6) == [[2, 2, 0, 0, 1, 1]] * 2
    # 7 steps over 3 tasks: blocks of 3, 2, 2 steps (floor(step*T/steps))
    assert seq(s, 1, 7) == [[2, 2, 2, 0, 0, 1, 1]]


def test_task_per_epoch_by_prevalence_and_shuffled():
    s = sched(order="task_per_epoch", order_by="prevalence")
    assert seq(s, 1, 3) == [[1, 2, 0]]                      # 0.3, 0.2, 0.1: most prevalent first
    s = sched(order="task_per_epoch", order_by="prevalence", order_descending=False)
    assert seq(s, 1, 3) == [[0, 2, 1]]
    s = sched(order="task_per_epoch", order_by="shuffle")
    orders = [tuple(x) for x in seq(s, 6, 3)]
    assert all(sorted(o) == [0, 1, 2] for o in orders) and len(set(orders)) > 1
    assert orders == [tuple(x) for x in seq(sched(order="task_per_epoch", order_by="shuffle"), 6, 3)]


def test_round_robin_cycles_across_epochs():
    s = sched(order="round_robin")
    assert seq(s, 2, 4) == [[0, 1, 2, 0], [1, 2, 0, 1]]


def test_curriculum_entries_given_and_even_never_drop():
    s = sched(order="curriculum", order_list=["b", "a", "c"], curriculum_epochs=[1, 2, 4])
    w = [s.weights(e, 0, 3).tolist() for e in range(1, 6)]
    assert w == [[0, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert Curriculum.even_entries(3, 4) == [1, 1, 2]
    s = sched(order="curriculum")
    prev = np.zeros(3)
    for e in range(1, 5):
        cur = s.weights(e, 0, 3).numpy()
        assert np.all(cur >= prev) and cur.sum() >= 1
        prev = cur
    assert prev.sum() == 3


def test_annealed_frequencies_follow_n_alpha():
    sizes = np.array([100, 400, 25])
    s = Annealed(3, sizes, epochs=3, floor=0.0, seed=1)
    assert s.alpha(1) == 1.0 and s.alpha(2) == 0.5 and s.alpha(3) == 0.0
    steps = 6000
    for epoch in (1, 2, 3):
        p = sizes ** s.alpha(epoch) / (sizes ** s.alpha(epoch)).sum()
        counts = np.bincount([int(torch.argmax(s.weights(epoch, k, steps))) for k in range(steps)], minlength=3)
        se = np.sqrt(p * (1 - p) / steps)
        assert np.all(np.abs(counts / steps - p) < 5 * se), (epoch, counts / steps, p)


def test_warm_start_fixed_epochs_then_ordering():
    s = sched(order="round_robin", warm_start={"task": "b", "epochs": 2})
    assert isinstance(s, WarmStart)
    got = []
    for e in range(1, 5):
        got.append([int(torch.argmax(s.weights(e, k, 2))) for k in range(2)])
        s.observe(e, np.array([0.5, 0.6 + 0.01 * e, 0.5]))
    assert got == [[1, 1], [1, 1], [0, 1], [2, 0]]        # the ordering restarts at its epoch 1


def test_warm_start_until_plateau():
    s = WarmStart(3, task=0, epochs=0, then=Joint(3), until_plateau=True)
    aurocs = [0.6, 0.7, 0.69, 0.9]
    phases = []
    for e, a in enumerate(aurocs, start=1):
        phases.append(s.weights(e, 0, 1).tolist())
        s.observe(e, np.array([a, 0.5, 0.5]))
    assert phases == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]]


def test_state_round_trip_continues_the_same_sequence():
    a = sched(order="annealed", warm_start={"task": "a", "until_plateau": True})
    full = []
    for e in range(1, 5):
        full.append([a.weights(e, k, 5).tolist() for k in range(5)])
        a.observe(e, np.array([0.6, 0.5, 0.5]) if e < 2 else np.array([0.55, 0.5, 0.5]))
    b = sched(order="annealed", warm_start={"task": "a", "until_plateau": True})
    part = []
    for e in range(1, 3):
        part.append([b.weights(e, k, 5).tolist() for k in range(5)])
        b.observe(e, np.array([0.6, 0.5, 0.5]) if e < 2 else np.array([0.55, 0.5, 0.5]))
    c = sched(order="annealed", warm_start={"task": "a", "until_plateau": True})
    c.load_state_dict(b.state_dict())
    for e in range(3, 5):
        part.append([c.weights(e, k, 5).tolist() for k in range(5)])
        c.observe(e, np.array([0.55, 0.5, 0.5]))
    assert part == full


@pytest.mark.parametrize("over, pattern", [
    ({"warm_start": {"task": "zz", "epochs": 1}}, r"schedule\.warm_start\.task='zz' is not among the run's tasks"),
    ({"warm_start": {"task": 5, "epochs": 1}}, r"schedule\.warm_start\.task=5: index out of range"),
    ({"warm_start": {"task": "a", "epochs": 4}}, r"leaves no epoch for the other tasks"),
    ({"order": "task_per_epoch", "order_list": ["a", "a", "b"]}, r"each of the run's 3 tasks exactly once"),
    ({"order": "curriculum", "curriculum_epochs": [1, 2]}, r"one entry epoch per task \(3\)"),
])
def test_invalid_schedules_name_the_field(over, pattern):
    with pytest.raises(ValueError, match=pattern):
        sched(**over)


def test_pcgrad_two_tasks_removes_conflict_and_keeps_agreement():
    g = torch.tensor([[1.0, 1.0], [-1.0, 0.5]])
    proj, conflicts = PCGrad.project(g, [0, 1])
    assert conflicts == 2
    assert proj[0] @ g[1] >= -1e-6 and proj[1] @ g[0] >= -1e-6
    agree = torch.tensor([[1.0, 0.2], [0.5, 1.0]])
    proj, conflicts = PCGrad.project(agree, [1, 0])
    assert conflicts == 0 and torch.equal(proj, agree)


def test_per_task_gradients_match_separate_backward_passes():
    torch.manual_seed(0)
    w = torch.randn(5, 4, requires_grad=True)
    x = torch.randn(8, 5)
    losses = torch.tanh(x @ w).pow(2).mean(0)      # 4 "tasks"
    batched = per_task_gradients(losses, [w], chunk=3)
    for t in range(4):
        (g,) = torch.autograd.grad(losses[t], [w], retain_graph=True)
        assert torch.allclose(batched[t], g.flatten(), atol=1e-6)
