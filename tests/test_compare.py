"""`mtlsweep compare` on a constructed experiment, with numbers checked by hand."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import wilcoxon

from mtlsweep.mlflow_server.compare import compare, render_text

REPO = Path(__file__).resolve().parents[1]
TASKS = ["t0", "t1", "t2", "t3", "t4"]


def csv_head(tmp) -> str:
    return (tmp / "out" / "comparison.csv").read_text().splitlines()[0]


def _run(client, exp, name, family, role, aurocs, fp, extra_tags=None, epoch_s=1.0, status="FINISHED", extra=None,
         params=None):
    tags = {"family": family, "role": role, "converged": "yes", **(extra_tags or {})}
    if role == "baseline":
        tags["baseline_fp"] = fp
    else:
        tags["compare_fp"] = fp
    r = client.create_run(exp, run_name=name, tags=tags)
    rid = r.info.run_id
    for t, a in zip(TASKS, aurocs):
        client.log_metric(rid, f"best/val/auroc/{t}", a)
    client.log_metric(rid, "best/val/auroc_mean", sum(aurocs) / len(aurocs))
    client.log_metric(rid, "best/val/auroc_median", sorted(aurocs)[len(aurocs) // 2])
    client.log_metric(rid, "best/val/auprc_mean", 0.3)
    for step, frac in ((1, 0.9), (2, 1.0)):      # a two-epoch learning curve
        client.log_metric(rid, "val/auroc_mean", frac * sum(aurocs) / len(aurocs), step=step)
        client.log_metric(rid, "cost/epoch_s", epoch_s, step=step)
    client.log_param(rid, "model.n_params", "1000")
    for k, v in (params or {}).items():
        client.log_param(rid, k, v)
    for k, v in (extra or {}).items():
        client.log_metric(rid, k, v)
    client.set_terminated(rid, status)
    return rid


@pytest.fixture
def experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cmp")
    _run(client, exp, "base", "single", "baseline", [0.70, 0.60, 0.80, 0.75, 0.65], "fpA")
    _run(client, exp, "hard1", "hard", "trial", [0.72, 0.58, 0.83, 0.79, 0.66], "fpA", epoch_s=0.5)
    _run(client, exp, "soft1", "soft", "trial", [0.71, 0.65, 0.81, 0.78, 0.70], "fpA", epoch_s=3.0)
    _run(client, exp, "orphan", "branched", "trial", [0.9, 0.9, 0.9, 0.9, 0.9], "fpOTHER")
    return uri, tmp_path


def test_deltas_wilcoxon_and_tasks_improved_by_hand(experiment):
    uri, tmp = experiment
    text, rows = compare(uri, "cmp", out_dir=tmp / "out")
    by = {r.run: r for r in rows}
    hard = by["hard1"]
    d = [0.02, -0.02, 0.03, 0.04, 0.01]
    assert hard.delta_auroc_mean == pytest.approx(sum(d) / 5, abs=1e-9)
    assert hard.tasks_improved == 4 and hard.tasks_total == 5
    assert hard.wilcoxon_p == pytest.approx(wilcoxon(d).pvalue)
    soft = by["soft1"]
    assert soft.delta_auroc_mean == pytest.approx((0.01 + 0.05 + 0.01 + 0.03 + 0.05) / 5, abs=1e-9)
    assert soft.tasks_improved == 5
    assert by["base"].role == "baseline"
    # Seconds to reach the baseline's best mean AUROC (0.70): hard's curve is 0.6336 then 0.704.
    assert hard.s_to_target == pytest.approx(1.0)
    assert soft.s_to_target == pytest.approx(6.0)     # 0.657 then 0.73, 3 s per epoch
    # A run with no matching baseline is shown without deltas, never against the wrong one.
    orphan = by["orphan"]
    assert orphan.baseline == "no matching baseline" and math.isnan(orphan.delta_auroc_mean)
    assert "hard1" in text and "no matching baseline" in (tmp / "out" / "comparison.csv").read_text()
    # The terminal table fits the terminal (COLUMNS, default 100), naming what it left out.
    assert max(len(line) for line in text.splitlines() if line.startswith(("┃", "│"))) <= 100
    narrow = render_text(rows, width=60)
    assert max(len(line) for line in narrow.splitlines() if line.startswith(("┃", "│"))) <= 60
    assert "left out to fit 60 columns" in narrow and "hard1" in narrow
    # AUPRC beside AUROC (bound sites are rare in TF data) when the terminal is wide enough.
    wide = render_text(rows, width=220)
    head = next(line for line in wide.splitlines() if "AUROC" in line)
    assert head.index("AUROC") < head.index("AUPRC") and "0.3000" in wide and "left out" not in wide
    assert "auprc_mean" in csv_head(tmp)
    csv_text = (tmp / "out" / "comparison.csv").read_text()
    assert csv_text.splitlines()[0].startswith("run,family,role,trials,certified,auroc_mean")
    html = (tmp / "out" / "comparison.html").read_text()
    assert "data:image/png;base64," in html and "pareto.png" in html and "hard1" in html
    # the report reads each family's learning curve from MLflow and shows the per-task deltas
    assert 'alt="learning_curves.png"' in html and 'alt="delta_heatmap.png"' in html
    # 5 tasks cannot give p < 0.05, whatever the deltas: said in the terminal and the report
    assert "p ≥ 0.0625 is the least possible with 5 tasks" in text and "p ≥ 0.0625 is the least possible" in html
    # one seed per configuration: the seed-to-seed spread is unknown, and said to be
    assert "no configuration here ran on more than one seed" in text


def test_a_pruned_trial_is_never_best_and_a_family_without_completed_trials_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("prune")
    base = _run(client, exp, "base", "single", "baseline", [0.70, 0.60, 0.80, 0.75, 0.65], "fpA",
                {"baseline_protocol": "tuned: 3 trial(s) over optim.weight_decay"})
    # The best AUROC of all, but pruned by ASHA: it must not be called best.
    _run(client, exp, "hard_pruned", "hard", "trial", [0.95] * 5, "fpA", {"stopped_early": "scheduler"})
    _run(client, exp, "hard_done", "hard", "trial", [0.72, 0.58, 0.83, 0.79, 0.66], "fpA")
    _run(client, exp, "soft_pruned", "soft", "trial", [0.99] * 5, "fpA", {"stopped_early": "scheduler"})
    _run(client, exp, "soft_failed", "soft", "trial", [0.5] * 5, "fpA", status="FAILED")
    # A candidate of the baseline's own search is neither a family's best nor a top run.
    _run(client, exp, "cand", "single", "baseline_candidate", [0.97] * 5, "fpA")
    # Matched by the sweep's baseline_run_id tag even though its compare_fp names no baseline.
    _run(client, exp, "branched_tagged", "branched", "trial", [0.71] * 5, "fpZ", {"baseline_run_id": base})
    text, rows = compare(uri, "prune", out_dir=tmp_path / "out")
    by_role = {r.role: r for r in rows}
    assert by_role["best hard"].run == "hard_done" and by_role["best hard"].trials == "1/2 (1 pruned)"
    assert "best soft" not in by_role and by_role["no completed soft"].run == "(no completed soft)"
    assert by_role["no completed soft"].trials == "0/2 (1 pruned) (1 failed)"
    assert all(r.run not in ("hard_pruned", "soft_pruned", "cand") for r in rows)
    assert by_role["best branched"].baseline == "base"
    assert by_role["best branched"].delta_auroc_mean == pytest.approx(0.71 - 0.70, abs=1e-9)
    assert "no completed soft" in text and "pruned trials are never best" in text
    assert "Baseline: tuned: 3 trial(s) over optim.weight_decay" in text


def test_oracle_gap_closed_and_train_valid_gap_by_hand(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ceiling")
    ceiling = {"oracle/val/auroc_mean": 0.97, "best/gap/auroc": 0.05}
    _run(client, exp, "base", "single", "baseline", [0.70] * 5, "fpA", extra=ceiling)
    _run(client, exp, "soft", "soft", "trial", [0.79] * 5, "fpA", extra={**ceiling, "best/gap/auroc": 0.02})
    text, rows = compare(uri, "ceiling")
    soft = next(r for r in rows if r.role == "best soft")
    assert soft.oracle_auroc == pytest.approx(0.97)
    assert soft.gap_closed == pytest.approx((0.79 - 0.70) / (0.97 - 0.70))
    assert soft.train_val_gap == pytest.approx(0.02)
    assert "oracle (oracle_auroc): the data's ceiling" in text


def test_cli_compare_and_unknown_experiment(experiment):
    uri, tmp = experiment
    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "compare", "--experiment", "cmp", "--tracking-uri", uri,
                        "--out", str(tmp / "cli")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "best hard" in r.stdout and (tmp / "cli" / "comparison.html").is_file()
    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "compare", "--experiment", "nope", "--tracking-uri", uri,
                        "--out", str(tmp / "cli2")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "experiment 'nope' does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_group_by_variant_over_seeds_by_hand(tmp_path):
    """Two seeds, each trial against the baseline of its own seed; sd over seeds, Wilcoxon over
    every (task, seed) pair."""
    import numpy as np
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("grid")
    b0, b1 = [0.70, 0.60, 0.80, 0.75, 0.65], [0.72, 0.62, 0.78, 0.70, 0.66]
    _run(client, exp, "base-s0", "single", "baseline", b0, "fpS0")
    _run(client, exp, "base-s1", "single", "baseline", b1, "fpS1")
    h0, h1 = [0.72, 0.58, 0.83, 0.79, 0.66], [0.74, 0.65, 0.80, 0.69, 0.70]
    _run(client, exp, "s/h0", "hard", "trial", h0, "fpS0", {"variant": "hard"})
    _run(client, exp, "s/h1", "hard", "trial", h1, "fpS1", {"variant": "hard"})
    _run(client, exp, "s/x0", "soft", "trial", b0, "fpS0", {"variant": "soft_l2_1"})   # identical: no test
    from mtlsweep.mlflow_server.compare import collect
    from mtlsweep.mlflow_server.group_compare import BASELINE_GROUP, group_runs
    groups = {g.name: g for g in group_runs(collect(client, "grid"), "variant", "val")}
    assert list(groups) == [BASELINE_GROUP, "hard", "soft_l2_1"]
    d0, d1 = np.subtract(h0, b0), np.subtract(h1, b1)
    hard = groups["hard"]
    assert hard.delta == pytest.approx([d0.mean(), d1.mean()], abs=1e-9)
    assert hard.p_value == pytest.approx(wilcoxon(np.concatenate([d0, d1])).pvalue)
    assert list(hard.improved) == [4, 4] and hard.n_tasks == 5
    row = hard.row()
    assert row["delta_auroc"] == f"{np.mean([d0.mean(), d1.mean()]):+.4f} ± {np.std([d0.mean(), d1.mean()], ddof=1):.4f}"
    assert row["tasks_improved"] == "4.0/5"
    assert math.isnan(groups["soft_l2_1"].p_value) and groups["soft_l2_1"].row()["wilcoxon_p"] == "-"
    assert len(groups[BASELINE_GROUP].runs) == 2 and groups[BASELINE_GROUP].row()["delta_auroc"] == "-"

    # A tuned grid: a second hard run at seed 0 with another weight decay. Kept per seed is the one
    # best on validation, even when the table reports test AUROC.
    _run(client, exp, "s/h0-wd", "hard", "trial", [0.80] * 5, "fpS0", {"variant": "hard"},
         extra={"test/auroc_mean": 0.60, **{f"test/auroc/{t}": 0.60 for t in TASKS}})
    _run(client, exp, "s/h1-pruned", "hard", "trial", [0.99] * 5, "fpS1", {"variant": "hard", "stopped_early": "x"})
    tuned = {g.name: g for g in group_runs(collect(client, "grid"), "variant", "val")}["hard"]
    assert sorted(r.name for r in tuned.runs) == ["s/h0-wd", "s/h1"]
    assert tuned.delta == pytest.approx([0.80 - np.mean(b0), d1.mean()], abs=1e-9)

    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "compare", "--experiment", "grid", "--tracking-uri", uri,
                        "--group-by", "variant", "--out", str(tmp_path / "g")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "hard" in r.stdout and (tmp_path / "g" / "comparison_groups.csv").is_file()
    assert "| hard | hard | 2 |" in (tmp_path / "g" / "comparison_groups.md").read_text()
    r = subprocess.run([sys.executable, "-m", "mtlsweep.app.cli", "compare", "--experiment", "grid", "--tracking-uri", uri,
                        "--group-by", "nosuchtag", "--out", str(tmp_path / "g2")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "no finished runs tagged 'nosuchtag'" in r.stderr


def test_reference_families_face_the_towers_of_their_data_and_certificates_gate_the_ranking(tmp_path):
    """motif_gbm and kmer_linear train no CNN, so no CNN key of theirs names a baseline: they are
    compared with the towers trained on the same data and tasks. A run that is not converged, or
    whose tuned value sits at the edge of its range, is shown but never best."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("refs")
    data = {"data.fingerprint": "d" * 16, "data.task_names": str(TASKS).replace("'", '"'), "train.seed": "0"}
    _run(client, exp, "towers", "single", "baseline", [0.70, 0.60, 0.80, 0.75, 0.65], "fpA", params=data)
    _run(client, exp, "other-data", "single", "baseline", [0.5] * 5, "fpB", params={**data, "data.fingerprint": "e" * 16})
    _run(client, exp, "gbm", "motif_gbm", "train", [0.90, 0.85, 0.95, 0.91, 0.88], "fpGBM", params=data)
    _run(client, exp, "kmer", "kmer_linear", "train", [0.75, 0.70, 0.82, 0.80, 0.70], "fpK", params=data,
         extra_tags={"inner_tuning": '{"kmer.C": {"values": [0.01, 0.1, 1.0], "chosen": [0.1, 0.1, 1.0, 0.1, 0.1]}}'})
    _run(client, exp, "hard-capped", "hard", "trial", [0.95] * 5, "fpA",
         extra_tags={"converged": "no", "convergence": "not converged: best epoch 20 of 20"})
    _run(client, exp, "hard-edge", "hard", "trial", [0.80] * 5, "fpA", params={"optim.lr": "0.0125"},
         extra_tags={"search_ranges": '{"optim.lr": {"values": [0.002, 0.005, 0.0125]}}'})
    _run(client, exp, "hard-ok", "hard", "trial", [0.72] * 5, "fpA", params={"optim.lr": "0.005"},
         extra_tags={"search_ranges": '{"optim.lr": {"values": [0.002, 0.005, 0.0125]}}'})
    text, rows = compare(uri, "refs", out_dir=tmp_path / "out")
    by = {r.role: r for r in rows}
    gbm, kmer = by["best motif_gbm"], by["best kmer_linear"]
    assert gbm.baseline == "towers" and kmer.baseline == "towers"
    assert gbm.delta_auroc_mean == pytest.approx(0.198, abs=1e-9) and gbm.tasks_improved == 5
    assert gbm.certified == "yes" and kmer.certified == "no"
    assert "kmer.C=1.0 at the high edge of {0.01, 0.1, 1} for 1/5 tasks: widen" in kmer.certificate
    # the best hard is the certified one, not the higher-scoring runs whose certificates failed
    assert by["best hard"].run == "hard-ok" and by["best hard"].certified == "yes"
    assert all(r.run not in ("hard-capped", "hard-edge") for r in rows if r.role == "top")
    assert "not certified, best kmer_linear kmer: kmer.C=1.0" in text
    assert by["best hard"].n_params == 1000


def test_a_tuned_value_is_read_from_the_last_value_the_run_trained_with():
    import json

    from mtlsweep.mlflow_server.compare import RunRow
    ranges = {"optim.lr": {"low": 1e-4, "high": 1e-1, "log": True}}

    def row(metrics):
        return RunRow("r", "r", "hard", "trial", "FINISHED", metrics, {"optim.lr": "0.003"},
                      {"search_ranges": json.dumps(ranges), "converged": "yes"})
    assert row({}).tuning_edges() == []                          # the param: interior
    # A population's schedule moved it as it trained: its last logged optim/lr sits at the edge.
    edges = row({"optim/lr": 0.1}).tuning_edges()
    assert [(e.key, e.side) for e in edges] == [("optim.lr", "high")]
    assert not row({"optim/lr": 0.1}).certificate()[0]
    assert row({"optim/lr": 0.003}).tuning_edges() == []
