"""Exactly once under faults, with the faults caused for real: a tracking server SIGKILLed before
a run's end, and sweep drivers SIGKILLed at chosen points, then resumed. Each test counts what
MLflow holds afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mtlsweep.app.cli import main
from mtlsweep.mlflow_server import server
from mtlsweep.training.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]


def _state(client: MlflowClient, run_id: str) -> dict:
    """Everything of a run that an interrupted run must end up with, without ids and times."""
    run = client.get_run(run_id)
    hist = {k: sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, k))
            for k in run.data.metrics}

    def files(path=""):
        out = []
        for f in client.list_artifacts(run_id, path):
            out.extend(files(f.path) if f.is_dir else [f.path])
        return out
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") and k not in ("checkpoint",)}
    return {"status": run.info.status, "params": run.data.params, "tags": tags, "metrics": hist,
            "artifacts": sorted(files())}


class _KillServerBeforeEnd(Callback):
    """SIGKILLs the tracking server after the last epoch's metrics are handed to the logger and
    before the run's end is logged (test metrics, artifacts, status)."""

    def __init__(self, info):
        self.info = info

    def on_train_end(self, result):
        os.killpg(self.info.pgid, signal.SIGKILL)
        for _ in range(50):
            if not server._health(self.info.url, timeout=0.2):
                return
            time.sleep(0.1)


def test_server_away_at_the_end_finishes_locally_and_sync_completes_the_run(killable_server, tiny_config, tmp_path,
                                                                           recwarn):
    from conftest import run

    from mtlsweep.mlflow_server.attach import Tracking, run_callbacks
    d, info = killable_server
    cfg = tiny_config(**{"train.epochs": 2, "tracking.enabled": True, "tracking.experiment": "away"})

    def train(name, extra=()):
        callbacks, logger = run_callbacks(cfg, Tracking(info.url, "away", run_name=name, async_=False))
        # The killer goes first, so that the logger's on_train_end meets a dead server.
        run(cfg, tmp_path / "runs" / name, callbacks=[*extra, *callbacks], progress=False)
        return logger.run_id

    whole = train("whole")
    cut = train("cut", [_KillServerBeforeEnd(info)])           # must not raise: training completed
    assert any("unreachable at the end of the run" in str(w.message) for w in recwarn)
    spool = tmp_path / "runs" / "cut" / "mlflow_spool"
    assert (spool / "pending_status.jsonl").is_file() and (spool / "pending_artifacts.jsonl").is_file()

    info2 = server.start(d, port=info.port)                    # same database, same address
    client = MlflowClient(info2.url)
    assert client.get_run(cut).info.status == "RUNNING"
    assert main(["sync", str(spool)]) == 0
    a, b = _state(client, whole), _state(client, cut)
    assert a["status"] == b["status"] == "FINISHED"
    assert a["artifacts"] == b["artifacts"] and a["params"].keys() == b["params"].keys()
    assert {k: [s for s, _ in v] for k, v in a["metrics"].items()} == \
        {k: [s for s, _ in v] for k, v in b["metrics"].items()}           # every key, at the same steps
    assert main(["sync", str(spool)]) == 0                     # a second sync sends nothing twice
    assert _state(client, cut) == b
    assert not any(spool.glob("pending_*.jsonl"))


