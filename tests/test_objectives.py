"""Multi-objective sweeps: the Pareto front, the objectives' names, the per-task constraint, and a
real sweep on Ray and MLflow whose front compare and export-best read from its parent run."""
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mtlsweep.analysis.pareto import OBJECTIVES, ObjectiveSet, dominates, pareto_front, parse_objectives
from mtlsweep.config.errors import ConfigError
from mtlsweep.training.metrics import delta_metrics, task_metrics

REPO = Path(__file__).resolve().parents[1]
TASKS = ["t0", "t1", "t2", "t3", "t4"]
BASE = [0.70, 0.60, 0.80, 0.75, 0.65]


# ---- the front ----------------------------------------------------------------------------------
def test_front_of_known_points_both_maximized():
    pts = [(0.9, 0.1), (0.5, 0.5), (0.1, 0.9), (0.4, 0.4), (0.5, 0.45), (0.2, 0.2)]
    assert pareto_front(pts, ["max", "max"]) == [0, 1, 2]


def test_front_with_mixed_directions():
    # (AUROC up, seconds down): the fast weak run and the slow strong run both stay; the slow weak one goes.
    pts = [(0.80, 1.0), (0.85, 3.0), (0.79, 4.0), (0.85, 2.0), (0.70, 0.5)]
    assert pareto_front(pts, ["max", "min"]) == [0, 3, 4]
    assert pareto_front(pts, ["min", "max"]) == [2, 4]          # the mirror question, its own front
    assert dominates((0.85, 2.0), (0.85, 3.0), ["max", "min"])
    assert not dominates((0.85, 2.0), (0.85, 2.0), ["max", "min"])


def test_ties_are_all_on_the_front_and_dominate_nothing_of_each_other():
    pts = [(0.8, 0.6), (0.8, 0.6), (0.7, 0.6), (0.8, 0.5)]
    assert pareto_front(pts, ["max", "max"]) == [0, 1]
    # Equal in one objective, better in the other: dominated.
    assert pareto_front([(1.0, 2.0), (1.0, 3.0)], ["max", "min"]) == [0]


def test_nan_rows_are_never_on_the_front_and_dominate_nothing():
    pts = [(0.9, math.nan), (0.5, 0.5), (math.inf, 0.1), (0.4, 0.6)]
    assert pareto_front(pts, ["max", "max"]) == [1, 3]
    assert pareto_front([(math.nan, 1.0)], ["max", "max"]) == []
    assert pareto_front([], ["max", "min"]) == []


def test_one_objective_front_is_the_best_and_three_objectives_keep_every_tradeoff():
    assert pareto_front([(0.7,), (0.9,), (0.9,), (0.8,)], ["max"]) == [1, 2]
    rng = np.random.default_rng(0)
    pts = rng.random((60, 3))
    modes = ["max", "max", "min"]
    front = set(pareto_front(pts, modes))
    for i in range(len(pts)):     # brute force: on the front <=> nobody dominates it
        beaten = any(dominates(pts[j], pts[i], modes) for j in range(len(pts)) if j != i)
        assert (i in front) == (not beaten)


# ---- names, worst, constraint -------------------------------------------------------------------
def test_objectives_parse_with_their_metrics_directions_and_the_stated_worst():
    objs = parse_objectives("auroc_mean, auroc_worst,epoch_s", "p10")
    assert [(o.metric, o.mode) for o in objs.objectives] == [
        ("val/auroc_mean", "max"), ("val/auroc_p10", "max"), ("cost/epoch_s", "min")]
    assert objs.objectives[1].run_metric == "best/val/auroc_p10" and objs.objectives[2].run_metric == "cost/epoch_s"
    assert "10th percentile over tasks" in objs.describe()
    assert parse_objectives("multi").names == ["auroc_mean", "epoch_s"]          # --objective multi, kept
    assert parse_objectives("val/delta_auroc_mean").names == ["delta_auroc_mean"]
    worst = parse_objectives("delta_auroc_worst,epoch_s", "min", 0.02)
    assert worst.objectives[0].metric == "val/delta_auroc_min"
    plain = worst.without_baseline()        # a tuned baseline's own search: no delta, no constraint
    assert plain.names == ["auroc_worst", "epoch_s"] and plain.constraint_delta is None
    params = worst.params()
    assert params == {"sweep.objectives": "delta_auroc_worst,epoch_s", "sweep.worst": "min",
                      "sweep.constraint_delta": "0.02"}
    assert ObjectiveSet.from_params(params) == worst
    assert ObjectiveSet.from_params({"sweep.objective": "multi"}).names == ["auroc_mean", "epoch_s"]


