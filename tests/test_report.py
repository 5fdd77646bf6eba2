"""comparison.html at scale: a clustered tasks x configurations heatmap, scatters on shared axes,
the spread over seeds, an honest p-value with few tasks, a table that scrolls; and `compare`
importing neither torch nor matplotlib. Runs are built in memory (no MLflow, no Ray)."""
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from mtlsweep.mlflow_server.compare import (
    RunRow,
    caption,
    least_p,
    p_floor_note,
    render_text,
    table_rows,
    write_report,
)
from mtlsweep.mlflow_server.report_html import (
    NAMED_TASKS_MAX,
    delta_heatmap,
    learning_curves,
    pareto,
    task_scatters,
    write_html,
)
from mtlsweep.plots import MAX_HEIGHT_IN, MIN_LABEL_PT, cluster_order


def run(name, family, role, auroc, baseline=None, seed=0, params=None, auprc=None) -> RunRow:
    """A finished, converged run with per-task AUROC ``auroc`` (task key -> value)."""
    vals = np.array(list(auroc.values()))
    return RunRow(name, name, family, role, "FINISHED",
                  {"best/val/auroc_mean": float(vals.mean()), "cost/epoch_s": 1.0 + len(name) % 3},
                  {"train.seed": str(seed), **(params or {})}, {"converged": "yes"}, per_task=dict(auroc),
                  baseline=baseline, per_task_auprc=dict(auprc or {}))


def tasks(n):
    return [f"task{i:03d}" for i in range(n)]


HARD, SOFT = {"model.sharing.shared_layers": "5"}, {"model.sharing.shared_layers": "0"}


def experiment(n_tasks=164, seeds=3, rng=None):
    """Baselines and hard runs on ``seeds`` seeds, one soft run (seed 0): hard helps the first half
    of the tasks and hurts the second half; soft the reverse."""
    rng = rng or np.random.default_rng(0)
    keys = tasks(n_tasks)
    runs = []
    base_level = rng.uniform(0.7, 0.9, n_tasks)
    half = np.arange(n_tasks) < n_tasks // 2
    for s in range(seeds):
        b_vals = base_level + rng.normal(0, 0.003, n_tasks)
        b = run(f"base-s{s}", "single", "baseline", dict(zip(keys, b_vals)), seed=s,
                auprc=dict(zip(keys, b_vals - 0.5)))
        h_vals = b_vals + np.where(half, 0.02, -0.02) + rng.normal(0, 0.003, n_tasks)
        runs += [b, run(f"hard-s{s}", "hard", "trial", dict(zip(keys, h_vals)), b, s, HARD,
                        auprc=dict(zip(keys, h_vals - 0.48)))]
        if s == 0:
            soft = b_vals + np.where(half, -0.01, 0.015) + rng.normal(0, 0.003, n_tasks)
            runs.append(run("soft-s0", "soft", "trial", dict(zip(keys, soft)), b, s, SOFT))
    return runs


def by_role(rows):
    return {r.role: r for r in rows}


def test_the_heatmap_at_164_tasks_names_its_axes_and_is_in_the_report(tmp_path):
    runs = experiment(164)
    rows = table_rows(runs)
    fig, order = delta_heatmap(rows)
    auroc_ax, auprc_ax = [a for a in fig.axes if a.images]
    assert auroc_ax.get_ylabel() == "task" and auroc_ax.get_xlabel() == "configuration"
    assert auroc_ax.images[0].get_array().shape == (164, 2)            # tasks x (best hard, best soft)
    lo, hi = auroc_ax.images[0].get_clim()
    assert lo == -hi and hi > 0                                          # centred at 0
    bars = [a.get_ylabel() for a in fig.axes if not a.images]
    assert any(b.startswith("ΔAUROC") for b in bars) and any(b.startswith("ΔAUPRC") for b in bars)
    assert fig.get_figheight() <= MAX_HEIGHT_IN
    labels = auroc_ax.get_yticklabels()
    assert 0 < len(labels) <= 164 and all(t.get_fontsize() >= MIN_LABEL_PT for t in labels)
    assert sorted(order) == tasks(164)
    csv_path, html_path = write_report(rows, runs, tmp_path, "164 tasks")
    page = html_path.read_text()
    assert 'alt="delta_heatmap.png"' in page and "clustered" in page and "per-task ΔAUROC" in page
    assert "delta_seed_sd" in csv_path.read_text().splitlines()[0]


