import pytest
import torch
import torch.nn.functional as F

from mtlsweep.models import build_model
from mtlsweep.config.run import ArchConfig, ModelConfig, SharingConfig

TASKS = ["a", "b", "c"]
L = 50


def tiny(k=0, backend="loop", dropout=0.3, **sharing):
    arch = ArchConfig(conv_channels=[8, 6, 6], conv_widths=[5, 3, 3], pool=[2, 2, 2], dense=[16, 12],
                      dropout=dropout)
    return ModelConfig(arch=arch, sharing=SharingConfig(shared_layers=k, **sharing), backend=backend)


def batch(seed, n=16, tasks=3):
    g = torch.Generator().manual_seed(seed)
    x = F.one_hot(torch.randint(0, 4, (n, L), generator=g), 4).float().transpose(1, 2).contiguous()
    y = torch.randint(0, 2, (n, tasks), generator=g).float()
    mask = torch.rand(n, tasks, generator=g) > 0.2
    return x, y, mask


def task_loss(logits, y, mask):
    return sum(F.binary_cross_entropy_with_logits(logits[mask[:, t], t], y[mask[:, t], t])
               for t in range(logits.shape[1]))


def train(model, steps, lr=0.01):
    opt = torch.optim.SGD(model.param_groups(lr), lr=lr)
    for step in range(steps):
        x, y, mask = batch(step)
        opt.zero_grad()
        (task_loss(model(x), y, mask) + model.coupling_penalty()).backward()
        opt.step()
        model.apply_max_norm(7.0)
    return model


def tower_rows(model, name):
    layer = model.layers[name]
    return [torch.cat([layer.weight[t].reshape(-1), layer.bias[t]]) for t in range(model.n_tasks)]