@pytest.mark.parametrize("kw, says", [
    ({"objectives": "auroc_mean,bogus"}, "unknown objective 'bogus'"),
    ({"objectives": "auroc_mean,,epoch_s"}, "unknown objective ''"),
    ({"objectives": "auroc_mean,auroc_mean"}, "named twice"),
    ({"objectives": "auroc_mean,auroc_worst", "worst": "p7"}, "--worst 'p7': use min, p5, p10, p25"),
    ({"objectives": "auroc_mean,epoch_s", "constraint_delta": -0.1}, "--constraint-delta -0.1"),
    ({"objectives": "auroc_mean,epoch_s", "objective": "val/auprc_mean"}, "give one"),
    ({"constraint_delta": 0.01, "scheduler": "pbt"}, "--constraint-delta with --scheduler pbt"),
])
def test_bad_objectives_are_one_line_before_any_cluster_work(tmp_path, kw, says):
    from mtlsweep.search.driver import SweepArgs, _validate
    # The files do not exist: the objectives are checked first.
    args = SweepArgs(base=str(tmp_path / "missing.yaml"), space=str(tmp_path / "missing_space.yaml"), **kw)
    with pytest.raises(ConfigError) as err:
        _validate(args)
    msg = str(err.value)
    assert says in msg and "\n" not in msg
    if "unknown" in says:
        assert all(name in msg for name in OBJECTIVES)


def test_the_cli_refuses_a_bad_objective_in_one_line_and_its_help_names_every_choice():
    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "sweep", "--base", "none.yaml", "--space",
                        "none.yaml", "--objectives", "auroc_mean,aurocworst"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unknown objective 'aurocworst'" in r.stderr and "auroc_worst" in r.stderr
    from mtlsweep.app.cli import build_parser
    from mtlsweep.training.metrics import WORST_STATS
    text = build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()
    assert all(name in text for name in OBJECTIVES) and all(w in text for w in WORST_STATS)


def test_training_reports_the_worst_tasks_and_the_shortfall():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(400, 5)).astype(np.int8)
    probs = np.clip(labels * np.array([0.1, 0.2, 0.3, 0.4, 0.5]) + rng.random((400, 5)) * 0.6, 0, 1)
    m = task_metrics(probs, labels)
    s = m.summary("val/")
    assert s["val/auroc_min"] == pytest.approx(m.auroc.min())
    assert s["val/auroc_p10"] == pytest.approx(np.percentile(m.auroc, 10))
    assert s["val/auroc_min"] <= s["val/auroc_p5"] <= s["val/auroc_p10"] <= s["val/auroc_p25"] <= s["val/auroc_median"]
    base = m.auroc + np.array([0.05, -0.01, 0.0, -0.02, np.nan])       # task 0 lost 0.05 against its baseline
    d = delta_metrics(m.auroc, base, TASKS)
    assert d["val/worst_shortfall"] == pytest.approx(0.05) and d["val/delta_auroc_min"] == pytest.approx(-0.05)
    assert d["val/delta_auroc_p10"] == pytest.approx(np.percentile([-0.05, 0.01, 0.0, 0.02], 10))
    from mtlsweep.search.trial import TUNE_KEYS
    for key in ("val/auroc_min", "val/auroc_p5", "val/auroc_p10", "val/auroc_p25", "val/delta_auroc_p10",
                "val/worst_shortfall"):
        assert key in TUNE_KEYS          # what the searcher can be given


def test_the_constraint_reaches_optuna_and_an_infeasible_trial_is_off_its_front():
    from mtlsweep.search.objectives import CONSTRAINT, make_searcher

    def space(trial):
        trial.suggest_float("optim.lr", 1e-3, 1e-1, log=True)
    objs = parse_objectives("auroc_mean,epoch_s", "p10", 0.01)
    searcher = make_searcher(space, objs, seed=0, num_samples=4)
    results = {"a": {"val/auroc_mean": 0.90, "cost/epoch_s": 1.0, "val/worst_shortfall": 0.03},    # best, infeasible
               "b": {"val/auroc_mean": 0.80, "cost/epoch_s": 2.0, "val/worst_shortfall": 0.01},    # exactly δ: feasible
               "c": {"val/auroc_mean": 0.70, "cost/epoch_s": 3.0, "val/worst_shortfall": -0.02},   # dominated by b
               # Best in both, but no shortfall measured (missing, NaN): infeasible, as the front says.
               "d": {"val/auroc_mean": 0.99, "cost/epoch_s": 0.5},
               "e": {"val/auroc_mean": 0.99, "cost/epoch_s": 0.5, "val/worst_shortfall": math.nan}}
    for trial_id, result in results.items():
        assert searcher.suggest(trial_id) is not None
        searcher.on_trial_complete(trial_id, result)
    study = searcher._ot_study
    assert study.directions[0].name == "MAXIMIZE" and study.directions[1].name == "MINIMIZE"
    assert [t.constraints[CONSTRAINT] for t in study.trials] == pytest.approx([0.02, 0.0, -0.03, math.inf, math.inf])
    assert [t.number for t in study.best_trials] == [1]
    assert [objs.feasible(r.get("val/worst_shortfall")) for r in results.values()] == [False, True, True, False, False]
    assert isinstance(study.sampler, __import__("optuna").samplers.TPESampler)