def test_tasks_are_clustered_into_their_planted_blocks():
    rng = np.random.default_rng(1)
    n = 40
    block = np.arange(n) % 2 == 0                       # interleaved: 0, 2, 4, ... against 1, 3, 5, ...
    mat = np.where(block[:, None], [0.05, -0.03, 0.02], [-0.04, 0.03, 0.0]) + rng.normal(0, 0.004, (n, 3))
    order = cluster_order(mat)
    pos = np.flatnonzero(block[order])
    assert sorted(order) == list(range(n)) and pos.max() - pos.min() == len(pos) - 1     # one contiguous run

    # through the report: hard's gain on the first half, loss on the second
    rows = table_rows(experiment(30, seeds=1))
    _, ordered = delta_heatmap(rows)
    first = np.array([int(k[4:]) < 15 for k in ordered])
    pos = np.flatnonzero(first)
    assert pos.max() - pos.min() == len(pos) - 1


def test_the_per_family_scatters_share_their_axes_and_name_tasks_only_when_few():
    keys = tasks(10)
    low = {k: 0.55 + 0.005 * i for i, k in enumerate(keys)}
    base = run("base", "single", "baseline", {k: v + 0.2 for k, v in low.items()})
    runs = [base, run("hard", "hard", "trial", low, base, params={"a": "1"}),
            run("soft", "soft", "trial", {k: 0.95 for k in keys}, base, params={"a": "2"}),
            run("branched", "branched", "trial", {k: 0.8 for k in keys}, base, params={"a": "3"})]
    fig = task_scatters(table_rows(runs))
    shown = [a for a in fig.axes if a.get_visible()]
    assert len(shown) == 3
    assert len({a.get_xlim() for a in shown}) == 1 and len({a.get_ylim() for a in shown}) == 1
    lo, hi = shown[0].get_xlim()
    assert lo <= 0.55 and hi >= 0.95                     # one range holds every family's points
    assert all(a.texts for a in shown)                   # few tasks: the extremes are named
    many = task_scatters(table_rows(experiment(NAMED_TASKS_MAX + 1, seeds=1)))
    assert not any(a.texts for a in many.axes)           # many: the heatmap tells the tasks apart


def test_a_p_value_that_too_few_tasks_cannot_lower_says_so(tmp_path):
    assert least_p(2) == 0.5 and least_p(6) < 0.05 and p_floor_note(6) == ""
    rows2 = table_rows(experiment(2, seeds=1))
    note = "p ≥ 0.5 is the least possible with 2 tasks"
    assert note in caption(rows2) and note in render_text(rows2, width=200)
    _, page = write_report(rows2, [], tmp_path / "two", "two tasks")
    assert note in page.read_text()
    rows20 = table_rows(experiment(20, seeds=1))
    assert "least possible" not in caption(rows20)
    _, page = write_report(rows20, [], tmp_path / "twenty", "twenty tasks")
    assert "least possible" not in page.read_text()


def test_the_table_scrolls_pins_its_first_column_and_names_every_header(tmp_path):
    rows = table_rows(experiment(5, seeds=1))
    page = write_html(rows, [], tmp_path / "t.html", "t").read_text()
    assert ".scroll{overflow-x:auto" in page and '<div class="scroll table"><table>' in page
    assert "th:first-child,td:first-child{position:sticky;left:0" in page
    assert 'title="wilcoxon_p: Wilcoxon signed-rank p over tasks' in page and ">p</th>" in page


