"""Task affinity (TAG lookahead), group-wise sharing, group schedules and affinity ordering."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtlsweep.config.run import RunConfig
from mtlsweep.models import build_model
from mtlsweep.training.task_affinity import TaskAffinity, adjusted_rand, cluster, select_groups, total_affinity

ARCH = {"model.arch.conv_channels": [6, 6], "model.arch.conv_widths": [5, 3], "model.arch.pool": [2, 2],
        "model.arch.dense": [8], "model.arch.dropout": 0.0}


def _model(k=3, n_tasks=2, seed=0, **over):
    cfg = RunConfig().with_overrides({**ARCH, "model.sharing.shared_layers": k, **over})
    return build_model(cfg.model, n_tasks, 4, 40, [f"t{i}" for i in range(n_tasks)], seed=seed)


def _batch(n=64, n_tasks=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (n, 40), generator=g), 4).float().transpose(1, 2)
    y0 = (torch.rand(n, generator=g) < 0.4).float()
    return x, y0


# ----------------------------------------------------------------------------- lookahead affinity


@pytest.mark.parametrize("same", [True, False])
def test_lookahead_affinity_has_the_known_sign(same):
    """Two tasks with the same output unit: identical labels help each other, opposite labels
    hurt each other, and a task's step always helps itself."""
    model = _model()
    with torch.no_grad():     # hard model: out.weight [1, T, D]; task 1 := task 0, logits near 0
        model.out.weight[0, 0] *= 0.1
        model.out.weight[0, 1] = model.out.weight[0, 0]
        model.out.bias.zero_()
    x, y0 = _batch()
    y = torch.stack([y0, y0 if same else 1 - y0], dim=1)
    aff = TaskAffinity(["t0", "t1"], every=1, max_tasks=2, lr=1.0)
    aff.probe(model, x, y, torch.ones_like(y, dtype=torch.bool))
    Z = aff.matrix()
    assert Z[0, 0] > 0 and Z[1, 1] > 0
    assert (Z[0, 1] > 0) == same and (Z[1, 0] > 0) == same
    if same:
        assert Z[0, 1] == pytest.approx(Z[0, 0], rel=1e-4)


def test_probe_leaves_the_model_and_its_mode_alone():
    model = _model(**{"model.arch.dropout": 0.3})
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y0 = _batch()
    y = torch.stack([y0, 1 - y0], 1)
    TaskAffinity(["t0", "t1"], 1, 2, 0.1).probe(model, x, y, torch.ones_like(y, dtype=torch.bool))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # BN stats too


def test_masked_tasks_are_neither_probed_nor_scored_and_sparse_pairs_are_named():
    model = _model(n_tasks=3)
    x, y0 = _batch()
    y = torch.stack([y0, y0, 1 - y0], 1)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[:, 1] = False                        # task 1: no label in this batch
    mask[6:, 2] = False                       # task 2: 6 of 64 labels, none beyond what task 0 has
    aff = TaskAffinity(["t0", "t1", "t2"], 1, 3, 0.05)
    aff.probe(model, x, y, mask)
    assert aff.count[1].sum() == 0 and aff.count[:, 1].sum() == 0
    assert aff.count[0, 0] == 1 and aff.count[0, 2] == 1 and aff.count[2, 0] == 1
    Z = aff.matrix()
    assert np.isnan(Z[1]).all() and np.isnan(Z[:, 1]).all()
    ov = aff.overlap()
    assert ov[0, 2] == pytest.approx(6 / 64) and ov[2, 0] == pytest.approx(1.0)
    assert ["t0", "t2", 0.0938] in aff.to_json()["sparse_pairs"]


def test_probed_tasks_rotate_under_the_cap():
    aff = TaskAffinity([f"t{i}" for i in range(5)], 1, 2, 0.1)
    seen = [aff._probed(np.ones(5, dtype=bool)) for _ in range(3)]
    assert seen == [[0, 1], [2, 3], [4, 0]]


def test_affinity_needs_shared_layers():
    with pytest.raises(ValueError, match="shared_layers is 0"):
        RunConfig().with_overrides({"model.sharing.shared_layers": 0, "train.affinity_every": 5})


def test_clustering_recovers_planted_blocks():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 4)
    Z = np.where(truth[:, None] == truth[None, :], 0.05, -0.01) + rng.normal(0, 0.005, (12, 12))
    assert adjusted_rand(truth, cluster(Z, 3)) == 1.0
    assert cluster(Z, 3).tolist()[:4] == [0, 0, 0, 0]


# ----------------------------------------------------------------------------- in training


