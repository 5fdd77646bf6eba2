"""A killed sweep's snapshot may name a checkpoint Tune deleted after it: the restore gives that
name the trial's newest checkpoint, and leaves every other trial as it is."""
import json

from mtlsweep.search.lost_checkpoints import restore_lost_checkpoints


def _state(trials):
    return {"trial_data": [[json.dumps({"trial_id": t, "relative_logdir": f"run_trial_{t}"}),
                            json.dumps({"last_result": {"checkpoint_dir_name": named} if named else {}})]
                           for t, named in trials]}


def test_a_checkpoint_deleted_after_the_snapshot_is_given_the_newest_one(tmp_path):
    exp = tmp_path / "sweep"
    for t, kept in (("a", (4, 5, 6)), ("b", (1, 2, 3)), ("c", ())):
        for i in kept:
            (exp / f"run_trial_{t}" / f"checkpoint_{i:06d}").mkdir(parents=True)
            (exp / f"run_trial_{t}" / f"checkpoint_{i:06d}" / "last.pt").write_text(f"epoch {i + 1}")
    (exp / "run_trial_c").mkdir()
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(_state([("a", "x")])))
    (exp / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(
        _state([("a", "checkpoint_000002"), ("b", "checkpoint_000003"), ("c", "checkpoint_000001"), ("d", None)])))
    filled = restore_lost_checkpoints(str(exp))
    assert filled == [str(exp / "run_trial_a" / "checkpoint_000002")]       # the newest snapshot's names only
    assert (exp / "run_trial_a" / "checkpoint_000002" / "last.pt").read_text() == "epoch 7"
    assert not (exp / "run_trial_c" / "checkpoint_000001").exists()           # nothing to give it
    assert restore_lost_checkpoints(str(exp)) == []                           # once
    assert restore_lost_checkpoints("s3://bucket/sweep") == [] and restore_lost_checkpoints(str(tmp_path / "no")) == []


def test_a_kept_checkpoint_the_manager_names_is_filled_in_too(tmp_path):
    # Tune's checkpoint manager (pickled, hex) names the kept checkpoints; deleting one that is gone
    # failed a restored trial with "Path not found .../checkpoint_000002".
    import pickle
    exp = tmp_path / "sweep"
    trial = exp / "run_trial_a"
    for i in (5, 6):
        (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{i:06d}" / "last.pt").write_text(f"epoch {i + 1}")
    manager = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(
        {"kept": [str(trial / f"checkpoint_{i:06d}") for i in (2, 3, 5)]}).hex()}
    (exp / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps({"trial_data": [[
        json.dumps({"trial_id": "a", "relative_logdir": "run_trial_a"}),
        json.dumps({"last_result": {"checkpoint_dir_name": "checkpoint_000004"}, "checkpoint_manager": manager})]]}))
    filled = restore_lost_checkpoints(str(exp))
    assert filled == [str(trial / f"checkpoint_{i:06d}") for i in (4, 2, 3)]
    assert all((trial / f"checkpoint_{i:06d}" / "last.pt").read_text() == "epoch 7" for i in (2, 3, 4))
    assert restore_lost_checkpoints(str(exp)) == []
