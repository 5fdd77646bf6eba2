import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlsweep.models import build_model
from mtlsweep.models.net import auto_backend
from mtlsweep.config.run import ArchConfig, ModelConfig, SharingConfig

TASKS = ["a", "b", "c"]
L = 50


def tiny(k=0, backend="loop", width=1.0, dropout=0.3, **sharing):
    arch = ArchConfig(conv_channels=[8, 6, 6], conv_widths=[5, 3, 3], pool=[2, 2, 2], dense=[16, 12],
                      dropout=dropout)
    return ModelConfig(arch=arch, sharing=SharingConfig(shared_layers=k, **sharing), width=width,
                       backend=backend)


def batch(seed, n=16, tasks=3, length=L):
    g = torch.Generator().manual_seed(seed)
    x = F.one_hot(torch.randint(0, 4, (n, length), generator=g), 4).float().transpose(1, 2).contiguous()
    y = torch.randint(0, 2, (n, tasks), generator=g).float()
    mask = torch.rand(n, tasks, generator=g) > 0.2
    return x, y, mask


def task_loss(logits, y, mask):
    """Sum over tasks of each task's masked mean BCE (the trainer's loss)."""
    total = logits.new_zeros(())
    for t in range(logits.shape[1]):
        m = mask[:, t]
        total = total + F.binary_cross_entropy_with_logits(logits[m, t], y[m, t])
    return total


def make_opt(name, params):
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=0.01, alpha=0.98)
    return torch.optim.Adam(params, lr=0.01)


# ---- Basset ---------------------------------------------------------------------------------
def test_basset_parameter_count_and_lengths():
    model = build_model(ModelConfig(), 164, 4, 600, [f"cell{i}" for i in range(164)], seed=0)
    assert model.n_params() == 4_135_064
    lengths = [600]
    for spec in model.specs:
        if spec.kind == "conv":
            lengths += [spec.conv_len, spec.out_len]
    assert lengths == [600, 582, 194, 184, 46, 40, 10]
    assert model.layer_names == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert model.hard and model.out.weight.shape == (1, 164, 1000)
    model.eval()
    outs = model.layer_outputs(torch.zeros(2, 4, 600))
    assert [outs[n].shape[-1] for n in ("conv1", "conv2", "conv3")] == [194, 46, 10]
    assert outs["out"].shape == (2, 164)


def test_block_order_matches_reference_basset_layers():
    """conv -> BN -> ReLU -> max-pool(ceil); linear -> BN -> ReLU (dropout off here)."""
    cfg = tiny(k=5, dropout=0.0)
    model = build_model(cfg, 3, 4, L, TASKS, seed=1)
    ref_layers = []
    in_ch = 4
    for name, out, width, pool in zip(["conv1", "conv2", "conv3"], [8, 6, 6], [5, 3, 3], [2, 2, 2]):
        conv, bn = nn.Conv1d(in_ch, out, width), nn.BatchNorm1d(out)
        src = model.layers[name]
        conv.weight.data.copy_(src.weight[0]); conv.bias.data.copy_(src.bias[0])
        bn.weight.data.copy_(src.bn.weight[0] + 0.1); bn.bias.data.copy_(src.bn.bias[0] + 0.2)
        with torch.no_grad():
            src.bn.weight.add_(0.1); src.bn.bias.add_(0.2)
        ref_layers += [conv, bn, nn.ReLU(), nn.MaxPool1d(pool, ceil_mode=True)]
        in_ch = out
    ref_layers.append(nn.Flatten())
    in_f = 30
    for name, out in zip(["fc1", "fc2"], [16, 12]):
        lin, bn = nn.Linear(in_f, out), nn.BatchNorm1d(out)
        lin.weight.data.copy_(model.layers[name].weight[0]); lin.bias.data.copy_(model.layers[name].bias[0])
        ref_layers += [lin, bn, nn.ReLU()]
        in_f = out
    head = nn.Linear(12, 3)
    head.weight.data.copy_(model.out.weight[0]); head.bias.data.copy_(model.out.bias[0])
    ref = nn.Sequential(*ref_layers, head)
    x = batch(0)[0]
    torch.testing.assert_close(model(x), ref(x))
    model.eval(); ref.eval()
    torch.testing.assert_close(model(x), ref(x))


# ---- the continuum --------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5])
def test_every_k_builds_and_runs(k):
    model = build_model(tiny(k=k), 3, 4, L, TASKS, seed=0)
    x = batch(0)[0].requires_grad_(k == 0)
    assert model(x).shape == (16, 3)
    shared = {id(p) for p in model.shared_parameters()}
    tower = {id(p) for p in model.tower_parameters()}
    assert shared.isdisjoint(tower) and shared | tower == {id(p) for p in model.parameters()}
    assert model.shared_layer_names == model.layer_names[:k]
    rep = model.shared_representation(x)
    if k == 0:
        assert rep is x and not model.shared_parameters()
    logits, rep2 = model(x, return_shared=True)
    assert rep2.shape == rep.shape
    grads = torch.autograd.grad(logits[:, 0].sum(), rep2)[0]
    assert grads.shape == rep2.shape


