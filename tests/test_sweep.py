"""Sweeps on a real Ray cluster (loopback) with a real local MLflow store."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mtlsweep.search.driver import SweepArgs, run_sweep
from mtlsweep.training.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]

SPACE = {
    "model.sharing.shared_layers": {"type": "categorical", "values": [0, 2, 5]},
    "model.sharing.coupling": {"type": "categorical", "values": ["none", "l2"],
                               "when": {"model.sharing.shared_layers": {"lt": 5}}},
    "model.sharing.strength": {"type": "loguniform", "low": 1e-3, "high": 1.0,
                               "when": {"model.sharing.coupling": "l2"}},
    "init.kind": {"type": "categorical", "values": ["random", "from_single"]},
    "init.checkpoint": {"type": "categorical", "values": ["@baseline"], "when": {"init.kind": "from_single"}},
    "init.task": {"type": "categorical", "values": [0, 1], "when": {"init.kind": "from_single"}},
    "schedule.order": {"type": "categorical", "values": ["joint", "task_per_epoch", "curriculum"],
                       "when": {"model.sharing.shared_layers": {"gt": 0}}},
    "optim.lr": {"type": "loguniform", "low": 3e-3, "high": 2e-2},
}


@pytest.fixture
def sweep_files(tmp_path, signal_store_path):
    from conftest import write_sweep_files
    write_sweep_files(tmp_path, signal_store_path, SPACE, "sweep-test", epochs=3, steps=12)
    return tmp_path


def _args(d: Path, name: str, **kw) -> SweepArgs:
    uri = f"sqlite:///{d / 'ws' / 'mlflow.db'}"
    return SweepArgs(base=str(d / "base.yaml"), space=str(d / "space.yaml"), name=name, workspace=str(d / "ws"),
                     tracking_uri=uri, max_concurrent=2, cpus_per_trial=1, grace_period=1, verbose=0, **kw)


def _children(client, parent, role="trial"):
    exp = client.get_experiment_by_name("sweep-test")
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}' and tags.role = '{role}'",
                              max_results=1000)


def test_sweep_trains_baseline_first_logs_nested_deltas_and_exports_a_reproducible_config(
        ray_cluster, sweep_files):
    d = sweep_files
    result = run_sweep(_args(d, "s1", num_samples=6), log=lambda *_: None)
    assert result.n_trials == 6 and result.n_errors == 0
    client = MlflowClient(f"sqlite:///{d / 'ws' / 'mlflow.db'}")
    base = client.get_run(result.baseline.run_id)
    assert base.data.tags["role"] == "baseline" and base.info.status == "FINISHED"
    kids = _children(client, result.parent_run_id)
    assert len(kids) == 6
    assert all(k.info.status == "FINISHED" for k in kids)
    assert all(k.info.start_time > base.info.end_time for k in kids), (base.info.end_time, [k.info.start_time for k in kids])
    for k in kids:
        m = k.data.metrics
        assert {"best/val/auroc_mean", "val/delta_auroc_mean", "val/tasks_improved"} <= set(m)
        assert "best/val/delta_auroc/task0" in m
    fams = {k.data.tags["family"] for k in kids}
    assert fams & {"hard", "soft", "branched", "single"}
    complete = [k for k in kids if "stopped_early" not in k.data.tags]     # ASHA's stops have no end artifacts
    assert complete
    for k in complete:  # trials leave learning curves to MLflow's charts; weights only when they vary
        arts = {a.path for a in client.list_artifacts(k.info.run_id)}
        assert {"per_task.csv", "auroc_vs_baseline.png", "config.yaml"} <= arts and "learning_curves.png" not in arts
        weights = [m.value for key in k.data.metrics if key.startswith("schedule/weight/")
                   for m in client.get_metric_history(k.info.run_id, key)]
        varies = max(weights) != min(weights)
        assert ("schedule_weights.png" in arts) == varies, (k.data.params.get("schedule.order"), weights, arts)
    assert any(r["role"] == "baseline" for r in result.summary)

    # The baseline was tuned: its own search over the space's optimizer key (optim.lr) with as many
    # trials as each family (6 trials over 4 families: 2), the best completed one kept.
    assert result.protocol.kind == "tuned" and result.protocol.keys == ("optim.lr",) and result.protocol.trials == 2
    candidates = _children(client, result.parent_run_id, "baseline_candidate")
    assert len(candidates) == 1 and base.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert base.data.metrics["best/val/auroc_mean"] >= candidates[0].data.metrics["best/val/auroc_mean"]
    assert "tuned: 2 trial(s) over optim.lr" in base.data.tags["baseline_protocol"]
    assert all(k.data.tags["baseline_run_id"] == base.info.run_id for k in kids)

    # A second sweep with the same protocol reuses the baseline instead of searching it again.
    again = run_sweep(_args(d, "s2", num_samples=2, baseline_trials=2), log=lambda *_: None)
    assert again.baseline.run_id == result.baseline.run_id
    assert not _children(client, again.parent_run_id, "baseline_candidate")

    # Export the best trial and rerun it with `mtlsweep train`: same validation AUROC.
    out = d / "best"
    subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "export-best", "--experiment", "sweep-test",
                    "--sweep", result.parent_run_id, "--top", "1", "--out", str(out),
                    "--tracking-uri", f"sqlite:///{d / 'ws' / 'mlflow.db'}"], check=True, cwd=REPO)
    best = max(kids, key=lambda k: k.data.metrics["best/val/auroc_mean"])
    cfg = yaml.safe_load((out / "1.yaml").read_text())
    assert cfg["train"]["seed"] == 0 and "@baseline" not in str(cfg)
    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "train", "--config", str(out / "1.yaml"),
                        "--name", "rerun", "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    rerun = json.loads((Path(cfg["train"]["out_dir"]) / "rerun" / "metrics.json").read_text())
    # The trial's threads are in its exported config: the rerun matches it per task, exactly.
    assert cfg["train"]["num_threads"] == 1
    per_task = {k: v for k, v in best.data.metrics.items() if k.startswith("best/val/auroc/")}
    again = {k: rerun["final"][k[len("best/"):]] for k in per_task}
    assert per_task and again == pytest.approx(per_task, abs=1e-6), (per_task, again)
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "export-best", "--experiment", "sweep-test",
                        "--out", str(out), "--tracking-uri", f"sqlite:///{d / 'ws' / 'mlflow.db'}"],
                       check=True, cwd=REPO, capture_output=True)


def test_multi_objective_sweep_searches_auroc_up_and_epoch_time_down(ray_cluster, sweep_files):
    d = sweep_files
    result = run_sweep(_args(d, "multi", num_samples=3, objective="multi", scheduler="asha"), log=lambda *_: None)
    assert result.n_trials == 3 and result.n_errors == 0
    client = MlflowClient(f"sqlite:///{d / 'ws' / 'mlflow.db'}")
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["sweep.objective"] == "multi" and parent.info.status == "FINISHED"
    kids = _children(client, result.parent_run_id)
    assert len(kids) == 3 and all("cost/epoch_s" in k.data.metrics for k in kids)


class FailOnce(Callback):  # pickled by value below: Ray's workers cannot import this test module
    """Raises once, after epoch 2's checkpoint, in every trial; the marker survives the retry."""

    def __init__(self, marker_dir):
        self.marker_dir = str(marker_dir)

    def on_epoch_end(self, report):
        from ray import tune
        marker = Path(self.marker_dir) / tune.get_context().get_trial_id()
        if report.epoch == 2 and not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("injected failure at epoch 2")


