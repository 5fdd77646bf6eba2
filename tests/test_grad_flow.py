import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlsweep.analysis.grad_flow import (GradFlowCallback, GradFlowRecorder, dropout_generators, maybe_grad_flow,
                                measure)
from mtlsweep.data.store import SplitArrays, Store
from mtlsweep.models import build_model
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import ModelConfig, RunConfig
from mtlsweep.training.engine import Trainer
from mtlsweep.training.loss import masked_bce_per_task


T = 4
L = 100
ARCH = {"conv_channels": [8, 8, 8], "conv_widths": [7, 5, 3], "pool": [2, 2, 2], "dense": [16, 16], "dropout": 0.3}


def tiny(k=5, coupling="none"):
    cfg = ModelConfig.model_validate({"arch": ARCH, "sharing": {"shared_layers": k, "coupling": coupling}})
    return build_model(cfg, T, 4, L, [f"t{i}" for i in range(T)], seed=3)


def batch(seed, n=24):
    g = torch.Generator().manual_seed(seed)
    x = F.one_hot(torch.randint(0, 4, (n, L), generator=g), 4).float().transpose(1, 2).contiguous()
    y = torch.randint(0, 2, (n, T), generator=g).float()
    mask = torch.rand(n, T, generator=g) > 0.1
    return x, y, mask


def reference_grads(model, x, y, mask, layer, own_tower=False):
    """T separate backward passes through the same forward as `measure` (same dropout masks)."""
    model.train()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    outs, logits = model.trace(x, dropout_generators(model, x.device))
    losses, _ = masked_bce_per_task(logits, y, mask)
    grads = []
    for t in range(T):
        target = outs[layer][t] if own_tower else outs[layer]
        grads.append(torch.autograd.grad(losses[t], target, retain_graph=True)[0].flatten())
    model.load_state_dict(saved)
    return torch.stack(grads)


