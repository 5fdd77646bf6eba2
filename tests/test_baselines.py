"""A run's identity, its baseline's fingerprint and the comparison key."""
import pytest

from mtlsweep.config.identity import Protocol, baseline_config, baseline_fingerprint, comparison_key
from mtlsweep.config.run import RunConfig

TASKS = ["a", "b"]


def fp(**over):
    return baseline_fingerprint(RunConfig().with_overrides(over), "data1", TASKS)


@pytest.mark.parametrize("key,value", [
    ("optim.lr", 0.01), ("optim.weight_decay", 0.02), ("optim.name", "adam"), ("optim.max_norm", 3.0),
    ("optim.decay_norm_and_bias", True), ("optim.alpha", 0.9), ("optim.grad_clip", 1.0),
    ("model.arch.dropout", 0.5), ("data.batch_size", 64), ("model.width", 0.5), ("model.arch.dense", [100, 100]),
    ("model.sharing.tower_init", "independent"), ("train.epochs", 20), ("train.patience", 5),
    ("train.steps_per_epoch", 10), ("train.seed", 3), ("data.use_tracks", False), ("model.arch.conv_channels", [10, 10, 10]),
])
def test_the_fingerprint_changes_with_everything_that_changes_the_result(key, value):
    default = RunConfig().flatten()[key]
    if value == default:
        pytest.fail("pick a value that is not the default")
    assert fp(**{key: value}) != fp()


@pytest.mark.parametrize("over", [
    {"model.sharing.shared_layers": 0}, {"model.sharing.coupling": "l2", "model.sharing.shared_layers": 0,
                                        "model.sharing.strength": 0.1},
    {"schedule.order": "round_robin"}, {"schedule.warm_start.task": 0, "schedule.warm_start.epochs": 2},
    {"init.kind": "motifs"}, {"tracking.enabled": True, "tracking.experiment": "x"}, {"train.out_dir": "/elsewhere"},
    {"train.device": "auto"}, {"train.num_threads": 2}, {"model.backend": "batched"}, {"data.path": "/other.h5"},
])
def test_what_a_family_changes_or_where_a_run_goes_is_not_the_baselines_identity(over):
    assert fp(**over) == fp()


def test_baseline_config_is_the_towers_with_everything_else_kept():
    cfg = RunConfig().with_overrides({"model.sharing.shared_layers": 2, "model.sharing.coupling": "cross_stitch",
                                      "optim.weight_decay": 0.03, "schedule.order": "curriculum",
                                      "model.sharing.tower_init": "independent"})
    b = baseline_config(cfg)
    assert b.model.sharing.shared_layers == 0 and b.model.sharing.coupling == "none"
    assert b.model.sharing.tower_init == "independent" and b.optim.weight_decay == 0.03
    assert b.schedule.order == "joint" and b.init.kind == "random"


def test_the_comparison_key_leaves_out_only_the_tuned_keys():
    base = RunConfig()
    other = base.with_overrides({"optim.weight_decay": 0.05})
    assert comparison_key(base, "d", TASKS) != comparison_key(other, "d", TASKS)
    assert comparison_key(base, "d", TASKS, ["optim.weight_decay"]) == comparison_key(other, "d", TASKS, ["optim.weight_decay"])
    seeded = base.with_overrides({"train.seed": 1})
    assert comparison_key(seeded, "d", TASKS, ["optim.weight_decay"]) != comparison_key(base, "d", TASKS, ["optim.weight_decay"])
    assert comparison_key(base, "d2", TASKS) != comparison_key(base, "d", TASKS)


def test_protocols_differ_by_what_they_search_and_fixed_ones_by_their_values():
    t = Protocol("tuned", ("optim.lr",), 3, "spec")
    assert t.fingerprint != Protocol("tuned", ("optim.lr",), 4, "spec").fingerprint
    assert Protocol("fixed", ("optim.lr",), 1, '{"optim.lr": 0.01}').fingerprint != \
        Protocol("fixed", ("optim.lr",), 1, '{"optim.lr": 0.02}').fingerprint
    assert "tuned: 3 trial(s) over optim.lr" in t.describe()
    assert t.describe() != Protocol("fixed").describe()


def test_a_tuned_preset_leaves_the_trunk_it_sets_out_of_the_key_and_own_keys_keep_the_base_towers():
    motif = RunConfig().with_overrides({"model.arch.preset": "motif"})
    deep = RunConfig().with_overrides({"model.arch.preset": "deep"})
    assert comparison_key(motif, "d", TASKS) != comparison_key(deep, "d", TASKS)
    tuned = ["model.arch.preset", "optim.lr"]
    assert comparison_key(motif, "d", TASKS, tuned) == comparison_key(deep, "d", TASKS, tuned)
    # capacity matching and the shared width do not apply to towers: the same baseline
    assert fp(**{"model.capacity": "match_towers"}) == fp() and fp(**{"model.shared_width": 2.0}) == fp()
    p = Protocol("fixed", (), 1, "{}", own=("optim.lr",))
    assert p.free == ("optim.lr",) and "the variants set their own optim.lr" in p.describe()
    assert p.fingerprint != Protocol("fixed", (), 1, "{}").fingerprint


def test_a_baseline_left_running_by_a_stopped_driver_is_closed_before_it_is_trained_again(tmp_path):
    from mlflow.tracking import MlflowClient

    from mtlsweep.search.baseline_search import close_interrupted
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("b")
    ghost = client.create_run(exp, tags={"role": "baseline_candidate", "baseline_fp": "fp1"}).info.run_id
    other = client.create_run(exp, tags={"role": "baseline_candidate", "baseline_fp": "fp2"}).info.run_id
    done = client.create_run(exp, tags={"role": "baseline", "baseline_fp": "fp1"}).info.run_id
    client.set_terminated(done, "FINISHED")
    close_interrupted(client, exp, "fp1")
    assert client.get_run(ghost).info.status == "KILLED" and "orphaned" in client.get_run(ghost).data.tags
    assert client.get_run(other).info.status == "RUNNING" and client.get_run(done).info.status == "FINISHED"
