"""The ground-truth study: does sharing help where tasks are related by construction, and only there?

    python -m analysis.ground_truth                        # this machine, embedded Ray (24 min on 2 cores)
    python -m analysis.ground_truth --readme README.md      # ... and regenerate the README's table
    ray submit search/clusters/aws-gpu.yaml analysis/ground_truth.py -- --gpus-per-trial 0.25 \\
        --max-concurrent 16 --tracking-uri http://<head>:5000

For each regime of search/spaces/ground_truth/regimes.yaml (synthetic benchmarks whose task
relatedness is known) it writes the data, then runs one grid sweep of
search/spaces/ground_truth/variants.yaml over search/spaces/ground_truth/base.yaml: the
single-task towers first (the sweep's baselines, one per seed), then every family at every
seed with the same budget. The table is `mtlsweep compare --group-by variant` of each sweep
(test AUROC at the best validation epoch, ΔAUROC against the towers of the same seed, paired
Wilcoxon over tasks × seeds); the figure and table go to --out and to an MLflow run, and with
--readme into the README between its `ground-truth` markers. Rerunning resumes: finished
trials and baselines are reused, never rerun.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

import search

REPO = Path(search.__file__).resolve().parents[1]     # works when `ray submit` runs this file alone
STUDY = REPO / "search" / "spaces" / "ground_truth"
EXPERIMENT = "mtlsweep-ground-truth"


def load_regimes(path: Path) -> dict[str, dict]:
    from data.synthetic import spec_from_dict
    from training.config import ConfigError
    tree = yaml.safe_load(Path(path).read_text()) or {}
    common, regimes = tree.get("common") or {}, tree.get("regimes")
    if not isinstance(regimes, dict) or not regimes:
        raise ConfigError(f"{path}: regimes: expected a mapping of regime names to synthetic-data knobs")
    out = {}
    for name, knobs in regimes.items():
        merged = {**common, **(knobs or {})}
        spec_from_dict(merged)          # a bad knob fails here, before any data or cluster work
        out[str(name)] = merged
    return out


def ensure_regime_data(ws: Path, name: str, knobs: dict) -> Path:
    """The regime's store, written once; a store written from other knobs is refused, not reused."""
    import json

    from data.synthetic import spec_from_dict, write_synthetic
    out = ws / "data" / name
    spec = spec_from_dict(knobs)
    truth = out / "truth.json"
    if (out / "store.h5").is_file() and truth.is_file():
        written = json.loads(truth.read_text()).get("spec", {})
        wanted = json.loads(json.dumps(spec.__dict__))
        if any(written.get(k) != v for k, v in wanted.items()):
            raise FileExistsError(f"{out}: holds data from other knobs than regime {name!r}; "
                                  "move it away or pass another --workspace")
        print(f"reusing {out / 'store.h5'}", flush=True)
        return out / "store.h5"
    t0 = time.time()
    write_synthetic(spec, out)
    print(f"wrote {out} (regime {name}: {spec.n_tasks} tasks, {spec.n_groups} groups, shared fraction "
          f"{spec.shared_fraction}, {spec.n_seqs} x {spec.seq_len} bp) in {time.time() - t0:.1f}s", flush=True)
    return out / "store.h5"