def test_feasibility_is_one_test_with_the_fronts_tolerance():
    objs = parse_objectives("auroc_mean,epoch_s", "p10", 0.01)
    assert objs.feasible(0.01) and objs.feasible(0.01 + 1e-13) and not objs.feasible(0.0101)
    assert not objs.feasible(None) and not objs.feasible(math.nan) and not objs.feasible(math.inf)
    assert parse_objectives("auroc_mean,epoch_s").feasible(math.nan)          # no constraint: every run


def test_an_untracked_sweep_marks_its_front_from_tunes_results(tmp_path):
    from mtlsweep.search.summary import summarize_results

    def res(tid, auroc, worst, s, short, error=None):
        return SimpleNamespace(metrics={"trial_id": tid, "epoch": 2, "val/auroc_mean": auroc, "val/auroc_min": worst,
                                        "cost/epoch_s": s, "val/worst_shortfall": short}, config={}, error=error)
    objs = parse_objectives("auroc_mean,auroc_worst,epoch_s", "min", 0.05)
    rows = summarize_results([res("a", 0.9, 0.8, 2.0, 0.0), res("b", 0.8, 0.7, 3.0, 0.0),
                              res("c", 0.95, 0.9, 1.0, 0.2), res("d", 0.7, 0.6, 0.5, 0.0),
                              res("e", 0.99, 0.99, 0.1, 0.0, error=RuntimeError())],
                             objs, tmp_path, log=lambda *_: None)
    front = {x["trial"]: x["front"] for x in rows}
    assert front == {"a": "yes", "b": "", "c": "infeasible", "d": "yes", "e": ""}
    assert "front" in (tmp_path / "trials.csv").read_text().splitlines()[0]


# ---- compare's front, on runs made in MLflow ----------------------------------------------------
def _run(client, exp, name, aurocs, parent, epoch_s=1.0, converged="yes", role="trial", family="hard"):
    tags = {"family": family, "role": role, "converged": converged, "mlflow.parentRunId": parent, "sweep": "mo"}
    tags.update({"baseline_fp": "fpA"} if role == "baseline" else {"compare_fp": "fpA"})
    rid = client.create_run(exp, run_name=name, tags=tags).info.run_id
    for t, a in zip(TASKS, aurocs):
        client.log_metric(rid, f"best/val/auroc/{t}", a)
    client.log_metric(rid, "best/val/auroc_mean", float(np.mean(aurocs)))
    client.log_metric(rid, "best/val/auroc_min", float(np.min(aurocs)))
    client.log_metric(rid, "cost/epoch_s", epoch_s)
    client.set_terminated(rid, "FINISHED")
    return rid