def test_penalties_match_their_definitions():
    kw = dict(k=2, strength=0.5, tower_init="independent")
    l2 = build_model(tiny(coupling="l2", **kw), 3, 4, L, TASKS, seed=0)
    trace = build_model(tiny(coupling="trace_norm", **kw), 3, 4, L, TASKS, seed=0)
    zero = build_model(tiny(coupling="l2_zero", **kw), 3, 4, L, TASKS, seed=0)
    assert l2.tower_layer_names == ["conv3", "fc1", "fc2"]
    expected_l2, expected_nuc, expected_zero = 0.0, 0.0, 0.0
    for name in l2.tower_layer_names:
        rows = tower_rows(l2, name)
        mean = sum(rows) / len(rows)
        expected_l2 += sum(((r - mean) ** 2).sum() for r in rows)
        expected_nuc += torch.linalg.svdvals(torch.stack([r - mean for r in rows])).sum()   # centred
        expected_zero += sum((r ** 2).sum() for r in rows)
    torch.testing.assert_close(l2.coupling_penalty(), 0.5 * expected_l2)
    torch.testing.assert_close(l2.tower_distance(), expected_l2)
    torch.testing.assert_close(trace.coupling_penalty(), 0.5 * expected_nuc, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(zero.coupling_penalty(), 0.5 * expected_zero)     # λ·Σ_t ‖W_t‖²
    l2.coupling_penalty().backward()
    assert all(p.grad is None for p in l2.shared_parameters())
    assert l2.layers["fc1"].weight.grad.abs().sum() > 0
    assert l2.out.weight.grad is None  # output units are not tied


def test_zero_pull_control_is_a_decay_of_the_coupled_parameters():
    lam = 0.3
    zero = build_model(tiny(k=2, coupling="l2_zero", strength=lam), 3, 4, L, TASKS, seed=0)
    zero.coupling_penalty().backward()
    for name, p in zero.named_parameters():
        coupled = name.startswith(tuple(f"layers.{n}.{w}" for n in zero.tower_layer_names for w in ("weight", "bias")))
        coupled = coupled and ".bn." not in name
        if coupled:
            torch.testing.assert_close(p.grad, 2 * lam * p.detach(), msg=name)
        else:
            assert p.grad is None or not p.grad.any(), name


@pytest.mark.parametrize("coupling", ["l2", "trace_norm"])
def test_sharing_penalties_are_zero_with_zero_gradient_where_the_towers_agree(coupling):
    """A common tower start: the towers' mean is a working network, so the coupling pulls toward
    nothing until they diverge (with independent draws it would act as a weight decay)."""
    model = build_model(tiny(k=0, coupling=coupling, strength=2.0), 3, 4, L, TASKS, seed=0)
    penalty = model.coupling_penalty()
    assert abs(penalty.item()) < 1e-5
    penalty.backward()
    for p in model.tower_parameters():
        assert p.grad is None or p.grad.abs().max().item() < 1e-6
    zero = build_model(tiny(k=0, coupling="l2_zero", strength=2.0), 3, 4, L, TASKS, seed=0)
    assert zero.coupling_penalty().item() > 1.0


@pytest.mark.parametrize("coupling", ["l2", "trace_norm", "l2_zero"])
@pytest.mark.parametrize("opt_name", ["adam", "rmsprop", "sgd"])
def test_zero_strength_is_exactly_the_towers_with_the_same_base_decay(coupling, opt_name):
    from mtlsweep.config.run import OptimConfig
    from mtlsweep.training.optim import build_optimizer
    ocfg = OptimConfig(name=opt_name, lr=0.01, weight_decay=0.05)
    towers = build_model(tiny(k=0), 3, 4, L, TASKS, seed=3)
    coupled = build_model(tiny(k=0, coupling=coupling, strength=0.0), 3, 4, L, TASKS, seed=3)
    singles = [build_model(tiny(k=0), 1, 4, L, [t], seed=3) for t in TASKS]
    models = [towers, coupled, *singles]
    opts = [build_optimizer(ocfg, m) for m in models]
    assert [(g["name"], g["weight_decay"]) for g in opts[0].param_groups] == [("model", 0.05), ("model_no_decay", 0.0)]
    for step in range(5):
        x, y, mask = batch(step)
        for i, (m, o) in enumerate(zip(models, opts)):
            cols = slice(None) if i < 2 else slice(i - 2, i - 1)
            o.zero_grad()
            (task_loss(m(x), y[:, cols], mask[:, cols]) + m.coupling_penalty()).backward()
            o.step()
            m.apply_max_norm(0.5)
    for a, b in zip(towers.state_dict().values(), coupled.state_dict().values()):
        assert torch.equal(a, b)
    state = towers.state_dict()
    for t, single in enumerate(singles):
        for key, value in single.state_dict().items():
            assert torch.equal(state[key][t], value[0]), key


def test_no_penalty_without_coupling_or_strength():
    for sharing in (dict(coupling="none", strength=3.0), dict(coupling="l2", strength=0.0),
                    dict(coupling="l2_zero", strength=0.0)):
        model = build_model(tiny(k=0, **sharing), 3, 4, L, TASKS, seed=0)
        assert model.coupling_penalty().item() == 0.0


@pytest.mark.parametrize("tower_init", ["independent", "common"])
def test_l2_strength_keeps_towers_together(tower_init):
    distances = []
    for strength in (0.0, 0.01, 0.1, 1.0, 10.0):
        model = build_model(tiny(k=0, coupling="l2", strength=strength, tower_init=tower_init), 3, 4, L, TASKS,
                            seed=0)
        start = model.tower_distance().item()
        distances.append(train(model, 15).tower_distance().item())
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    if tower_init == "independent":
        assert distances[-1] < 0.05 * start
    else:
        assert start < 1e-9 and distances[0] > 1e-3


@pytest.mark.parametrize("tower_init,strengths", [("independent", (0.0, 0.01, 0.1, 1.0, 10.0)),
                                                  # from a common start the towers stay near s = 0, where a
                                                  # step of lr·λ = 0.1 overshoots: λ up to 1 there
                                                  ("common", (0.0, 0.01, 0.1, 1.0))])
def test_trace_norm_strength_lowers_the_trace_norm(tower_init, strengths):
    norms = []
    for strength in strengths:
        model = build_model(tiny(k=0, coupling="trace_norm", strength=strength, tower_init=tower_init),
                            3, 4, L, TASKS, seed=0)
        norms.append(train(model, 15).tower_trace_norm().item())
    assert all(a > b for a, b in zip(norms, norms[1:])), norms


def test_cross_stitch_and_weighting_parameters_get_no_weight_decay():
    from mtlsweep.config.run import OptimConfig
    from mtlsweep.training.optim import build_optimizer
    model = build_model(tiny(k=0, coupling="cross_stitch"), 3, 4, L, TASKS, seed=0)
    extra = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(OptimConfig(name="adam", weight_decay=0.1), model, extra_params=extra)
    assert [(g["name"], g["weight_decay"]) for g in opt.param_groups] == \
        [("model", 0.1), ("model_no_decay", 0.0), ("cross_stitch", 0.0), ("weighting", 0.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and ".bn." not in names[id(p)] for p in opt.param_groups[0]["params"])
    assert all(names[id(p)].endswith("bias") or ".bn." in names[id(p)] for p in opt.param_groups[1]["params"])
    every = build_optimizer(OptimConfig(name="adam", weight_decay=0.1, decay_norm_and_bias=True), model)
    assert [g["name"] for g in every.param_groups] == ["model", "cross_stitch"]


@pytest.mark.parametrize("backend", ["loop", "batched"])
def test_identity_cross_stitch_equals_independent_towers(backend):
    plain = build_model(tiny(k=1, backend=backend), 3, 4, L, TASKS, seed=2)
    stitched = build_model(tiny(k=1, backend=backend, coupling="cross_stitch", cross_stitch_self=1.0),
                           3, 4, L, TASKS, seed=2)
    assert stitched.cross_stitch_parameters()
    for name in stitched.tower_layer_names:
        assert torch.equal(stitched.cross_stitch.alpha[name], torch.eye(3))
    x, y, mask = batch(0)
    out_p, out_s = plain(x), stitched(x)
    assert torch.equal(out_p, out_s)
    task_loss(out_p, y, mask).backward()
    task_loss(out_s, y, mask).backward()
    stitched_params = dict(stitched.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(p.grad, stitched_params[name].grad), name


def test_cross_stitch_mixes_towers_and_has_its_own_learning_rate():
    cfg = tiny(k=0, coupling="cross_stitch", cross_stitch_self=0.9, cross_stitch_lr=0.5)
    model = build_model(cfg, 3, 4, L, TASKS, seed=0)
    alpha = model.cross_stitch.alpha["conv1"]
    torch.testing.assert_close(alpha, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    assert sorted(model.cross_stitch.alpha.keys()) == sorted(model.layer_names)
    groups = model.param_groups(0.01)
    assert [(g["name"], g["lr"]) for g in groups] == [("model", 0.01), ("cross_stitch", 0.5)]
    assert len(groups[1]["params"]) == 5
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    plain = build_model(tiny(k=0), 3, 4, L, TASKS, seed=0)
    x, y, mask = batch(0)
    out = model(x)
    assert not torch.allclose(out, plain(x))
    task_loss(out, y, mask).backward()
    assert alpha.grad.abs().sum() > 0
    default_lr = build_model(tiny(k=0, coupling="cross_stitch"), 3, 4, L, TASKS, seed=0)
    assert [g["lr"] for g in default_lr.param_groups(0.01)] == [0.01, 0.01]


def test_cross_stitch_backends_agree():
    cfg = dict(k=2, coupling="cross_stitch", cross_stitch_self=0.7)
    loop = build_model(tiny(backend="loop", **cfg), 3, 4, L, TASKS, seed=4)
    batched = build_model(tiny(backend="batched", **cfg), 3, 4, L, TASKS, seed=4)
    with torch.no_grad():
        for p in loop.cross_stitch_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    batched.load_state_dict(loop.state_dict())
    x, y, mask = batch(3)
    out_l, out_b = loop(x), batched(x)
    torch.testing.assert_close(out_l, out_b, rtol=1e-5, atol=1e-6)
    task_loss(out_l, y, mask).backward()
    task_loss(out_b, y, mask).backward()
    for (name, p), q in zip(loop.named_parameters(), batched.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("coupling", ["l2", "trace_norm", "cross_stitch", "l2_zero"])
def test_couplings_need_towers_and_two_tasks(coupling):
    with pytest.raises(ValueError, match=f"model.sharing.coupling={coupling}.*shared_layers < 5"):
        build_model(tiny(k=5, coupling=coupling, strength=1.0), 3, 4, L, TASKS, seed=0)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        build_model(tiny(k=0, coupling=coupling, strength=1.0), 1, 4, L, ["a"], seed=0)