def test_a_trial_that_fails_once_is_retried_from_its_checkpoint(ray_cluster, sweep_files):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    d = sweep_files
    (d / "markers").mkdir()
    result = run_sweep(_args(d, "retry", num_samples=1, scheduler="none", max_failures=2,
                             extra_callbacks=(FailOnce(d / "markers"),)), log=lambda *_: None)
    assert result.n_errors == 0
    # Two trials failed once and were retried: the baseline's own search trial and the sweep's.
    assert len(list((d / "markers").iterdir())) == 2
    (cand,) = _children(MlflowClient(f"sqlite:///{d / 'ws' / 'mlflow.db'}"), result.parent_run_id, "baseline")
    client = MlflowClient(f"sqlite:///{d / 'ws' / 'mlflow.db'}")
    (kid,) = _children(client, result.parent_run_id)
    assert kid.info.status == "FINISHED"
    epochs = [m.step for m in client.get_metric_history(kid.info.run_id, "val/auroc_mean")]
    assert sorted(set(epochs)) == [1, 2, 3]
    assert epochs.count(1) == 1              # resumed after epoch 1's checkpoint, not from scratch


def test_killed_driver_resumes_without_rerunning_or_double_logging(ray_cluster, sweep_files):
    d = sweep_files
    uri = f"sqlite:///{d / 'ws' / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mtlsweep.search.sweep", "--base", str(d / "base.yaml"), "--space", str(d / "space.yaml"),
           "--num-samples", "6", "--max-concurrent", "2", "--name", "killed", "--workspace", str(d / "ws"),
           "--tracking-uri", uri, "--scheduler", "none"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(uri)
    deadline = time.time() + 300
    finished = []
    while time.time() < deadline:         # kill once a couple of trials are done
        exp = client.get_experiment_by_name("sweep-test")
        if exp is not None:
            finished = client.search_runs([exp.experiment_id], "tags.role = 'trial' and tags.sweep = 'killed' "
                                          "and attributes.status = 'FINISHED'")
            if len(finished) >= 2:
                break
        time.sleep(1)
    assert len(finished) >= 2, "the sweep made no progress"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    all_runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id],
                                  "tags.role = 'trial' and tags.sweep = 'killed'")
    runs = [x for x in all_runs if x.info.status == "FINISHED"]
    trial_ids = [x.data.tags["trial_id"] for x in runs]
    assert len(trial_ids) == len(set(trial_ids)) == 6      # every finished trial once in MLflow
    # Trials the killed driver started after its last snapshot are closed as KILLED, not results.
    assert all(x.info.status == "KILLED" and "orphaned" in x.data.tags for x in all_runs if x not in runs)
    for x in runs:                                          # no epoch logged twice
        steps = [m.step for m in client.get_metric_history(x.info.run_id, "val/auroc_mean")]
        assert len(steps) == len(set(steps))