def test_the_spread_over_seeds_shows_where_a_configuration_was_repeated(tmp_path):
    runs = experiment(12, seeds=3)
    # Another hard configuration (another lr): not a repeat of the seeds above.
    b0 = runs[0]
    runs.append(run("hard-lr", "hard", "trial", {k: v - 0.05 for k, v in b0.per_task.items()}, b0,
                    params={**HARD, "optim.lr": "0.1"}))
    rows = table_rows(runs)
    hard, soft = by_role(rows)["best hard"], by_role(rows)["best soft"]
    hards = [r for r in runs if r.name.startswith("hard-s")]
    per_seed = [np.mean([h.per_task[k] - h.baseline.per_task[k] for k in h.per_task]) for h in hards]
    assert hard.seeds == 3 and {r.name for r in hard.repeats} == {h.name for h in hards}
    assert hard.delta_seed_mean == pytest.approx(np.mean(per_seed))
    assert hard.delta_seed_sd == pytest.approx(np.std(per_seed, ddof=1))
    assert hard.delta_seed_min == pytest.approx(min(per_seed)) and hard.delta_seed_max == pytest.approx(max(per_seed))
    assert soft.seeds == "" and math.isnan(soft.delta_seed_mean) and soft.delta_seeds == "-"
    assert all(r.run not in ("hard-s0", "hard-s1", "hard-s2") or r is hard for r in rows)   # counted, not listed
    assert by_role(rows)["top"].run == "hard-lr"
    text = render_text(rows, width=220)
    assert "Δ seeds" in text and f"{hard.delta_seed_mean:+.3f} ± {hard.delta_seed_sd:.3f} (3)" in text
    assert "within seed noise" in caption(rows)           # hard helps half the tasks, hurts the other half
    csv_path, html_path = write_report(rows, runs, tmp_path, "seeds")
    page = html_path.read_text()
    assert f"{hard.delta_seed_mean:+.4f} ± {hard.delta_seed_sd:.4f} (3: " in page and 'alt="seeds.png"' in page
    # on the plots: the mean ± sd over seeds beside the runs, bars per task on the repeated one's scatter
    legend = [t.get_text() for t in pareto(rows, runs).axes[0].get_legend().get_texts()]
    assert "mean ± sd over seeds" in legend
    panels = {a.get_title().split("\n")[0]: a for a in task_scatters(rows).axes if a.get_visible()}
    assert "3 seeds" in panels[f"best hard: {hard.run}"].get_title()
    assert len(panels[f"best hard: {hard.run}"].collections) > len(panels["best soft: soft-s0"].collections)
    head = set(csv_path.read_text().splitlines()[0].split(","))
    assert {"seeds", "auroc_seed_sd", "delta_seed_mean", "delta_seed_sd", "delta_seed_min", "delta_seed_max"} <= head


def test_no_repeats_says_the_seed_noise_is_unknown():
    assert "no configuration here ran on more than one seed" in caption(table_rows(experiment(8, seeds=1)))


def test_learning_curves_of_each_familys_best_with_the_band_of_its_seeds():
    runs = experiment(6, seeds=3)

    class Client:      # MlflowClient.get_metric_history, enough for table_rows
        def get_metric_history(self, run_id, key):
            level = next(r.m("best/val/auroc_mean") for r in runs if r.run_id == run_id)
            return [SimpleNamespace(step=e, value=level * min(1.0, 0.7 + 0.1 * e) if key == "val/auroc_mean" else 2.0)
                    for e in range(1, 6)]
    rows = table_rows(runs, client=Client())
    hard = by_role(rows)["best hard"]
    assert set(hard.curves) == {r.run_id for r in hard.repeats}
    assert by_role(rows)["baseline"].s_to_target == pytest.approx(6.0)     # its own best at epoch 3, 2 s each
    fig = learning_curves(rows)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and "AUROC" in ax.get_ylabel()
    names = [line.get_label() for line in ax.get_lines()]
    assert any(n.startswith("hard") for n in names) and any(n.startswith("soft") for n in names)
    assert sum(n.startswith("single-task baseline") for n in names) == 1      # one line for the baselines
    assert ax.collections                                              # the bands over seeds


def test_compare_imports_neither_torch_nor_matplotlib():
    code = ("import sys, mtlsweep.mlflow_server.compare, mtlsweep.mlflow_server.group_compare; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'mtlsweep.analysis.cost_scaling') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