@pytest.fixture
def constrained(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("front")
    parent = client.create_run(exp, run_name="mo", tags={"role": "sweep", "sweep": "mo"}).info.run_id
    for k, v in parse_objectives("auroc_mean,auroc_worst", "min", 0.01).params().items():
        client.log_param(parent, k, v)
    client.set_terminated(parent, "FINISHED")
    _run(client, exp, "base", BASE, parent, role="baseline", family="single")
    up = [a + 0.02 for a in BASE]
    _run(client, exp, "steady", up, parent)                                    # every task +0.02
    # Better mean and worst task than `steady`, but task t0 falls 0.05 below its baseline.
    _run(client, exp, "lopsided", [0.65, 0.70, 0.90, 0.85, 0.80], parent, family="soft")
    _run(client, exp, "weaker", [a + 0.01 for a in BASE], parent)              # dominated by steady
    # Not dominated by any feasible run, but not converged: beside the front, never on it.
    _run(client, exp, "unfinished", [a + 0.03 for a in BASE], parent, converged="no")
    return uri, parent, tmp_path


def test_the_constraint_marks_an_infeasible_run_off_the_front(constrained):
    from mtlsweep.mlflow_server.compare import compare, sweep_front
    uri, parent, tmp = constrained
    front = sweep_front(uri, "front", parent)
    assert front.objectives.names == ["auroc_mean", "auroc_worst"] and front.objectives.constraint_delta == 0.01
    assert [p.row.name for p in front.front] == ["steady"]
    assert [p.row.name for p in front.infeasible] == ["lopsided"]
    assert front.infeasible[0].shortfall == pytest.approx(0.05)
    assert [p.row.name for p in front.uncertified] == ["unfinished"]
    text, rows = compare(uri, "front", sweep="mo", out_dir=tmp / "out")     # by the sweep's name
    by = {r.run: r for r in rows}
    assert by["steady"].front == "yes" and by["lopsided"].front == "infeasible"
    assert "Pareto front over auroc_mean (max), auroc_worst (max)" in text
    assert "Infeasible (a task more than 0.01 below its baseline): lopsided (shortfall 0.0500)" in text
    assert "not certified, unfinished" in text
    html = (tmp / "out" / "comparison.html").read_text()
    assert 'alt="front.png"' in html and "Pareto front over" in html
    assert (tmp / "out" / "front.csv").read_text().count("\n") == 5      # header and every completed trial
    # A looser δ (compare --constraint-delta) lets the lopsided run on: it dominates the steady one.
    loose = sweep_front(uri, "front", parent, constraint_delta=0.1)
    assert [p.row.name for p in loose.front] == ["lopsided"] and not loose.infeasible
    # Other objectives than the sweep's (compare --objectives), still under its constraint.
    other = sweep_front(uri, "front", parent, objectives="auroc_mean,epoch_s")
    assert other.objectives.constraint_delta == 0.01 and "lopsided" not in [p.row.name for p in other.front]


# ---- a real sweep -------------------------------------------------------------------------------
SPACE = {"model.sharing.shared_layers": {"type": "categorical", "values": [0, 5]},
         "optim.lr": {"type": "loguniform", "low": 3e-3, "high": 3e-2}}


def test_a_multi_objective_sweep_returns_a_non_dominated_front_that_export_best_writes(
        ray_cluster, mlflow_server, tmp_path, signal_store_path):
    from conftest import write_sweep_files

    from mtlsweep.mlflow_server.compare import compare, sweep_front
    from mtlsweep.search.driver import SweepArgs, run_sweep
    write_sweep_files(tmp_path, signal_store_path, SPACE, "objectives-test", epochs=2, steps=6)
    uri = mlflow_server.url
    args = SweepArgs(base=str(tmp_path / "base.yaml"), space=str(tmp_path / "space.yaml"), name="mo-sweep",
                     workspace=str(tmp_path / "ws"), tracking_uri=uri, max_concurrent=2, cpus_per_trial=1,
                     num_samples=4, scheduler="none", baseline="fixed", verbose=0,
                     objectives="auroc_mean,auroc_worst,epoch_s", worst="min", constraint_delta=0.5)
    result = run_sweep(args, log=lambda *_: None)
    assert result.n_trials == 4 and result.n_errors == 0
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["sweep.objectives"] == "auroc_mean,auroc_worst,epoch_s"
    assert parent.data.params["sweep.worst"] == "min" and parent.data.params["sweep.constraint_delta"] == "0.5"
    assert "summary/front_size" in parent.data.metrics
    # Optuna searched the three objectives at once (the searcher's state, as Tune saved it).
    import pickle
    state = pickle.loads(next((tmp_path / "ws" / "ray_results" / "mo-sweep").glob("searcher-state-*.pkl")).read_bytes())
    assert state["_metric"] == ["val/auroc_mean", "val/auroc_min", "cost/epoch_s"]
    assert [d.name for d in state["_ot_study"].directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    told = [t for t in state["_ot_study"].trials if t.state.name == "COMPLETE"]
    assert told and all(set(t.constraints) == {"worst_shortfall"} for t in told)      # δ reached Optuna
    exp = client.get_experiment_by_name("objectives-test")
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}' "
                              "and tags.role = 'trial'")
    assert len(kids) == 4
    # The objectives, straight from each trial's MLflow metrics.
    keys = ("best/val/auroc_mean", "best/val/auroc_min", "cost/epoch_s")
    points = {k.info.run_id: tuple(k.data.metrics[key] for key in keys) for k in kids}
    assert all("best/val/worst_shortfall" in k.data.metrics for k in kids)
    modes = ["max", "max", "min"]

    # δ = 0.5 holds for every trial here: none loses 0.5 AUROC on a task against the baseline.
    assert all(p.feasible for p in sweep_front(uri, "objectives-test", result.parent_run_id).points)
    # No 2-epoch trial is certified (converged), so the front proper is empty; the runs no other
    # dominates are listed beside it, and export-best --front --uncertified writes them.
    front = sweep_front(uri, "objectives-test", result.parent_run_id)
    assert front.objectives.names == ["auroc_mean", "auroc_worst", "epoch_s"] and not front.front
    beside = {p.row.run_id for p in front.uncertified}
    assert beside and {p.row.run_id for p in front.points} == set(points)
    for rid, v in points.items():     # non-dominated <=> no completed trial beats it everywhere
        beaten = any(all((a >= b) if m == "max" else (a <= b) for a, b, m in zip(w, v, modes)) and w != v
                     for other, w in points.items() if other != rid)
        assert (rid in beside) == (not beaten), (rid, v, points)
    text, _ = compare(uri, "objectives-test", sweep="mo-sweep")
    assert "Pareto front over auroc_mean (max), auroc_worst (max), epoch_s (min)" in text
    assert "No run is on the front" in text

    cli = [sys.executable, "-m", "mtlsweep.app.cli", "export-best", "--experiment", "objectives-test",
           "--sweep", "mo-sweep", "--tracking-uri", uri, "--front"]
    refused = subprocess.run([*cli, "--out", str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "pass --uncertified" in refused.stderr, refused.stderr
    out = tmp_path / "front"
    r = subprocess.run([*cli, "--uncertified", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    written = sorted(out.glob("*.yaml"))
    assert len(written) == len(beside)
    exported = set()
    for path in written:
        head = path.read_text().splitlines()[0]
        exported.add(head.split("MLflow run id ")[1].split(")")[0])
        assert "on the Pareto front" in head and yaml.safe_load(path.read_text())["train"]["epochs"] == 2
    assert exported == beside
    readme = (out / "README.md").read_text()
    assert "auroc_worst (max)" in readme and readme.count("`mtlsweep train --config") == len(beside)
    assert "is not certified: not converged" in readme


# ---- export-best on runs made in MLflow -----------------------------------------------------------
def _exported_trial(tmp_path, scheduler: str):
    """A sweep (its parent run records ``scheduler``) with one completed trial whose config says 5
    epochs and which ran 3 (its val/auroc_mean curve), as a population's or ASHA's trial ends."""
    from conftest import TINY_ARCH

    from mtlsweep.config.run import validate
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="pop", tags={"role": "sweep", "sweep": "pop"}).info.run_id
    client.log_param(parent, "sweep.scheduler", scheduler)
    client.set_terminated(parent, "FINISHED")
    rid = client.create_run(exp, run_name="t0", tags={"role": "trial", "family": "hard", "sweep": "pop",
                                                      "mlflow.parentRunId": parent}).info.run_id
    cfg = validate({"data": {"path": str(tmp_path / "store")}, "model": {"arch": TINY_ARCH},
                    "train": {"epochs": 5}, "tracking": {"enabled": True, "experiment": "exp"}})
    client.log_text(rid, cfg.to_yaml(), "config.yaml")
    for step in (1, 2, 3):
        client.log_metric(rid, "val/auroc_mean", 0.6 + 0.01 * step, step=step)
    client.log_metric(rid, "best/val/auroc_mean", 0.63)
    client.set_terminated(rid, "FINISHED")
    return uri


@pytest.mark.parametrize("scheduler", ["asha", "pbt"])
def test_export_best_writes_the_epochs_a_trial_ran_and_warns_of_a_population(tmp_path, scheduler):
    from mtlsweep.search.export import export_best
    uri = _exported_trial(tmp_path, scheduler)
    said = []
    [path] = export_best(uri, "exp", tmp_path / "out", sweep="pop", top=1, log=said.append)
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3         # its curve, not train.epochs
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "| 3 | `mtlsweep train" in readme
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    if scheduler == "pbt":
        assert len(said) == 1 and "LAST schedule" in said[0] and "does not reproduce" in said[0]
        assert any("does not reproduce" in line for line in header) and readme.count("does not reproduce") == 1
    else:
        assert not said and len(header) == 1 and "does not reproduce" not in readme


def test_export_best_refuses_uncertified_without_front(tmp_path):
    from mtlsweep.search.export import export_best
    with pytest.raises(ConfigError, match="--uncertified: only with --front") as err:
        export_best("sqlite:///unused.db", "exp", tmp_path / "out", uncertified=True)
    assert "\n" not in str(err.value)
