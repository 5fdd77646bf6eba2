import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlsweep.models import apply_init, build_model
from mtlsweep.models.initialization import fit_motif
from mtlsweep.config.run import ArchConfig, InitConfig, ModelConfig, SharingConfig

L = 50


def tiny(k=0, width=1.0, dense=(16, 12), conv_widths=(5, 3, 3)):
    arch = ArchConfig(conv_channels=[8, 6, 6], conv_widths=list(conv_widths), pool=[2, 2, 2],
                      dense=list(dense), dropout=0.3)
    return ModelConfig(arch=arch, sharing=SharingConfig(shared_layers=k), width=width)


def save(model, path):
    torch.save(model.checkpoint_payload(), path)
    return str(path)


def layer_state(model, name):
    prefix = f"layers.{name}."
    return {k[len(prefix):]: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def trained(model, steps=2):
    """A few steps so that BatchNorm running stats and weights are not at their init."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = F.one_hot(torch.randint(0, 4, (8, L), generator=g), 4).float().transpose(1, 2)
        y = torch.randint(0, 2, (8, model.n_tasks), generator=g).float()
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
    return model


def assert_stack_equal(dst, j, src, i):
    assert dst.keys() == src.keys()
    for key in dst:
        assert torch.equal(dst[key][j], src[key][i]), key


def test_random_is_the_build_time_init():
    model = build_model(tiny(), 3, 4, L, ["a", "b", "c"], seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert apply_init(model, InitConfig(kind="random"))["copied"] == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_checkpoint_copies_chosen_layers(tmp_path):
    src = trained(build_model(tiny(k=2), 3, 4, L, ["a", "b", "c"], seed=0))
    # A run checkpoint also carries optimizer state, numpy RNG states, history...
    path = str(tmp_path / "src.pt")
    torch.save({**src.checkpoint_payload(), "epoch": 3, "rng": {"numpy": np.random.default_rng(0).bit_generator.state},
                "history": [{"val/auroc_mean": np.float64(0.7)}]}, path)
    dst = build_model(tiny(k=2), 3, 4, L, ["a", "b", "c"], seed=1)
    report = apply_init(dst, InitConfig(kind="checkpoint", checkpoint=path, layers=["conv1", "fc2"]))
    assert report["copied"] == ["conv1", "fc2"]
    for name in ("conv1", "fc2"):
        for key, value in layer_state(src, name).items():
            assert torch.equal(layer_state(dst, name)[key], value)
    assert not torch.equal(dst.layers["conv2"].weight, src.layers["conv2"].weight)
    apply_init(dst, InitConfig(kind="checkpoint", checkpoint=path))
    x = torch.rand(4, 4, L)
    src.eval(); dst.eval()
    assert torch.equal(dst(x), src(x))


def test_checkpoint_matches_towers_by_task_name(tmp_path):
    src = build_model(tiny(k=0), 3, 4, L, ["a", "b", "c"], seed=0)
    path = save(src, tmp_path / "src.pt")
    dst = build_model(tiny(k=0), 3, 4, L, ["c", "a", "d"], seed=1)
    d_before = layer_state(dst, "fc1")
    apply_init(dst, InitConfig(kind="checkpoint", checkpoint=path))
    assert_stack_equal(layer_state(dst, "fc1"), 0, layer_state(src, "fc1"), 2)
    assert_stack_equal(layer_state(dst, "fc1"), 1, layer_state(src, "fc1"), 0)
    assert_stack_equal(layer_state(dst, "fc1"), 2, d_before, 2)          # "d" is new: stays random
    assert torch.equal(dst.out.weight[0], src.out.weight[2])


def test_checkpoint_shape_mismatch(tmp_path):
    src = build_model(tiny(k=5), 3, 4, L, ["a", "b", "c"], seed=0)
    path = save(src, tmp_path / "src.pt")
    dst = build_model(tiny(k=5, dense=(16, 10)), 3, 4, L, ["a", "b", "c"], seed=1)
    report = apply_init(dst, InitConfig(kind="checkpoint", checkpoint=path))
    assert report["copied"] == ["conv1", "conv2", "conv3", "fc1"]
    assert set(report["skipped"]) == {"fc2", "out"}
    with pytest.raises(ValueError, match=r"layer fc2: weight has shape \[12, 16\].*needs \[10, 16\]"):
        apply_init(dst, InitConfig(kind="checkpoint", checkpoint=path, layers=["fc2"]))
    five = build_model(tiny(k=5), 3, 5, L, ["a", "b", "c"], seed=1)
    with pytest.raises(ValueError, match=r"layer conv1: weight has shape \[8, 4, 5\].*needs \[8, 5, 5\]"):
        apply_init(five, InitConfig(kind="checkpoint", checkpoint=path, layers=["conv1"]))
    with pytest.raises(ValueError, match="init.layers: unknown layer 'fc9'"):
        apply_init(dst, InitConfig(kind="checkpoint", checkpoint=path, layers=["fc9"]))


def test_from_hard_copies_trunk_into_every_tower(tmp_path):
    hard = trained(build_model(tiny(k=5), 3, 4, L, ["a", "b", "c"], seed=0))
    path = save(hard, tmp_path / "hard.pt")
    dst = build_model(tiny(k=2), 3, 4, L, ["b", "x", "a"], seed=1)
    x_unit = dst.out.weight[1].clone()
    report = apply_init(dst, InitConfig(kind="from_hard", checkpoint=path))
    assert report["copied"] == ["conv1", "conv2", "conv3", "fc1", "fc2", "out"]
    for name in ("conv1", "conv2"):
        assert_stack_equal(layer_state(dst, name), 0, layer_state(hard, name), 0)
    for name in ("conv3", "fc1", "fc2"):
        for t in range(3):
            assert_stack_equal(layer_state(dst, name), t, layer_state(hard, name), 0)
    assert torch.equal(dst.out.weight[0, 0], hard.out.weight[0, 1])      # task b: hard row 1
    assert torch.equal(dst.out.bias[2, 0], hard.out.bias[0, 0])          # task a: hard row 0
    assert torch.equal(dst.out.weight[1], x_unit)                        # task x: not in the hard model


def test_from_hard_errors(tmp_path):
    hard = build_model(tiny(k=5), 3, 4, L, ["a", "b", "c"], seed=0)
    path = save(hard, tmp_path / "hard.pt")
    narrow = build_model(tiny(k=2, width=0.5), 3, 4, L, ["a", "b", "c"], seed=1)
    with pytest.raises(ValueError, match=r"layer conv3: weight has shape \[6, 6, 3\] per shared layer.*\[3, 6, 3\] per tower"):
        apply_init(narrow, InitConfig(kind="from_hard", checkpoint=path))
    towers = save(build_model(tiny(k=0), 3, 4, L, ["a", "b", "c"], seed=0), tmp_path / "towers.pt")
    dst = build_model(tiny(k=0), 3, 4, L, ["a", "b", "c"], seed=1)
    with pytest.raises(ValueError, match="from_hard needs a hard model"):
        apply_init(dst, InitConfig(kind="from_hard", checkpoint=towers))


@pytest.mark.parametrize("task, index", [("b", 1), (2, 2)])
def test_from_single_starts_trunk_from_the_warm_start_tower(tmp_path, task, index):
    singles = trained(build_model(tiny(k=0), 3, 4, L, ["a", "b", "c"], seed=0))
    path = save(singles, tmp_path / "singles.pt")
    hard = build_model(tiny(k=5), 3, 4, L, ["a", "b", "c"], seed=1)
    others = [t for t in range(3) if t != index]
    rows_before = hard.out.weight[0, others].clone()
    report = apply_init(hard, InitConfig(kind="from_single", checkpoint=path, task=task))
    assert report["warm_task"] == ["a", "b", "c"][index]
    for name in hard.layer_names:
        assert_stack_equal(layer_state(hard, name), 0, layer_state(singles, name), index)
    assert torch.equal(hard.out.weight[0, index], singles.out.weight[index, 0])
    assert torch.equal(hard.out.weight[0, others], rows_before)
    partly = build_model(tiny(k=2), 3, 4, L, ["a", "b", "c"], seed=1)
    apply_init(partly, InitConfig(kind="from_single", checkpoint=path, task=task))
    assert_stack_equal(layer_state(partly, "conv2"), 0, layer_state(singles, "conv2"), index)
    for t in range(3):
        assert_stack_equal(layer_state(partly, "fc1"), t, layer_state(singles, "fc1"), index)
    without = build_model(tiny(k=5), 2, 4, L, ["x", "y"], seed=1)   # the warm-start task is not here
    report = apply_init(without, InitConfig(kind="from_single", checkpoint=path, task=task))
    assert "out" not in report["copied"] and "out" in report["skipped"]


def test_from_single_errors(tmp_path):
    path = save(build_model(tiny(k=0), 3, 4, L, ["a", "b", "c"], seed=0), tmp_path / "singles.pt")
    hard = build_model(tiny(k=5), 3, 4, L, ["a", "b", "c"], seed=1)
    with pytest.raises(ValueError, match="init.task: 'z' is not a task of checkpoint"):
        apply_init(hard, InitConfig(kind="from_single", checkpoint=path, task="z"))
    with pytest.raises(ValueError, match="init.task: index 3 is out of range"):
        apply_init(hard, InitConfig(kind="from_single", checkpoint=path, task=3))
    hard_path = save(build_model(tiny(k=5), 3, 4, L, ["a", "b", "c"], seed=0), tmp_path / "hard.pt")
    with pytest.raises(ValueError, match="from_single needs per-task towers"):
        apply_init(hard, InitConfig(kind="from_single", checkpoint=hard_path, task="a"))


def test_bad_checkpoints(tmp_path):
    model = build_model(tiny(), 3, 4, L, ["a", "b", "c"], seed=0)
    with pytest.raises(ValueError, match="no such file"):
        apply_init(model, InitConfig(kind="checkpoint", checkpoint=str(tmp_path / "missing.pt")))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"not a model checkpoint; missing keys \['model', 'model_config', 'task_names'\]"):
        apply_init(model, InitConfig(kind="checkpoint", checkpoint=str(tmp_path / "foreign.pt")))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        apply_init(model, InitConfig(kind="checkpoint", checkpoint=str(tmp_path / "junk.pt")))


def test_checkpoint_loader_is_injectable():
    src = build_model(tiny(), 3, 4, L, ["a", "b", "c"], seed=0)
    payload = src.checkpoint_payload()
    dst = build_model(tiny(), 3, 4, L, ["a", "b", "c"], seed=1)
    apply_init(dst, InitConfig(kind="checkpoint", checkpoint="in-memory"), checkpoint_loader=lambda p: payload)
    assert torch.equal(dst.layers["fc2"].weight, src.layers["fc2"].weight)


def test_motifs_seed_first_layer_filters():
    from mtlsweep.data.jaspar import load_motifs, log_odds

    cfg = tiny(k=0, conv_widths=(19, 3, 3))
    model = build_model(cfg, 2, 5, L, ["a", "b"], seed=0)
    conv2_before = model.layers["conv2"].weight.clone()
    report = apply_init(model, InitConfig(kind="motifs"))
    motifs = load_motifs("CORE", "vertebrates")
    assert report["filters"] == 8 and report["motifs"][0] == motifs[0].matrix_id
    first = motifs[0]
    lo = torch.as_tensor(log_odds(first.pfm), dtype=torch.float32)
    off = (19 - first.width) // 2
    w = model.layers["conv1"].weight
    for t in range(2):
        torch.testing.assert_close(w[t, 0, :4, off:off + first.width], lo)
        assert torch.all(w[t, 0, :4, :off] == 0) and torch.all(w[t, 0, :4, off + first.width:] == 0)
        assert torch.all(w[t, :, 4] == 0)                                  # extra track channel
    assert torch.equal(model.layers["conv2"].weight, conv2_before)


def test_long_motifs_keep_their_most_informative_window():
    flat = np.full((4, 1), 0.25)
    sharp = np.array([[1.0], [0.0], [0.0], [0.0]])
    pfm = np.concatenate([flat, sharp, flat, flat, sharp, sharp, sharp, flat], axis=1)
    lo = np.arange(32, dtype=float).reshape(4, 8)
    np.testing.assert_array_equal(fit_motif(lo, pfm, 3), lo[:, 4:7])
    np.testing.assert_array_equal(fit_motif(lo, pfm, 10)[:, 1:9], lo)
