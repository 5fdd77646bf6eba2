import pytest
import torch
import torch.nn.functional as F

from models import build_model
from training.config import ArchConfig, ModelConfig, SharingConfig

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


def test_l2_and_trace_norm_penalties_match_their_definitions():
    l2 = build_model(tiny(k=2, coupling="l2", strength=0.5), 3, 4, L, TASKS, seed=0)
    trace = build_model(tiny(k=2, coupling="trace_norm", strength=0.5), 3, 4, L, TASKS, seed=0)
    assert l2.tower_layer_names == ["conv3", "fc1", "fc2"]
    expected_l2, expected_nuc = 0.0, 0.0
    for name in l2.tower_layer_names:
        rows = tower_rows(l2, name)
        mean = sum(rows) / len(rows)
        expected_l2 += sum(((r - mean) ** 2).sum() for r in rows)
        expected_nuc += torch.linalg.svdvals(torch.stack(rows)).sum()
    torch.testing.assert_close(l2.coupling_penalty(), 0.5 * expected_l2)
    torch.testing.assert_close(l2.tower_distance(), expected_l2)
    torch.testing.assert_close(trace.coupling_penalty(), 0.5 * expected_nuc)
    l2.coupling_penalty().backward()
    assert all(p.grad is None for p in l2.shared_parameters())
    assert l2.layers["fc1"].weight.grad.abs().sum() > 0
    assert l2.out.weight.grad is None  # output units are not tied


def test_no_penalty_without_coupling_or_strength():
    for sharing in (dict(coupling="none", strength=3.0), dict(coupling="l2", strength=0.0)):
        model = build_model(tiny(k=0, **sharing), 3, 4, L, TASKS, seed=0)
        assert model.coupling_penalty().item() == 0.0


def test_l2_strength_drives_towers_together():
    distances = []
    for strength in (0.0, 0.01, 0.1, 1.0, 10.0):
        model = build_model(tiny(k=0, coupling="l2", strength=strength), 3, 4, L, TASKS, seed=0)
        start = model.tower_distance().item()
        distances.append(train(model, 15).tower_distance().item())
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.05 * start


def test_trace_norm_strength_lowers_the_trace_norm():
    norms = []
    for strength in (0.0, 0.01, 0.1, 1.0, 10.0):
        model = build_model(tiny(k=0, coupling="trace_norm", strength=strength), 3, 4, L, TASKS, seed=0)
        norms.append(train(model, 15).tower_trace_norm().item())
    assert all(a > b for a, b in zip(norms, norms[1:])), norms


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


@pytest.mark.parametrize("coupling", ["l2", "trace_norm", "cross_stitch"])
def test_couplings_need_towers_and_two_tasks(coupling):
    with pytest.raises(ValueError, match=f"model.sharing.coupling={coupling}.*shared_layers < 5"):
        build_model(tiny(k=5, coupling=coupling, strength=1.0), 3, 4, L, TASKS, seed=0)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        build_model(tiny(k=0, coupling=coupling, strength=1.0), 1, 4, L, ["a"], seed=0)