def figure(results: dict[str, list], path: Path) -> Path:
    """ΔAUROC against the towers per configuration: one point per seed, bar = mean, per regime."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [g.name for g in next(iter(results.values())) if g.pairs.size]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 1.1 * len(names)), 4.2))
    width = 0.8 / len(results)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for i, (regime, groups) in enumerate(results.items()):
        by = {g.name: g for g in groups}
        xs = np.arange(len(names)) + (i - (len(results) - 1) / 2) * width
        means = [by[n].delta.mean() if n in by and by[n].delta.size else np.nan for n in names]
        ax.bar(xs, means, width * 0.9, color=colors[i % len(colors)], alpha=0.45, label=regime)
        for x, n in zip(xs, names):
            if n in by:
                ax.scatter(np.full(by[n].delta.size, x), by[n].delta, s=12, color=colors[i % len(colors)], zorder=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ΔAUROC vs single-task towers (test)")
    ax.set_title("bars: mean over seeds; dots: one seed each", fontsize=9)
    ax.legend(title="regime", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(results: dict[str, list], regimes: dict[str, dict], split: str, figure_rel: str) -> str:
    from mlflow_server.group_compare import COLUMNS
    head = ["regime", "configuration", "family", "seeds", f"{split} AUROC", "ΔAUROC vs single-task (mean ± sd)",
            "paired Wilcoxon p (tasks × seeds)", "tasks improved (per seed)", "epoch (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for regime, groups in results.items():
        for g in groups:
            r = g.row()
            lines.append(f"| {regime} | " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    knobs = "; ".join(f"**{n}**: shared fraction {k.get('shared_fraction')}" for n, k in regimes.items())
    c = next(iter(regimes.values()))
    contrast = []
    names = [g.name for g in next(iter(results.values())) if g.pairs.size]
    if len(results) == 2:
        (ra, ga), (rb, gb) = results.items()
        da, db = {g.name: g for g in ga}, {g.name: g for g in gb}
        for n in names:
            if n in da and n in db and da[n].delta.size and db[n].delta.size:
                contrast.append(f"{n} {da[n].delta.mean() - db[n].delta.mean():+.4f}")
    text = [f"{c.get('n_tasks')} tasks in {c.get('n_groups')} groups, {c.get('motifs_per_task')} motifs per task, "
            f"{c.get('n_seqs')} sequences of {c.get('seq_len')} bp; {knobs}. Seeds are training seeds "
            "(same data); every configuration is compared with the single-task towers of its own seed.",
            "", "\n".join(lines), ""]
    if contrast:
        text += [f"ΔAUROC({list(results)[0]}) − ΔAUROC({list(results)[1]}) per configuration: " + ", ".join(contrast)
                 + ".", ""]
    text += [f"![ground-truth study]({figure_rel})"]
    return "\n".join(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regimes", default=str(STUDY / "regimes.yaml"))
    ap.add_argument("--base", default=str(STUDY / "base.yaml"))
    ap.add_argument("--space", default=str(STUDY / "variants.yaml"))
    ap.add_argument("--regime", action="append", help="run only these regimes (default: all)")
    ap.add_argument("--workspace", default="workspace/ground_truth")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else SQLite in the workspace)")
    ap.add_argument("--experiment", default=EXPERIMENT)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--gpus-per-trial", type=float, default=0.0)
    ap.add_argument("--address", help="Ray cluster address (default: running cluster, else embedded)")
    ap.add_argument("--split", choices=["val", "test"], default="test", help="AUROC reported in the table")
    ap.add_argument("--out", default=str(REPO / "docs"), help="where ground_truth.md/.png are written")
    ap.add_argument("--readme", help="README to update between its ground-truth markers")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    a = ap.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from mlflow_server.compare import collect
    from mlflow_server.group_compare import group_runs, render_text
    from mlflow_server.run_logger import get_or_create_experiment
    from mlflow_server.server import check_reachable, resolve_tracking_uri
    from search.driver import SweepArgs, _validate, run_sweep
    from training.config import ConfigError

    regimes = load_regimes(Path(a.regimes))
    chosen = a.regime or list(regimes)
    for r in chosen:
        if r not in regimes:
            raise ConfigError(f"--regime {r!r}: not in {a.regimes} (has {', '.join(regimes)})")
    ws = Path(a.workspace).resolve()
    overrides = [f"tracking.experiment={a.experiment}", *a.set]
    sweeps = {r: SweepArgs(base=a.base, space=a.space, scheduler="none", name=f"ground-truth-{r}",
                           max_concurrent=a.max_concurrent, cpus_per_trial=a.cpus_per_trial,
                           gpus_per_trial=a.gpus_per_trial, address=a.address, workspace=str(ws),
                           overrides=[f"data.path={ws / 'data' / r / 'store.h5'}", *overrides]) for r in chosen}
    for args in sweeps.values():
        _validate(args)                                  # every config of the design, before any work
    uri = resolve_tracking_uri(None, a.tracking_uri, default_dir=str(ws))
    check_reachable(uri)
    t0 = time.time()
    results: dict[str, list] = {}
    for r, args in sweeps.items():
        print(f"\n==> regime {r}", flush=True)
        ensure_regime_data(ws, r, regimes[r])
        args.tracking_uri = uri
        res = run_sweep(args)
        groups = group_runs(collect(MlflowClient(uri), a.experiment, res.parent_run_id), "variant", a.split)
        print(render_text(groups, f"regime {r}: {a.split} AUROC vs single-task towers"), flush=True)
        results[r] = groups
    elapsed = time.time() - t0

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = figure(results, out / "ground_truth.png")
    rel = Path(a.readme).resolve().parent if a.readme else out
    try:
        fig_rel = str(fig.resolve().relative_to(rel.resolve()))
    except ValueError:
        fig_rel = str(fig)
    md = markdown(results, {r: regimes[r] for r in chosen}, a.split, fig_rel)
    md += f"\n\nRegenerated by `python -m analysis.ground_truth --readme README.md` ({elapsed / 60:.0f} min on this run's machine)."
    (out / "ground_truth.md").write_text(md + "\n")
    client = MlflowClient(uri)
    run = client.create_run(get_or_create_experiment(client, a.experiment), run_name="ground-truth-study",
                            tags={"role": "analysis"})
    client.log_artifact(run.info.run_id, str(fig))
    client.log_artifact(run.info.run_id, str(out / "ground_truth.md"))
    client.log_metric(run.info.run_id, "study_minutes", elapsed / 60)
    client.set_terminated(run.info.run_id)
    print(f"\nwritten: {out / 'ground_truth.md'}, {fig} (and MLflow run {run.info.run_id})")
    if a.readme:
        from search.readme import replace_section
        p = Path(a.readme)
        p.write_text(replace_section(p.read_text(), "ground-truth", md.strip()))
        print(f"updated {p}")
    return 0


if __name__ == "__main__":
    import sys
    from search.cli import guarded
    sys.exit(guarded(main, sys.argv[1:]))