def test_sigterm_ends_a_train_run_as_killed_and_resume_finishes_it(tiny_config, tmp_path):
    """`kill` (SIGTERM) of `mtlsweep train` mid-run: exit 143, the MLflow run KILLED (not left
    RUNNING) with its epochs so far; --resume continues the same run to FINISHED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "c.yaml").write_text(tiny_config(**{"train.steps_per_epoch": 20}).to_yaml())
    base = [sys.executable, "-m", "mtlsweep", "train", "--config", str(tmp_path / "c.yaml"), "--no-progress",
            "--tracking-uri", uri, "--set", f"train.out_dir={tmp_path / 'runs'}", "--set", "train.patience=100"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(base + ["--name", "t", "--set", "train.epochs=100"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Watched through its checkpoint file, not MLflow: a second client creating the store's
    # tables beside the run's own would race it.
    last, seen, deadline = tmp_path / "runs" / "t" / "last.pt", set(), time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(seen) < 2:
        if last.exists():
            seen.add(last.stat().st_mtime_ns)
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    client = MlflowClient(uri)
    assert proc.returncode == 143 and "mtlsweep: terminated" in err and "Traceback" not in err, err
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    done = len(client.get_metric_history(run.info.run_id, "val/auroc_mean"))
    assert run.info.status == "KILLED" and 2 <= done < 100
    r = subprocess.run(base + ["--resume", str(tmp_path / "runs" / "t"), "--set", f"train.epochs={done + 2}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (again,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc_mean")]
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert steps == list(range(1, done + 3))


# ---- sweeps: the driver SIGKILLed at chosen points, then resumed with the same --name ---------

SPACE = {"optim.lr": {"type": "loguniform", "low": 3e-3, "high": 3e-2},
         "model.sharing.shared_layers": {"type": "categorical", "values": [0, 5]}}


@pytest.fixture
def sweep_dir(tmp_path, signal_store_path):
    from conftest import write_sweep_files
    write_sweep_files(tmp_path, signal_store_path, SPACE, "faults", epochs=4, steps=10)
    return tmp_path


def _trials(client, sweep):
    exp = client.get_experiment_by_name("faults")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.role = 'trial' and tags.sweep = '{sweep}'", max_results=500)


def _duplicates(client, run) -> list[str]:
    """Metric keys of a run with two values at one step."""
    out = []
    for k in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, k)]
        if len(steps) != len(set(steps)):
            out.append(f"{run.data.tags.get('trial_id')}:{k}:{steps}")
    return out


def _epochs(client, run_id) -> int:
    return len(client.get_metric_history(run_id, "val/auroc_mean"))


def _kill_and_resume(d: Path, ray_cluster, name: str, scheduler: str, kill_when, n: int = 6, sig=signal.SIGKILL,
                     extra: tuple = ()):
    uri = f"sqlite:///{d / 'ws' / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mtlsweep.search.sweep", "--base", str(d / "base.yaml"), "--space",
           str(d / "space.yaml"), "--num-samples", str(n), "--max-concurrent", "2", "--name", name,
           "--workspace", str(d / "ws"), "--tracking-uri", uri, "--scheduler", scheduler, "--grace-period", "1",
           "--baseline", "fixed", "--verbose", "0", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(uri)
    deadline = time.time() + 600          # a loaded machine trains the baseline first for minutes
    while time.time() < deadline and proc.poll() is None and not kill_when(_trials(client, name)):
        time.sleep(0.3)
    assert proc.poll() is None, "the sweep ended before the kill point"
    if not kill_when(_trials(client, name)):
        proc.kill()
        proc.wait()
        pytest.fail("the kill point was not reached within 600 s")
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    before = {r.info.run_id: r for r in _trials(client, name)}
    if sig == signal.SIGTERM:         # ended, not killed: nothing of it is left RUNNING
        assert rc == 143
        exp = client.get_experiment_by_name("faults").experiment_id
        parent = client.search_runs([exp], f"tags.role = 'sweep' and tags.sweep = '{name}'")[0]
        assert parent.info.status == "KILLED" and "interrupted" in parent.data.tags
        assert not [r for r in client.search_runs([exp], "attributes.status = 'RUNNING'")]
        assert any("interrupted" in r.data.tags and r.info.status == "KILLED" for r in before.values())
    epochs_before = {i: _epochs(client, i) for i in before}
    r = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    after = {x.info.run_id: x for x in _trials(client, name)}
    done = [x for x in after.values() if x.info.status == "FINISHED" and "orphaned" not in x.data.tags]
    counts = {"runs": len(after), "finished": len(done),
              "duplicates": [d for x in after.values() for d in _duplicates(client, x)],
              "flipped": sum(1 for i, x in before.items() if x.info.status == "FINISHED"
                             and after[i].info.status != "FINISHED"),
              "pruned_resumed": sum(1 for i, x in before.items() if "stopped_early" in x.data.tags
                                    and _epochs(client, i) != epochs_before[i]),
              "orphaned": sum("orphaned" in x.data.tags for x in after.values()),
              "adopted": sum("adopted_by" in x.data.tags for x in after.values()),
              "baselines": len(client.search_runs([client.get_experiment_by_name("faults").experiment_id],
                                                  "tags.role = 'baseline'"))}
    print(f"{name}: {counts}")
    # Every trial of the restored sweep FINISHED once. A trial the killed driver finished after its
    # last snapshot stays FINISHED beside them when the restored searcher proposes another
    # configuration in its place (at most the --max-concurrent 2 running at the kill); no
    # configuration is ever trained, or finished, twice.
    assert n <= counts["finished"] <= n + 2, counts
    assert len({x.data.tags["trial_id"] for x in done}) == len(done)
    assert len({x.data.tags["config_fp"] for x in done}) == len(done), counts
    assert counts["duplicates"] == [] and counts["flipped"] == counts["pruned_resumed"] == 0, counts
    assert counts["baselines"] == 1, counts                    # the baseline is reused, not retrained
    for x in done:                                             # each with its full history
        steps = [m.step for m in client.get_metric_history(x.info.run_id, "val/auroc_mean")]
        assert steps == list(range(1, len(steps) + 1)), (x.info.run_id, steps)
        assert "stopped_early" in x.data.tags or "test/auroc_mean" in x.data.metrics
    return counts


def _finished(runs):
    return [r for r in runs if r.info.status == "FINISHED"]


def test_kill_after_two_finished_trials(sweep_dir, ray_cluster):
    _kill_and_resume(sweep_dir, ray_cluster, "after-two", "none", lambda runs: len(_finished(runs)) >= 2)


def test_kill_right_as_a_trial_finishes(sweep_dir, ray_cluster):
    """Killed the moment a trial's run turns FINISHED: its end is logged, Tune's snapshot may not
    have it yet. The restored sweep must count it once, not train or log it again."""
    _kill_and_resume(sweep_dir, ray_cluster, "at-end", "none", lambda runs: len(_finished(runs)) >= 1)


def test_sigterm_mid_trial_closes_runs_as_killed_and_resumes(sweep_dir, ray_cluster):
    # Its kill point lasts one trial's life (a trial running after one finished): 12 epochs, not 4,
    # so that a loaded machine still sees it before the 3 trials end.
    _kill_and_resume(sweep_dir, ray_cluster, "sigterm", "none",
                     lambda runs: any(r.info.status == "RUNNING" for r in runs) and len(_finished(runs)) >= 1,
                     n=3, sig=signal.SIGTERM, extra=("--set", "train.epochs=12", "--set", "train.patience=12"))


def test_kill_with_a_pruned_trial_present(sweep_dir, ray_cluster):
    _kill_and_resume(sweep_dir, ray_cluster, "pruned", "asha",
                     lambda runs: any("stopped_early" in r.data.tags for r in runs), n=6)


def test_killed_embedded_driver_leaves_no_ray_helper_after_the_next_start(tmp_path):
    """SIGKILL a driver that runs its own embedded Ray: what it leaves behind is ended by the
    next start's clean-up, and no process of that cluster is left."""
    from mtlsweep.search.ray_leftovers import end_orphaned_agents, orphaned_agents
    script = tmp_path / "driver.py"
    script.write_text("import time\nfrom mtlsweep.search.driver import start_embedded\n"
                      "start_embedded(1)\nprint('up', flush=True)\ntime.sleep(600)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    before = set(orphaned_agents())
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "up"
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(5)                                           # the raylet notices its driver is gone
    left = set(orphaned_agents()) - before
    print(f"agents left by the killed driver: {len(left)}")
    end_orphaned_agents()
    assert not set(orphaned_agents()), "orphaned Ray agents survive the clean-up"


def test_a_restored_trial_adopts_the_finished_run_of_its_configuration(tmp_path):
    """The case a snapshot can still miss: a trial finished after the killed driver's last
    experiment snapshot, and the restored searcher proposes its configuration again under a
    new trial id. The new trial takes that FINISHED run as its own (once) instead of training."""
    from mtlsweep.search.trial import SweepContext, _own_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("adopt")
    parent = client.create_run(exp, tags={"role": "sweep"}).info.run_id
    kid = client.create_run(exp, tags={"mlflow.parentRunId": parent, "role": "trial", "trial_id": "old",
                                       "config_fp": "fp1"}).info.run_id
    ctx = SweepContext(base={}, tracking_uri=uri, experiment="adopt", parent_run_id=parent)
    assert _own_run(ctx, "new", None, "fp1") is None           # still RUNNING: not a result to adopt
    client.set_terminated(kid, "FINISHED")
    run = _own_run(ctx, "new", None, "fp1")
    assert run.info.run_id == kid and run.data.tags["trial_id"] == "new" and run.data.tags["first_trial_id"] == "old"
    assert _own_run(ctx, "other", None, "fp1") is None          # adopted once, by one trial
    assert _own_run(ctx, "new", None, "fp1").info.run_id == kid  # and found again by its new id
    assert _own_run(ctx, "x", None, "fp2") is None