def test_towers_are_per_task_and_width_scaled():
    model = build_model(tiny(k=2, width=0.5), 3, 4, L, TASKS, seed=0)
    assert model.layers["conv2"].weight.shape == (1, 6, 8, 3)       # shared keeps arch width
    assert model.layers["conv3"].weight.shape == (3, 3, 6, 3)       # round(6 * 0.5) = 3 per tower
    assert model.layers["fc1"].weight.shape == (3, 8, 3 * 5)
    assert model.out.weight.shape == (3, 1, 6)
    tiny_width = build_model(tiny(k=0, width=0.01), 3, 4, L, TASKS, seed=0)
    assert tiny_width.layers["conv1"].weight.shape[1] == 1          # min 1


@pytest.mark.parametrize("tower_init", ["common", "independent"])
def test_tower_init_depends_only_on_seed_and_task_name(tower_init):
    cfg = tiny(k=0, tower_init=tower_init)
    multi = build_model(cfg, 3, 4, L, ["a", "b", "c"], seed=7)
    other_order = build_model(cfg, 2, 4, L, ["c", "a"], seed=7)
    single_b = build_model(cfg, 1, 4, L, ["b"], seed=7)
    for name in multi.layer_names:
        w = multi.layers[name].weight
        assert torch.equal(w[0], other_order.layers[name].weight[1])
        assert torch.equal(w[2], other_order.layers[name].weight[0])
        assert torch.equal(w[1], single_b.layers[name].weight[0])
        # common: every tower starts from the same draw, so a coupling's tower mean is a real network
        assert torch.equal(w[0], w[1]) == (tower_init == "common")
    assert torch.equal(multi.out.weight[1], single_b.out.weight[0])
    assert not torch.equal(multi.out.weight[0], multi.out.weight[1])      # output units: one draw per task
    reseeded = build_model(cfg, 3, 4, L, ["a", "b", "c"], seed=8)
    assert not torch.equal(multi.layers["conv1"].weight, reseeded.layers["conv1"].weight)


