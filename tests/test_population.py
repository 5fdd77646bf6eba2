"""Population-based curriculum search (PBT, PB2) on a real Ray cluster with a real MLflow store:
mutations happen, a trial continues from the checkpoint it copied inside its own run, and a
killed-then-resumed population repeats nothing."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from mtlsweep.config.errors import ConfigError
from mtlsweep.search.driver import SweepArgs, run_sweep
from mtlsweep.search.population import ClipToRange, exploits, fold_task_weights
from mtlsweep.training.callbacks import Callback
from mtlsweep.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SPACE = {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
         "schedule.task_weights": {"type": "loguniform", "low": 0.25, "high": 4.0}}


@pytest.fixture
def pop_dir(tmp_path, signal_store_path):
    from conftest import write_sweep_files
    write_sweep_files(tmp_path, signal_store_path, SPACE, "population", epochs=5, steps=8)
    return tmp_path


def _args(d: Path, name: str, **kw) -> SweepArgs:
    return SweepArgs(base=str(d / "base.yaml"), space=str(d / "space.yaml"), name=name, workspace=str(d / "ws"),
                     tracking_uri=f"sqlite:///{d / 'ws' / 'mlflow.db'}", cpus_per_trial=1, verbose=0,
                     baseline="fixed", **kw)


def _trials(client, sweep):
    exp = client.get_experiment_by_name("population")
    return client.search_runs([exp.experiment_id], f"tags.role = 'trial' and tags.sweep = '{sweep}'", max_results=100)


def _steps(client, run_id, key="val/auroc_mean"):
    return [m.step for m in client.get_metric_history(run_id, key)]


# ---- refused before any cluster work ----------------------------------------------------------

@pytest.mark.parametrize("space,kind,why", [
    ({"model.sharing.shared_layers": {"type": "categorical", "values": [0, 5]}}, "pbt", "cannot change while"),
    ({"optim.lr": {"type": "categorical", "values": [0.01, 0.02]}}, "pb2", "PB2 models continuous ranges"),
    ({"schedule.task_weights": {"type": "float", "low": 0.0, "high": 2.0}}, "pbt", "positive weights"),
    ({"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
      "optim.weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3,
                             "when": {"optim.lr": {"gt": 0.005}}}}, "pbt", "no when:"),
])
def test_a_space_a_population_cannot_search_is_refused_in_one_line(pop_dir, space, kind, why):
    (pop_dir / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError) as e:
        run_sweep(_args(pop_dir, "refused", scheduler=kind, num_samples=2), log=lambda *_: None)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert not (pop_dir / "ws" / "sweeps").exists()           # nothing written


def test_perturbation_interval_must_leave_a_perturbation(pop_dir):
    with pytest.raises(ConfigError, match="perturbation-interval 5"):
        run_sweep(_args(pop_dir, "late", scheduler="pbt", num_samples=2, perturbation_interval=5), log=lambda *_: None)


def test_perturbed_values_stay_in_the_range_searched_and_task_weights_fold_into_one_key():
    clip = ClipToRange({"optim.lr": (1e-3, 3e-2, False), "n": (1, 4, True)})
    assert clip({"optim.lr": 0.05, "n": 7.2, "other": 9}) == {"optim.lr": 3e-2, "n": 4, "other": 9}
    folded = fold_task_weights({"optim.lr": 0.01, "schedule.task_weights@task0": 2.0,
                                "schedule.task_weights@task2": 0.5})
    assert folded == {"optim.lr": 0.01, "schedule.task_weights": {"task0": 2.0, "task2": 0.5},
                      "schedule.weighting": "fixed"}


def test_a_resume_may_change_the_schedule_only_when_told(tiny_config, tmp_path):
    """What PBT relies on in training/: a run continued with a new learning rate and task weights
    keeps its model and optimizer moments, steps with the new rate, and is refused without leave."""
    from conftest import run

    from mtlsweep.training.engine import Trainer
    cfg = tiny_config(**{"train.epochs": 2, "train.patience": 5})
    run(cfg, tmp_path / "r")
    moved = cfg.with_overrides({"optim.lr": 0.002, "train.epochs": 4, "schedule.weighting": "fixed",
                                "schedule.task_weights": {"task0": 3.0}})
    with pytest.raises(ConfigError, match="optim.lr was 0.01"):
        Trainer(moved, tmp_path / "r").resume(tmp_path / "r" / "last.pt")
    t = Trainer(moved, tmp_path / "r")
    t.resume(tmp_path / "r" / "last.pt", mutable=("optim.lr", "schedule.task_weights", "schedule.task_weights.",
                                                   "schedule.weighting"))
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert {g["lr"] for g in t.optimizer.param_groups} == {0.002}
    assert t.start_epoch == 3 and len(t.history) == 2
    state = t.optimizer.state_dict()["state"]
    assert all(torch.equal(state[i]["exp_avg"], ck["optimizer"]["state"][i]["exp_avg"]) for i in state)


# ---- a real population --------------------------------------------------------------------------

def test_pbt_mutates_from_checkpoints_and_each_trial_keeps_one_run_with_its_schedule(ray_cluster, pop_dir):
    result = run_sweep(_args(pop_dir, "pbt", scheduler="pbt", num_samples=4, perturbation_interval=1, seed=3),
                       log=lambda *_: None)
    assert result.n_trials == 4 and result.n_errors == 0
    client = MlflowClient(f"sqlite:///{pop_dir / 'ws' / 'mlflow.db'}")
    runs = _trials(client, "pbt")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)     # one run per trial
    ids = {r.data.tags["trial_id"]: r for r in runs}
    copies = [(r, e, rec) for r in runs for e, rec in exploits(r.data.tags)]
    assert copies, "no trial copied another in 4 perturbations of a population of 4"
    for r, epoch, rec in copies:
        assert rec["from_trial"] in ids and rec["from_trial"] != r.data.tags["trial_id"]
        assert rec["from_run"] == ids[rec["from_trial"]].info.run_id
        assert rec["changed"] or rec["task_weights_changed"], rec     # it went on with a perturbed schedule
    for r in runs:
        # One value per epoch, in order, through every copy; the schedule logged beside it.
        steps = _steps(client, r.info.run_id)
        assert steps == list(range(1, len(steps) + 1)), steps
        assert _steps(client, r.info.run_id, "optim/lr") == steps
        assert _steps(client, r.info.run_id, "schedule/task_weight/task0") == steps
        assert "test/auroc_mean" in r.data.metrics
        # Its best/ metrics are those of the model it was tested with, whichever lineage that came from.
        tested = load_checkpoint(Path(r.data.tags["run_dir"]) / "best.pt")
        assert r.data.metrics["best/epoch"] == tested["epoch"], (r.info.run_name, exploits(r.data.tags))
        assert r.data.metrics["best/val/auroc_mean"] == pytest.approx(tested["best_val"], abs=1e-9)
    # The copy continued from the checkpoint it copied: its lineage up to the copy is the other
    # trial's (the history its last checkpoint carries), not its own first epochs.
    r, epoch, rec = copies[-1]
    history = load_checkpoint(Path(r.data.tags["run_dir"]) / "last.pt")["history"]
    donor_val = {m.step: m.value for m in client.get_metric_history(rec["from_run"], "val/auroc_mean")}
    assert history[epoch - 2]["val/auroc_mean"] == pytest.approx(donor_val[epoch - 1], abs=1e-6)
    # The learning rate it trained with from the copy on is the perturbed one.
    for r, epoch, rec in copies:
        if "optim.lr" in rec["changed"]:
            lr = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "optim/lr")}
            assert lr[epoch] == pytest.approx(rec["changed"]["optim.lr"][1])
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["sweep.scheduler"] == "pbt"
    assert "population_schedules.png" in {a.path for a in client.list_artifacts(result.parent_run_id)}


def test_pb2_runs_a_population(ray_cluster, pop_dir):
    (pop_dir / "space.yaml").write_text(yaml.safe_dump({"optim.lr": SPACE["optim.lr"]}))
    result = run_sweep(_args(pop_dir, "pb2", scheduler="pb2", num_samples=3, perturbation_interval=2, seed=1),
                       log=lambda *_: None)
    assert result.n_trials == 3 and result.n_errors == 0
    client = MlflowClient(f"sqlite:///{pop_dir / 'ws' / 'mlflow.db'}")
    runs = _trials(client, "pb2")
    lrs = [v for r in runs for v in (m.value for m in client.get_metric_history(r.info.run_id, "optim/lr"))]
    assert len(runs) == 3 and all(1e-3 <= v <= 3e-2 for v in lrs)
    assert any(exploits(r.data.tags) for r in runs)                   # PB2 chose where a copy goes on


def test_a_member_copies_a_donor_that_trained_a_whole_interval_on(ray_cluster, pop_dir):
    # 6 members on 2 CPUs, a barrier every 3 epochs: a donor may train to the next barrier before the
    # member copying it gets a slot. With Tune keeping 3 checkpoints a trial, the donor's barrier
    # checkpoint was deleted by then and the member failed ("does not exist on storage anymore").
    result = run_sweep(_args(pop_dir, "late-copy", scheduler="pbt", num_samples=6, perturbation_interval=3, seed=0,
                             max_failures=0, overrides=["train.epochs=9", "train.patience=9"]),
                       log=lambda *_: None)
    assert result.n_trials == 6 and result.n_errors == 0
    client = MlflowClient(f"sqlite:///{pop_dir / 'ws' / 'mlflow.db'}")
    runs = _trials(client, "late-copy")
    assert any(exploits(r.data.tags) for r in runs)
    assert all(_steps(client, r.info.run_id) == list(range(1, 10)) for r in runs)


class FailWhileOthersWait(Callback):  # pickled by value: Ray's workers cannot import this test module
    """Member 0 fails at epoch 3, once every other member has reached epoch 4 (the barrier) and waits."""

    def __init__(self, members: int):
        self.members = members

    def on_epoch_end(self, report):
        from ray import tune
        if report.epoch != 3 or not tune.get_context().get_trial_id().endswith("_00000"):
            return
        # The members' run directories are siblings (train.out_dir/<sweep>/<trial id>).
        others = [d for d in Path(self.run_dir).parent.iterdir() if d != Path(self.run_dir)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(_epoch(d / "last.pt") >= 4 for d in others) < self.members - 1:
            time.sleep(0.2)
        raise RuntimeError("injected: member 0 ends at epoch 3 while the others wait at epoch 4")

    def on_train_start(self, info):
        self.run_dir = str(info.run_dir)


def _epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except Exception:          # not written yet, or being replaced
        return 0


def test_a_member_that_ends_while_the_others_wait_at_the_barrier_does_not_stall_the_population(ray_cluster,
                                                                                                 pop_dir):
    # Ray perturbs when a result reaches the barrier; a member ending instead (an error here, early
    # stopping alike) left the others waiting there for ever.
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def timeout(*_):
        raise TimeoutError("the population stalled at its barrier")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(240)
    try:
        result = run_sweep(_args(pop_dir, "stall", scheduler="pbt", num_samples=4, perturbation_interval=2, seed=0,
                                 max_failures=0, extra_callbacks=(FailWhileOthersWait(4),),
                                 overrides=["train.epochs=6", "train.patience=6"]), log=lambda *_: None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert result.n_trials == 4 and result.n_errors == 1
    client = MlflowClient(f"sqlite:///{pop_dir / 'ws' / 'mlflow.db'}")
    finished = [r for r in _trials(client, "stall") if r.info.status == "FINISHED"]
    assert len(finished) == 3 and all(_steps(client, r.info.run_id) == list(range(1, 7)) for r in finished)


class _Member:
    """What PB2 reads of a trial: its config and its name."""

    def __init__(self, name, lr):
        self.name, self.experiment_tag, self.config = name, name, {"optim.lr": lr}

    def __str__(self):
        return self.name


def test_pb2_models_a_log_range_in_log_space_and_hands_back_values_in_range():
    from ray.tune.schedulers.pbt import _PBTTrialState

    from mtlsweep.search.population import population_scheduler
    from mtlsweep.search.space import parse_space
    space = parse_space({"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}})
    sched = population_scheduler("pb2", space, [], metric="val/auroc_mean", mode="max", interval=2, seed=0)
    assert sched._hyperparam_bounds_flat["optim.lr"] == pytest.approx([np.log(1e-4), np.log(1e-1)])
    members = [_Member(f"m{i}", lr) for i, lr in enumerate((1e-4, 1e-3, 1e-2, 1e-1))]

    def barrier(t):      # progress that peaks at lr 1e-3
        for m in members:
            auroc = 0.5 + t * (0.05 - 0.01 * abs(np.log10(m.config["optim.lr"]) + 3))
            sched._save_trial_state(_PBTTrialState(m), t, {"training_iteration": t, "val/auroc_mean": auroc}, m)
    barrier(2)
    # One record per member, no progress yet: PB2 hands back the clone's value as it is, which must
    # not come back exponentiated twice.
    fresh, _ = sched._get_new_config(members[0], members[2])
    assert fresh["optim.lr"] == pytest.approx(1e-2) and members[2].config == {"optim.lr": 1e-2}
    barrier(4)
    barrier(6)
    assert sched.data["optim.lr"].min() == pytest.approx(np.log(1e-4))      # the GP's data: log values
    new, _ = sched._get_new_config(members[3], members[1])
    assert 1e-4 <= new["optim.lr"] <= 1e-1                                  # a learning rate, in its range
    assert members[1].config == {"optim.lr": 1e-3}                          # the clone's own config untouched


class _Controller:
    """What PBT asks of Tune's controller, over stub trials that train when chosen."""
    search_alg = None

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return [t for t in self.trials if not t.is_finished()]

    def pause_trial(self, trial, should_checkpoint=True):
        from ray.tune.experiment import Trial
        trial.set_status(Trial.PAUSED)

    def _schedule_trial_save(self, trial, result=None):
        return trial.checkpoint