def _brute_force_best(Z: np.ndarray, k: int) -> float:
    """The best TAG score over every assignment of tasks to k labels, written independently."""
    import itertools
    T = Z.shape[0]
    best = -np.inf
    for labels in itertools.product(range(k), repeat=T):
        score = 0.0
        for v in range(T):
            mates = [u for u in range(T) if u != v and labels[u] == labels[v]]
            score += np.mean([Z[u, v] for u in mates]) if mates else 0.0
        best = max(best, score)
    return best


def test_the_measurement_is_kept_by_stage_of_equal_spans_and_resumes():
    aff = TaskAffinity(["a", "b"], every=1, max_tasks=2, lr=0.1)
    for epoch in range(1, 60):
        aff.sum[0, 1] += epoch
        aff.count[0, 1] += 1
        aff.end_epoch(epoch)
        if epoch == 30:
            again = TaskAffinity(["a", "b"], every=1, max_tasks=2, lr=0.1)
            again.load_state_dict(aff.state_dict())
    spans = [b - a + 1 for a, b, _, _ in aff.stages]
    assert len(aff.stages) <= 16 and set(spans[:-1]) == {4} and aff.stages[-1][1] == 59
    np.testing.assert_allclose(sum(x for _, _, x, _ in aff.stages), aff.sum)      # nothing lost in the merges
    for epoch in range(31, 60):                     # a resumed measurement ends with the same stages
        again.sum[0, 1] += epoch
        again.count[0, 1] += 1
        again.end_epoch(epoch)
    assert [(a, b) for a, b, _, _ in again.stages] == [(a, b) for a, b, _, _ in aff.stages]


def test_tag_selection_returns_the_optimum_of_its_objective():
    # Asymmetric by hand: task 0 helps 1 and 2 a lot, they hurt 0 a little; 3 and 4 help each other
    # a little; 3 helps 5 a lot, and 4 and 5 hurt each other.
    Z = np.array([[0.0, 0.30, 0.30, 0.00, 0.00, 0.00],
                  [-0.05, 0.0, 0.02, 0.00, 0.00, 0.00],
                  [-0.05, 0.02, 0.0, 0.00, 0.00, 0.00],
                  [0.00, 0.00, 0.00, 0.0, 0.10, 0.30],
                  [0.00, 0.00, 0.00, 0.10, 0.0, -0.30],
                  [0.00, 0.00, 0.00, -0.01, -0.30, 0.0]])
    for k in (1, 2, 3, 4):
        labels = select_groups(Z, k)
        assert labels.max() < k
        assert total_affinity(Z, labels) == pytest.approx(_brute_force_best(Z, k))
        assert total_affinity(Z, labels) >= total_affinity(Z, cluster(Z, k)) - 1e-12
    assert select_groups(Z, 3).tolist() == [0, 0, 0, 1, 2, 1]          # 5 goes with 3, away from 4
    assert total_affinity(Z, [0, 0, 0, 1, 1, 1]) < total_affinity(Z, select_groups(Z, 3))
    # Average linkage optimizes something else: on noise it falls short of the selection's score.
    noise = np.random.default_rng(0).normal(0, 0.01, (10, 10))
    assert total_affinity(noise, select_groups(noise, 4)) > total_affinity(noise, cluster(noise, 4)) + 0.01


def test_tag_selection_beyond_exhaustive_search_finds_planted_blocks():
    rng = np.random.default_rng(1)
    Z = rng.normal(0, 0.01, (16, 16))
    for g in range(4):
        Z[4 * g:4 * g + 4, 4 * g:4 * g + 4] += 0.05
    assert adjusted_rand(select_groups(Z, 4), np.repeat(np.arange(4), 4)) == 1.0
    assert select_groups(Z, 4, seed=3).tolist() == select_groups(Z, 4, seed=3).tolist()