@pytest.mark.parametrize("backend", ["loop", "batched"])
@pytest.mark.parametrize("opt_name", ["rmsprop", "adam"])
def test_k0_towers_equal_separately_trained_single_task_models(backend, opt_name):
    cfg = tiny(k=0, backend=backend)
    multi = build_model(cfg, 3, 4, L, TASKS, seed=3)
    singles = [build_model(cfg, 1, 4, L, [t], seed=3) for t in TASKS]
    opt = make_opt(opt_name, multi.param_groups(0.01))
    opts = [make_opt(opt_name, s.param_groups(0.01)) for s in singles]
    # The loop backend runs each tower with the very ops of its single-task model: bit-identical.
    # Grouped/batched kernels sum in another order: equal to float tolerance.
    tol = dict(rtol=0, atol=0) if backend == "loop" else dict(rtol=1e-3, atol=2e-4)
    for step in range(6):
        x, y, mask = batch(step)
        logits = multi(x)
        opt.zero_grad()
        (task_loss(logits, y, mask) + multi.coupling_penalty()).backward()
        opt.step()
        multi.apply_max_norm(0.5)       # small so that it binds
        for t, (single, o) in enumerate(zip(singles, opts)):
            out = single(x)
            torch.testing.assert_close(logits[:, t:t + 1], out, **tol)
            o.zero_grad()
            task_loss(out, y[:, t:t + 1], mask[:, t:t + 1]).backward()
            o.step()
            single.apply_max_norm(0.5)
    multi_state = multi.state_dict()
    for t, single in enumerate(singles):
        for key, value in single.state_dict().items():
            torch.testing.assert_close(multi_state[key][t], value[0], **tol, msg=key)
    norms = multi.layers["conv1"].weight.reshape(3 * 8, -1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-5
    multi.eval()
    x = batch(99)[0]
    for t, single in enumerate(singles):
        single.eval()
        torch.testing.assert_close(multi(x)[:, t:t + 1], single(x), **tol)


@pytest.mark.parametrize("k", [0, 2, 4, 5])
def test_loop_and_batched_backends_agree(k):
    loop = build_model(tiny(k=k, backend="loop"), 3, 4, L, TASKS, seed=5)
    batched = build_model(tiny(k=k, backend="batched"), 3, 4, L, TASKS, seed=11)
    batched.load_state_dict(copy.deepcopy(loop.state_dict()))
    batched.set_rng_state(loop.rng_state())
    x, y, mask = batch(1)
    out_l, out_b = loop(x), batched(x)
    torch.testing.assert_close(out_l, out_b, rtol=1e-5, atol=1e-6)
    task_loss(out_l, y, mask).backward()
    task_loss(out_b, y, mask).backward()
    for (name, p), q in zip(loop.named_parameters(), batched.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for key, value in loop.state_dict().items():  # BatchNorm running stats updated alike
        torch.testing.assert_close(value, batched.state_dict()[key], rtol=1e-5, atol=1e-6)


def test_auto_backend_is_loop_on_cpu():
    model = build_model(tiny(k=0, backend="auto"), 3, 4, L, TASKS, seed=0)
    assert model.resolved_backend(torch.device("cpu")) == "loop"
    assert auto_backend(torch.device("cuda", 0)) == "batched"


def test_max_norm_is_per_unit_and_per_tower():
    model = build_model(tiny(k=0), 3, 4, L, TASKS, seed=0)
    with torch.no_grad():
        model.layers["fc1"].weight[1, 4].mul_(100.0)
        model.out.weight[2].mul_(100.0)
    before = model.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    big = before["layers.fc1.weight"][1, 4].norm().item()
    model.apply_max_norm(7.0)
    fc1 = model.layers["fc1"].weight
    assert fc1[1, 4].norm().item() == pytest.approx(7.0, rel=1e-5)
    assert big > 7.0
    torch.testing.assert_close(fc1[1, 4], before["layers.fc1.weight"][1, 4] * 7.0 / big, rtol=1e-5, atol=0)
    assert torch.equal(fc1[0], before["layers.fc1.weight"][0])          # other towers untouched
    assert torch.equal(fc1[1, :4], before["layers.fc1.weight"][1, :4])  # other units untouched
    assert model.out.weight[2].norm().item() == pytest.approx(7.0, rel=1e-5)
    conv = model.layers["conv1"].weight
    expected = torch.renorm(before["layers.conv1.weight"][0], 2, 0, 0.3)
    model.apply_max_norm(0.3)
    torch.testing.assert_close(conv[0], expected)


def test_dropout_masks_come_from_tower_generators_and_resume():
    model = build_model(tiny(k=0), 3, 4, L, TASKS, seed=0)
    x = batch(0)[0]
    model(x)
    state = {k: v.clone() for k, v in model.rng_state().items()}
    bn_state = copy.deepcopy(model.state_dict())
    first = model(x)
    model.load_state_dict(bn_state)
    model.set_rng_state(state)
    torch.testing.assert_close(model(x), first)
    assert not torch.equal(model(x), first)  # fresh masks on the next call


def test_param_groups_cover_all_parameters_once():
    model = build_model(tiny(k=2), 3, 4, L, TASKS, seed=0)
    groups = model.param_groups(0.1)
    assert len(groups) == 1 and groups[0]["lr"] == 0.1
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_n_params_and_flops_scale_with_towers():
    single = build_model(tiny(k=0), 1, 4, L, ["a"], seed=0)
    towers = build_model(tiny(k=0), 3, 4, L, TASKS, seed=0)
    hard = build_model(tiny(k=5), 3, 4, L, TASKS, seed=0)
    assert towers.n_params() == 3 * single.n_params()
    assert towers.flops_per_sample() == 3 * single.flops_per_sample()
    per_layer = hard.flops_by_layer()
    assert per_layer["conv1"] == 2 * 46 * 8 * 4 * 5
    assert per_layer["fc1"] == 2 * 30 * 16
    assert per_layer["out"] == 2 * 12 * 3
    assert hard.flops_per_sample() == sum(per_layer.values())
    basset = build_model(ModelConfig(), 164, 4, 600, [str(i) for i in range(164)], seed=0)
    expected = 2 * (582 * 300 * 4 * 19 + 184 * 200 * 300 * 11 + 40 * 200 * 200 * 7
                    + 2000 * 1000 + 1000 * 1000 + 1000 * 164)
    assert basset.flops_per_sample() == expected


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="conv_widths: conv1 has width 5"):
        build_model(tiny(), 3, 4, 4, TASKS, seed=0)
    with pytest.raises(ValueError, match="task_names must be unique"):
        build_model(tiny(), 3, 4, L, ["a", "a", "b"], seed=0)
    with pytest.raises(ValueError, match="task_names has 2 names"):
        build_model(tiny(), 3, 4, L, ["a", "b"], seed=0)
    model = build_model(tiny(), 3, 4, L, TASKS, seed=0)
    with pytest.raises(ValueError, match=r"\[batch, 4, length\]"):
        model(torch.zeros(2, 5, L))