def test_families_get_equal_trials_and_the_tuned_baseline_as_many(ray_cluster, sweep_files):
    d = sweep_files
    space = {"families": {"hard": {"model.sharing.shared_layers": 5},
                          "soft": {"model.sharing.shared_layers": 0, "model.sharing.coupling": "l2"}},
             "optim.weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
             "model.sharing.strength": {"type": "loguniform", "low": 1e-3, "high": 1.0, "when": {"family": "soft"}},
             "schedule.warm_start.task": {"type": "categorical", "values": [0], "when": {"family": "hard"}},
             "schedule.warm_start.epochs": {"type": "int", "low": 1, "high": 2, "when": {"family": "hard"}}}
    (d / "families.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    args = _args(d, "fam", num_samples=4)
    args.space = str(d / "families.yaml")
    result = run_sweep(args, log=lambda *_: None)
    assert result.n_errors == 0
    client = MlflowClient(f"sqlite:///{d / 'ws' / 'mlflow.db'}")
    kids = _children(client, result.parent_run_id)
    assert sorted(k.data.tags["arm"] for k in kids) == ["hard", "hard", "soft", "soft"]
    assert {k.data.tags["arm"]: k.data.tags["family"] for k in kids} == {"hard": "hard", "soft": "soft"}
    for k in kids:      # a family's own Optuna parameters never reach the config
        assert k.data.params["optim.weight_decay"] != "0.0" and not any("::" in p for p in k.data.params)
        if k.data.tags["arm"] == "hard":    # warm start: judged only once every task had entered
            assert k.data.metrics["schedule/tasks_entered"] == 3
    # The baseline's own search: weight decay only (sharing keys are not its), two trials as each family.
    assert result.protocol.keys == ("optim.weight_decay",) and result.protocol.trials == 2
    assert len(_children(client, result.parent_run_id, "baseline_candidate")) + 1 == 2


def test_a_sweep_with_tracking_off_completes_and_ranks_its_trials_by_the_objective(ray_cluster, tmp_path,
                                                                                signal_store_path):
    """The objective is computed in training: with tracking.enabled false no MLflow store is touched,
    the baselines' run directories are their registry and Tune's results rank the trials."""
    from conftest import write_sweep_files
    space = {"families": {"hard": {"model.sharing.shared_layers": "all"},
                          "towers_l2": {"model.sharing.shared_layers": 0, "model.sharing.coupling": "l2",
                                        "model.sharing.strength": 0.1}},
             "optim.lr": {"type": "loguniform", "low": 3e-3, "high": 2e-2}}
    write_sweep_files(tmp_path, signal_store_path, space, "untracked", epochs=2, steps=6)
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["tracking"]["enabled"] = False
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    logged = []
    args = SweepArgs(base=str(tmp_path / "base.yaml"), space=str(tmp_path / "space.yaml"), name="quiet",
                     workspace=str(tmp_path / "ws"), num_samples=4, max_concurrent=2, cpus_per_trial=1, verbose=0,
                     scheduler="none", objective="val/delta_auroc_mean")
    result = run_sweep(args, log=logged.append)
    assert result.n_trials == 4 and result.n_errors == 0 and result.parent_run_id is None
    assert not (tmp_path / "ws" / "mlflow.db").exists() and not (tmp_path / "ws" / "mlartifacts").exists()
    # the tuned baseline (its own 2-trial search over the learning rate) came from its run directory
    assert Path(result.baseline.run_id).is_dir() and len(result.baseline.auroc) == 3
    rows = result.summary
    assert len(rows) == 4 and sorted(r["arm"] for r in rows) == ["hard", "hard", "towers_l2", "towers_l2"]
    deltas = [r["delta_auroc"] for r in rows]
    assert all(isinstance(d, float) and d == d for d in deltas) and deltas == sorted(deltas, reverse=True)
    assert (tmp_path / "ws" / "compare" / "quiet" / "trials.csv").is_file()
    assert any("ranked by val/delta_auroc_mean" in str(x) for x in logged)


def test_two_sweeps_started_at_once_each_run_their_own_embedded_ray(tmp_path, signal_store_path):
    """Two people on one machine: two sweeps started together, neither naming a cluster, each
    start their own Ray, say so, and finish every trial; neither joins the other's cluster."""
    from conftest import write_sweep_files
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    procs = []
    for who in ("a", "b"):
        d = tmp_path / who
        d.mkdir()
        write_sweep_files(d, signal_store_path, {"optim.lr": {"type": "loguniform", "low": 3e-3, "high": 3e-2}},
                          f"two-{who}", epochs=2, steps=5)
        cmd = [sys.executable, "-m", "mtlsweep.search.sweep", "--base", str(d / "base.yaml"), "--space",
               str(d / "space.yaml"), "--num-samples", "2", "--name", who, "--workspace", str(d / "ws"),
               "--scheduler", "none", "--baseline", "fixed"]
        procs.append(subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for who, p, out in zip(("a", "b"), procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "(0 failed)" in out and "Connecting to existing Ray cluster" not in out, out[-3000:]
        assert "Ray: an embedded cluster of this sweep" in out
        # What a person sees: the live view's final state and the comparison, not the libraries.
        assert len(out.splitlines()) <= 60, out
        for noise in ("(run_trial pid=", "== Status ==", "INFO", "[I 20", "Downloading artifacts", "experimental"):
            assert noise not in out, (noise, out)
        log = tmp_path / who / "ws" / "logs" / f"{who}.log"
        assert f"write to {log}" in out and "Started a local Ray instance" in log.read_text()