def test_probing_changes_nothing_in_training_and_resumes(tmp_path, tiny_config):
    from mtlsweep.training.engine import LAST, Trainer
    cfg = tiny_config(**{"train.epochs": 2, "train.affinity_every": 3, "model.sharing.shared_layers": 3})
    plain = Trainer(cfg.with_overrides({"train.affinity_every": 0}), tmp_path / "plain", progress=False).fit()
    full_tr = Trainer(cfg, tmp_path / "full", progress=False)
    full = full_tr.fit()
    assert full.best_val_auroc == plain.best_val_auroc
    assert full.history[-1]["train/loss"] == plain.history[-1]["train/loss"]
    files = {p.name for p in (tmp_path / "full" / "mlflow_artifacts").iterdir()}
    assert {"affinity.json", "affinity.png"} <= files
    payload = json.loads((tmp_path / "full" / "mlflow_artifacts" / "affinity.json").read_text())
    assert payload["probes"] == -(-2 * full_tr.steps_per_epoch // 3) and len(payload["affinity"]) == 3
    # Stopped after epoch 1 and resumed: the same probes, the same matrix.
    half = Trainer(cfg.with_overrides({"train.epochs": 1}), tmp_path / "half", progress=False)
    half.fit()
    resumed = Trainer(cfg, tmp_path / "half", progress=False)
    resumed.resume(tmp_path / "half" / LAST)
    assert resumed.affinity.probes == half.affinity.probes > 0
    resumed.fit()
    np.testing.assert_array_equal(resumed.affinity.sum, full_tr.affinity.sum)
    np.testing.assert_array_equal(resumed.affinity.count, full_tr.affinity.count)


def test_affinity_reaches_mlflow_and_the_cli_prints_groups(tmp_path, tiny_config, mlflow_server, capsys):
    from conftest import run
    from mlflow.tracking import MlflowClient

    from mtlsweep.app.cli import main
    from mtlsweep.mlflow_server.attach import Tracking, run_callbacks
    cfg = tiny_config(**{"train.epochs": 1, "train.affinity_every": 2, "model.sharing.shared_layers": 3})
    callbacks, logger = run_callbacks(cfg, Tracking(mlflow_server.url, "affinity", async_=False))
    run(cfg, tmp_path / "r", callbacks=callbacks, progress=False)
    names = {a.path for a in MlflowClient(mlflow_server.url).list_artifacts(logger.run_id)}
    assert {"affinity.json", "affinity.png"} <= names
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"groups": {"g0": {"tasks": ["task0", "task1"]}, "g1": {"tasks": ["task2"]}}}))
    assert main(["affinity", str(tmp_path / "r"), "--truth", str(truth)]) == 0
    out = capsys.readouterr().out
    assert "group 0:" in out and "group 1:" in out and "adjusted Rand index" in out
    assert main(["affinity", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no affinity.json" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- group-wise sharing


def _grouped(k, m, groups, backend="loop", width=1.0, seed=0):
    over = {**ARCH, "model.sharing.shared_layers": k, "model.backend": backend, "model.width": width}
    if m:
        over.update({"model.sharing.group_layers": m, "model.sharing.groups": [[0]]})
    cfg = RunConfig().with_overrides(over)
    return build_model(cfg.model, len(groups), 4, 40, [f"t{i}" for i in range(len(groups))], seed=seed,
                       groups=groups if m else None)


def _same_function(a, b, x):
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def test_group_layers_zero_is_todays_model():
    x, _ = _batch(16, 4)
    for k in (0, 2):
        cfg = RunConfig().with_overrides({**ARCH, "model.sharing.shared_layers": k,
                                          "model.sharing.groups": [[0, 1], [2, 3]]})
        with_groups = build_model(cfg.model, 4, 4, 40, [f"t{i}" for i in range(4)], seed=0, groups=[0, 0, 1, 1])
        plain = _grouped(k, 0, [0, 0, 1, 1])
        sa, sb = with_groups.state_dict(), plain.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa)
        torch.manual_seed(1)
        with_groups.train(), plain.train()
        assert torch.equal(with_groups(x), plain(x))       # dropout streams too


@pytest.mark.parametrize("backend", ["loop", "batched"])
def test_one_group_of_all_tasks_is_a_deeper_shared_trunk(backend):
    grouped = _grouped(1, 1, [0, 0, 0], backend)
    shared = _grouped(2, 0, [0, 0, 0], backend)
    shared.load_state_dict(grouped.state_dict())          # a 1-stack group layer has a shared layer's shape
    x, _ = _batch(16, 3)
    assert _same_function(grouped, shared, x)


@pytest.mark.parametrize("backend", ["loop", "batched"])
def test_one_group_per_task_is_the_towers(backend):
    grouped = _grouped(1, 2, [0, 1, 2], backend)
    towers = _grouped(1, 0, [0, 1, 2], backend)
    towers.load_state_dict(grouped.state_dict())
    x, _ = _batch(16, 3)
    assert _same_function(grouped, towers, x)


def test_group_backends_agree_and_groups_share_within():
    groups = [1, 0, 1, 0]
    loop = _grouped(1, 2, groups, "loop")
    batched = _grouped(1, 2, groups, "batched")
    batched.load_state_dict(loop.state_dict())
    x, _ = _batch(16, 4)
    assert _same_function(loop, batched, x)
    assert loop.layers["conv2"].weight.shape[0] == 2 and loop.layers["fc1"].weight.shape[0] == 2
    outs = loop.layer_outputs(x)
    assert outs["fc1"].shape[1] == 2                      # [B, G, D]
    assert sum(p.numel() for g in loop.param_groups(0.01) for p in g["params"]) == loop.n_params()


def test_groups_resolve_from_names_truth_and_affinity(tmp_path, tiny_config):
    from mtlsweep.config.errors import ConfigError
    from mtlsweep.training.engine import Trainer
    from mtlsweep.training.sharing_groups import resolve_groups
    tasks = ["task0", "task1", "task2"]
    cfg = tiny_config(**{"model.sharing.shared_layers": 1, "model.sharing.group_layers": 2,
                         "model.sharing.groups": [["task2", "task0"], [1]]})
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    assert tr.groups == [0, 1, 0] and tr.model.groups == [0, 1, 0]
    assert tr.fit().best_val_auroc > 0.8
    for bad, needle in (([["task0"], ["task1"]], "task2"), ([["task0", "task1"], ["task1", "task2"]], "two groups"),
                        ([["nope"], ["task0", "task1", "task2"]], "not a task")):
        with pytest.raises(ConfigError, match=needle):
            resolve_groups(cfg.model.sharing.model_copy(update={"groups": bad}), tasks, "x/store.h5")
    with pytest.raises(ConfigError, match="truth.json beside"):
        resolve_groups(cfg.model.sharing.model_copy(update={"groups": "truth"}), tasks, str(tmp_path / "s.h5"))
    (tmp_path / "truth.json").write_text(json.dumps({"groups": {"a": {"tasks": ["task1"]},
                                                                "b": {"tasks": ["task0", "task2"]}}}))
    assert resolve_groups(cfg.model.sharing.model_copy(update={"groups": "truth"}), tasks,
                          str(tmp_path / "s.h5")) == [0, 1, 0]
    aff = tmp_path / "affinity.json"
    Z = [[0.1, -0.05, 0.04], [-0.05, 0.1, -0.05], [0.04, -0.05, 0.1]]
    aff.write_text(json.dumps({"tasks": tasks, "affinity": Z}))
    auto = cfg.model.sharing.model_copy(update={"groups": "auto:2", "affinity": str(aff)})
    assert resolve_groups(auto, tasks, "x") == [0, 1, 0]
    tag_k = cfg.model.sharing.model_copy(update={"groups": "tag:2", "affinity": str(aff)})
    assert resolve_groups(tag_k, tasks, "x") == [0, 1, 0]
    with pytest.raises(ValueError, match="tag:K needs sharing.affinity"):
        RunConfig().with_overrides({"model.sharing.groups": "tag:2"})
    with pytest.raises(ValueError, match="allowed: truth, auto:K or tag:K"):
        RunConfig().with_overrides({"model.sharing.groups": "tags:2"})
    with pytest.raises(ValueError, match="coupling none"):
        RunConfig().with_overrides({"model.sharing.shared_layers": 1, "model.sharing.group_layers": 1,
                                    "model.sharing.groups": "truth", "model.sharing.coupling": "l2"})
    with pytest.raises(ValueError, match="needs sharing.affinity"):
        RunConfig().with_overrides({"model.sharing.groups": "auto:3"})


# ----------------------------------------------------------------------------- schedules


def test_group_schedules_and_affinity_order(tmp_path):
    from mtlsweep.schedules.factory import build_schedule, helpfulness, task_order
    groups = [0, 1, 0, 1]
    names = [f"t{i}" for i in range(4)]
    cfg = RunConfig().with_overrides({"schedule.order": "group_blocks", "model.sharing.groups": [[0, 2], [1, 3]]})
    s = build_schedule(cfg.schedule, names, prevalence=np.ones(4), sizes=np.ones(4), epochs=3, groups=groups)
    assert s.weights(1, 0, 10).tolist() == [1, 0, 1, 0] and s.weights(1, 9, 10).tolist() == [0, 1, 0, 1]
    assert s.weights(2, 4, 10).tolist() == [1, 0, 1, 0]         # a pure function of (epoch, step)
    rr = build_schedule(cfg.schedule.model_copy(update={"order": "group_round_robin"}), names,
                        prevalence=np.ones(4), sizes=np.ones(4), epochs=3, groups=groups)
    assert [rr.weights(1, i, 3).tolist() for i in range(3)] == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert rr.weights(2, 0, 3).tolist() == [0, 1, 0, 1]         # the cycle runs across epochs
    Z = np.array([[0.2, 0.0, 0.0, 0.0], [0.3, 0.2, 0.3, 0.3], [0.1, 0.1, 0.2, 0.1], [np.nan, -0.1, 0.0, 0.2]])
    assert helpfulness(Z).round(3).tolist() == [0.0, 0.3, 0.1, -0.05]
    by = cfg.schedule.model_copy(update={"order_by": "affinity", "affinity": "x"})
    assert task_order(by, names, np.ones(4), None, 0, Z) == [1, 2, 0, 3]
    # Groups take turns in the order of their most helpful task: group 1 (task 1) first.
    s = build_schedule(by, names, prevalence=np.ones(4), sizes=np.ones(4), epochs=3, groups=groups, affinity=Z)
    assert s.weights(1, 0, 10).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="needs model.sharing.groups"):
        RunConfig().with_overrides({"schedule.order": "group_blocks"})