@pytest.mark.parametrize("k", [5, 2])
def test_vectorized_per_task_norms_equal_separate_backward_passes(k):
    model = tiny(k)
    x, y, mask = batch(0)
    m = measure(model, x, y, mask, param_layers=["conv1"], chunk=3)   # 3 does not divide T: ragged chunk
    assert m.scope == "shared" and list(m.norms) == model.shared_layer_names
    for layer in model.shared_layer_names:
        ref = reference_grads(model, x, y, mask, layer)
        np.testing.assert_allclose(m.norms[layer], ref.norm(dim=1).numpy(), rtol=1e-5)
        cos = (ref @ ref.T) / (ref.norm(dim=1)[:, None] * ref.norm(dim=1)[None, :])
        if ref.shape[1] <= 4096:      # below the sketch size the cosines are exact
            np.testing.assert_allclose(m.cosine[layer], cos.numpy(), atol=1e-5)
        else:                         # a count sketch: unbiased, error ~ 1/sqrt(4096)
            assert np.abs(m.cosine[layer] - cos.numpy()).max() < 0.1
    # Parameter gradients: task t alone against the same forward.
    model.train()
    outs, logits = model.trace(x, dropout_generators(model, x.device))
    losses, _ = masked_bce_per_task(logits, y, mask)
    params = list(model.layers["conv1"].parameters())
    per = [torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], params, retain_graph=True)]) for t in range(T)]
    np.testing.assert_allclose(m.param_norms["conv1"], torch.stack(per).norm(dim=1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("coupling", ["none", "cross_stitch"])
def test_single_task_towers_are_measured_at_their_own_first_layer(coupling):
    model = tiny(0, coupling)
    x, y, mask = batch(1)
    m = measure(model, x, y, mask, chunk=3)
    assert m.scope == "tower" and list(m.norms) == ["conv1"] and not m.cosine
    ref = reference_grads(model, x, y, mask, "conv1", own_tower=True)
    np.testing.assert_allclose(m.norms["conv1"], ref.norm(dim=1).numpy(), rtol=1e-5)


def test_measurement_leaves_the_model_as_it_was():
    model = tiny(2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = {k: v.clone() for k, v in model.rng_state().items()}
    measure(model, *batch(2), mode="train")
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(rng[k], v) for k, v in model.rng_state().items())
    # The traced forward is the model's forward.
    x = batch(3)[0]
    assert torch.equal(model.trace(x, dropout_generators(model, x.device))[1], model(x))


def test_task_with_saturated_loss_is_dead_and_the_others_alive():
    model = tiny(5)
    x, y, mask = batch(4)
    mask[:] = True
    rec = GradFlowRecorder(model.tasks, threshold=0.01, early=3)
    for step in range(3):
        rec.add(step, 1, measure(model, x, y, mask, mode="eval"))
    # Task 2: huge confident logits that agree with every label -> its loss is flat.
    with torch.no_grad():
        model.out.bias[0, 2] = 60.0
    y[:, 2] = 1.0
    rec.add(3, 2, measure(model, x, y, mask, mode="eval"))
    rec.add(4, 2, measure(model, x, y, mask, mode="eval"))
    unlabeled = mask.clone()
    unlabeled[:, 2] = False          # no labels for task 2 at this step: it stays as it was (dead)
    rec.add(5, 2, measure(model, x, y, unlabeled, mode="eval"))
    for layer in model.shared_layer_names:
        dead = rec.dead(layer)[-1]
        assert dead.tolist() == [False, False, True, False]
        assert rec.death_steps(layer) == [None, None, 3, None]
    m = rec.epoch_metrics(2)
    assert m["grad/conv1/dead_tasks"] == 1.0 and m["grad/conv1/all_dead"] == 0.0
    assert m["grad/fc2/norm_mean"] > 0 and 0.0 <= m["grad/conv1/conflict_frac"] <= 1.0
    assert 0.0 <= m["grad/conv1/dead_relu_frac"] <= 1.0
    # Every task saturated: all die together.
    with torch.no_grad():
        model.out.bias[:] = 60.0
    y[:] = 1.0
    rec.add(6, 3, measure(model, x, y, mask, mode="eval"))
    assert rec.epoch_metrics(3)["grad/conv1/all_dead"] == 1.0
    assert rec.all_dead_steps("conv1") == [6]
    payload = rec.to_json()
    assert payload["layers"]["conv1"]["death_step"]["t2"] == 3
    json.dumps(payload, allow_nan=False)


def test_task_without_labels_is_not_measured():
    model = tiny(5)
    x, y, mask = batch(5)
    mask[:, 1] = False
    m = measure(model, x, y, mask, mode="eval")
    assert math.isnan(m.norms["conv1"][1]) and np.isfinite(m.norms["conv1"][[0, 2, 3]]).all()
    assert np.isnan(m.cosine["conv1"][1]).all()


def _store(seed=0, n_train=96, n_valid=64):
    rng = np.random.default_rng(seed)
    names = [f"t{i}" for i in range(T)]

    def split(n):
        return SplitArrays(codes=rng.integers(0, 4, (n, L), dtype=np.uint8),
                           labels=(rng.random((n, T)) < 0.4).astype(np.int8))
    return Store.from_arrays(names, {"train": split(n_train), "valid": split(n_valid)})


def _cfg(tmp, every, k=2):
    return RunConfig.model_validate({
        "data": {"path": str(tmp / "unused.h5"), "batch_size": 16},
        "model": {"arch": ARCH, "sharing": {"shared_layers": k}},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "steps_per_epoch": 4, "patience": 5, "out_dir": str(tmp),
                  "grad_flow_every": every, "grad_flow_param_layers": ["conv1"]},
    })


def test_grad_flow_on_gives_the_same_training_trajectory(tmp_path):
    store = _store()
    off = Trainer(_cfg(tmp_path, 0), tmp_path / "off", store=store, progress=False)
    off.fit()
    cfg = _cfg(tmp_path, 3)
    cb = maybe_grad_flow(cfg)
    on = Trainer(cfg, tmp_path / "on", store=store, callbacks=[cb], progress=False)
    res = on.fit()
    a, b = off.model.state_dict(), on.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val/loss"] for h in off.history] == [h["val/loss"] for h in on.history]
    # Steps 0, 3, 6 measured; epoch metrics were added for the loggers after it.
    assert cb.recorder.steps == [0, 3, 6]
    for key in ("norm_mean", "dead_tasks", "all_dead", "conflict_frac", "dead_relu_frac", "param_norm_mean"):
        assert f"grad/conv1/{key}" in res.history[0]
    assert "grad/conv2/norm_mean" in res.history[1] and "grad/fc1/norm_mean" not in res.history[1]
    names = sorted(p.name for p in cb.artifact_paths())
    assert names == ["grad_cosine_conv1.png", "grad_cosine_conv2.png", "grad_flow.json",
                     "grad_flow_conv1.png", "grad_flow_conv2.png"]
    assert all(p.parent == tmp_path / "on" / "mlflow_artifacts" and p.stat().st_size > 0 for p in cb.artifact_paths())
    payload = json.loads((tmp_path / "on" / "mlflow_artifacts" / "grad_flow.json").read_text())
    assert payload["steps"] == [0, 3, 6] and len(payload["layers"]["conv1"]["norms"]) == 3



def test_maybe_grad_flow_follows_the_config(tmp_path):
    assert maybe_grad_flow(_cfg(tmp_path, 0)) is None
    cb = maybe_grad_flow(_cfg(tmp_path, 5))
    assert isinstance(cb, GradFlowCallback) and cb.every == 5 and cb.param_layers == ["conv1"]
    bad = _cfg(tmp_path, 5).with_overrides({"train.grad_flow_param_layers": ["conv9"]})
    with pytest.raises(ConfigError, match="conv9"):
        maybe_grad_flow(bad)