@pytest.mark.parametrize("interval", [1, 2])
def test_a_population_restored_with_members_at_different_epochs_copies_only_at_one_epoch(tmp_path, interval):
    """A snapshot catches a population between barriers: members restored at epochs 3, 3, 2 and from
    scratch (the weakest). Every copy after the restore is of a donor at the copier's own epoch, and
    every member's run holds each epoch once, none skipped (what a kill that resumed into a barrier
    behind the leaders lost: a run's epochs 1, 3, 4, ...)."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from mtlsweep.search.population import population_scheduler
    from mtlsweep.search.space import parse_space
    sched = population_scheduler("pbt", parse_space({"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}),
                                 [], metric="val/auroc_mean", mode="max", interval=interval, seed=0)
    sched._log_config = False             # its policy files go to the trials' storage, which stubs have not
    skill = {"a": 0.9, "b": 0.8, "c": 0.6, "d": 0.5}

    def result(name, t):
        return {"training_iteration": t, "val/auroc_mean": skill[name] + 0.001 * t}

    def checkpoint(trial, t):
        d = tmp_path / f"{trial.trial_id}-{t}"
        d.mkdir()
        (d / "epoch").write_text(f"{trial.trial_id} {t}")
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            Checkpoint.from_directory(str(d)), result(trial.trial_id, t))

    def at(trial):       # (whose checkpoint, epoch) the trial resumes from; ("", 0): from scratch
        latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
        if latest is None:
            return "", 0
        owner, t = (Path(latest.checkpoint.path) / "epoch").read_text().split()
        return owner, int(t)
    restored = {"a": 3, "b": 3, "c": 2, "d": 0}
    trials, logged = [], {}
    for name, t in restored.items():
        trial = Trial("f", config={"optim.lr": 0.01}, trial_id=name, stub=True)
        if t:
            checkpoint(trial, t)
            trial.run_metadata.last_result = result(name, t)
        logged[name] = list(range(1, t + 2))        # each logged the epoch it was training when killed
        trials.append(trial)
    ctrl = _Controller(trials)
    for trial in trials:
        sched.on_trial_add(ctrl, trial)
    copies = []
    while (trial := sched.choose_trial_to_run(ctrl)) is not None:
        trial.set_status(Trial.RUNNING)
        before = at(trial)
        if before[0] not in ("", trial.trial_id):
            copies.append((trial.trial_id, before))
        t = before[1] + 1
        logged[trial.trial_id] += [] if t in logged[trial.trial_id] else [t]
        checkpoint(trial, t)
        if t >= 10:
            trial.set_status(Trial.TERMINATED)
            continue
        decision = sched.on_trial_result(ctrl, trial, result(trial.trial_id, t))
        if decision == TrialScheduler.PAUSE:
            trial.set_status(Trial.PAUSED)
        elif decision == TrialScheduler.CONTINUE:
            trial.set_status(Trial.PAUSED)          # trains its next epoch when chosen again
        for other in trials:
            owner, epoch = at(other)
            if owner not in ("", other.trial_id):
                assert epoch == max(logged[other.trial_id]), (other.trial_id, owner, epoch, logged)
    assert copies, "no member copied another after the restore"
    assert {n: sorted(v) for n, v in logged.items()} == {n: list(range(1, 11)) for n in restored}, logged


def test_a_killed_then_resumed_population_repeats_nothing(pop_dir):
    uri = f"sqlite:///{pop_dir / 'ws' / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mtlsweep.search.sweep", "--base", str(pop_dir / "base.yaml"), "--space",
           str(pop_dir / "space.yaml"), "--num-samples", "4", "--name", "killed", "--workspace", str(pop_dir / "ws"),
           "--tracking-uri", uri, "--scheduler", "pbt", "--perturbation-interval", "1", "--baseline", "fixed",
           "--verbose", "0", "--set", "train.epochs=8", "--set", "train.patience=8"]
    # The driver runs its own embedded Ray, as `mtlsweep sweep` does on a workstation: the kill
    # takes that cluster down with it, and the resumed driver starts another.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    err = pop_dir / "killed.err"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    client = MlflowClient(uri)
    deadline = time.time() + 600

    def copied():
        return client.get_experiment_by_name("population") is not None and \
            any(exploits(r.data.tags) for r in _trials(client, "killed"))
    while time.time() < deadline and proc.poll() is None and not copied():
        time.sleep(0.3)
    assert proc.poll() is None, "the population ended before the kill point: " + err.read_text()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    r = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = _trials(client, "killed")
    done = [x for x in runs if x.info.status == "FINISHED" and "orphaned" not in x.data.tags]
    assert len(done) == 4 and len({x.data.tags["trial_id"] for x in done}) == 4, \
        [(x.data.tags.get("trial_id"), x.info.status) for x in runs]
    for x in done:
        for key in ("val/auroc_mean", "optim/lr"):
            steps = _steps(client, x.info.run_id, key)
            assert steps == list(range(1, len(steps) + 1)), (key, steps)
        assert "test/auroc_mean" in x.data.metrics
