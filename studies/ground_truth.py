"""The ground-truth study: does sharing help where tasks are related by construction, and only there?

    python -m mtlsweep.studies.ground_truth                        # this machine, embedded Ray
    python -m mtlsweep.studies.ground_truth --readme README.md      # ... and regenerate the README's table
    ray submit search/clusters/aws-gpu.yaml studies/ground_truth.py -- --gpus-per-trial 0.25 \\
        --max-concurrent 16 --tracking-uri http://<head>:5000

search/spaces/ground_truth/regimes.yaml names synthetic benchmarks whose task relatedness is
known (regimes) and the data seeds each is drawn with; the script writes every (regime, data
seed) benchmark, then runs ONE grid sweep of search/spaces/ground_truth/variants.yaml over
search/spaces/ground_truth/base.yaml crossed with every data set. Every arm (the single-task
towers first: they are the baselines) is trained to convergence with early stopping on
validation, at each of the design's ``tune:`` values, and keeps the value best on validation
for each data set; test AUROC at the best validation epoch is then compared with the towers of
the same data set. Each benchmark's ceiling (its true motifs and label rule) is reported beside
it, with the share of the towers' gap to it each arm closes and the train-minus-valid gap.

The table (`mtlsweep compare --group-by variant`, per regime), the figure and the README block
are written to --out, to an MLflow run and with --readme into the README between its
`ground-truth` markers. Rerunning resumes: finished trials and baselines are reused, never rerun.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

import mtlsweep.search as search_pkg

REPO = Path(search_pkg.__file__).resolve().parents[1]     # works when `ray submit` runs this file alone
STUDY = REPO / "search" / "spaces" / "ground_truth"
EXPERIMENT = "mtlsweep-ground-truth"
SWEEP = "ground-truth"


def load_regimes(path: Path) -> tuple[dict[str, dict], list[int]]:
    """(regime -> synthetic-data knobs, data seeds); a bad knob fails here, before any work."""
    from mtlsweep.data.synthetic import spec_from_dict
    from mtlsweep.config.errors import ConfigError
    tree = yaml.safe_load(Path(path).read_text()) or {}
    common, regimes = tree.get("common") or {}, tree.get("regimes")
    seeds = tree.get("data_seeds", [common.get("seed", 0)])
    if not isinstance(regimes, dict) or not regimes:
        raise ConfigError(f"{path}: regimes: expected a mapping of regime names to synthetic-data knobs")
    if not isinstance(seeds, list) or not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0
                                                        for s in seeds):
        raise ConfigError(f"{path}: data_seeds: expected a non-empty list of integers >= 0, got {seeds!r}")
    out = {}
    for name, knobs in regimes.items():
        merged = {**common, **(knobs or {})}
        spec_from_dict({**merged, "seed": seeds[0]})
        out[str(name)] = merged
    return out, seeds


def data_dir(ws: Path, regime: str, seed: int) -> Path:
    return ws / "data" / regime / f"seed{seed}"


def ensure_data(ws: Path, regime: str, knobs: dict, seed: int) -> Path:
    """The benchmark's store, written once; one written from other knobs is refused, not reused."""
    from mtlsweep.data.synthetic import spec_from_dict, write_synthetic
    out = data_dir(ws, regime, seed)
    spec = spec_from_dict({**knobs, "seed": seed})
    truth = out / "truth.json"
    if (out / "store.h5").is_file() and truth.is_file():
        written = json.loads(truth.read_text()).get("spec", {})
        wanted = json.loads(json.dumps(spec.to_dict()))
        if any(written.get(k) != v for k, v in wanted.items()):
            raise FileExistsError(f"{out}: holds data from other knobs than regime {regime!r}; "
                                  "move it away or pass another --workspace")
        print(f"reusing {out / 'store.h5'}", flush=True)
        return out / "store.h5"
    t0 = time.time()
    write_synthetic(spec, out)
    oracle = json.loads(truth.read_text())["oracle"]["mean"]["test"]["auroc"]
    print(f"wrote {out} (regime {regime}, data seed {seed}: {spec.n_tasks} tasks, {spec.n_groups} groups, shared "
          f"fraction {spec.shared_fraction}, {spec.n_seqs} x {spec.seq_len} bp; oracle test AUROC {oracle:.3f}) "
          f"in {time.time() - t0:.1f}s", flush=True)
    return out / "store.h5"


def study_space(variants_file: Path, paths: list[str], out: Path) -> Path:
    """variants.yaml crossed with every data set: the one sweep of the study."""
    tree = yaml.safe_load(Path(variants_file).read_text()) or {}
    grid = dict(tree.get("grid") or {})
    grid["data.path"] = paths
    tree["grid"] = grid
    out.write_text("# written by studies/ground_truth.py: " + str(variants_file) + " x every data set\n"
                   + yaml.safe_dump(tree, sort_keys=False))
    return out


def by_regime(rows, ws: Path, regimes: list[str]) -> dict[str, list]:
    """Rows split by the regime of their data set (baselines and trials alike)."""
    out: dict[str, list] = {r: [] for r in regimes}
    for row in rows:
        p = Path(row.params.get("data.path", ""))
        regime = p.parent.parent.name if p.parent.parent.parent == ws / "data" else None
        if regime in out:
            out[regime].append(row)
    return out


def figure(results: dict[str, list], path: Path) -> Path:
    """Share of the towers' gap to the ceiling each configuration closes, per regime: one point per
    data seed, bar = mean. 0 is the towers, 1 the oracle, below 0 worse than the towers."""
    from mtlsweep.plots import subplots
    names = [g.name for g in next(iter(results.values())) if g.pairs.size]
    fig, ax = subplots(figsize=(max(5.0, 1.0 + 1.1 * len(names)), 4.2))
    width = 0.8 / len(results)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for i, (regime, groups) in enumerate(results.items()):
        by = {g.name: g for g in groups}
        xs = np.arange(len(names)) + (i - (len(results) - 1) / 2) * width
        means = [np.nanmean(by[n].gap_closed) if n in by and np.isfinite(by[n].gap_closed).any() else np.nan
                 for n in names]
        ax.bar(xs, means, width * 0.9, color=colors[i % len(colors)], alpha=0.45, label=regime)
        for x, n in zip(xs, names):
            if n in by:
                ax.scatter(np.full(by[n].gap_closed.size, x), by[n].gap_closed, s=12, color=colors[i % len(colors)],
                           zorder=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of the towers' gap to the oracle closed (test)")
    ax.set_title("0 = single-task towers, 1 = oracle (true motifs); bars: mean over data seeds, dots: one each",
                 fontsize=8)
    ax.legend(title="regime", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def markdown(results: dict[str, list], regimes: dict[str, dict], seeds: list[int], split: str,
             figure_rel: str, tuned: dict) -> str:
    from mtlsweep.mlflow_server.group_compare import COLUMNS
    head = ["regime", "configuration", "family", "data seeds", f"{split} AUROC", "ΔAUROC vs towers (mean ± sd)",
            "paired Wilcoxon p (tasks × seeds)", "tasks improved (per seed)", "oracle AUROC",
            "gap to oracle closed", "train − valid AUROC", "epoch (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for regime, groups in results.items():
        for g in groups:
            r = g.row()
            lines.append(f"| {regime} | " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
    knobs = "; ".join(f"**{n}**: shared fraction {k.get('shared_fraction')}, {k.get('n_seqs')} sequences"
                      for n, k in regimes.items())
    c = next(iter(regimes.values()))
    tune = ", ".join(f"{k} ∈ {v}" for k, v in tuned.items()) or "nothing"
    text = [f"{c.get('n_tasks')} tasks in {c.get('n_groups')} groups, {c.get('motifs_per_task')} motifs per task, "
            f"{c.get('seq_len')} bp ({knobs}; 70/15/15 train/valid/test); data seeds {seeds}. Every arm is tuned "
            f"alike ({tune}, best on validation per data set, the towers first) and trained to convergence "
            "(early stopping on validation AUROC); test AUROC at the best validation epoch, against the towers of "
            "the same data set.", "", "\n".join(lines), ""]
    names = [g.name for g in next(iter(results.values())) if g.pairs.size]
    for a, b in (("related", "unrelated"), ("scarce", "related")):
        if a in results and b in results:
            da, db = {g.name: g for g in results[a]}, {g.name: g for g in results[b]}
            diffs = [f"{n} {da[n].delta.mean() - db[n].delta.mean():+.4f}" for n in names
                     if n in da and n in db and da[n].delta.size and db[n].delta.size]
            if diffs:
                text += [f"ΔAUROC({a}) − ΔAUROC({b}) per configuration: " + ", ".join(diffs) + ".", ""]
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

    from mtlsweep.mlflow_server.compare import collect
    from mtlsweep.mlflow_server.group_compare import group_runs, render_text
    from mtlsweep.mlflow_server.run_logger import get_or_create_experiment
    from mtlsweep.mlflow_server.server import check_reachable, resolve_tracking_uri
    from mtlsweep.search.driver import SweepArgs, _validate, run_sweep
    from mtlsweep.search.space import load_space
    from mtlsweep.config.errors import ConfigError

    regimes, seeds = load_regimes(Path(a.regimes))
    chosen = a.regime or list(regimes)
    for r in chosen:
        if r not in regimes:
            raise ConfigError(f"--regime {r!r}: not in {a.regimes} (has {', '.join(regimes)})")
    ws = Path(a.workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    paths = [str(data_dir(ws, r, s) / "store.h5") for r in chosen for s in seeds]
    space = study_space(Path(a.space), paths, ws / "study_space.yaml")
    args = SweepArgs(base=a.base, space=str(space), scheduler="none", name=SWEEP + "-" + "-".join(chosen),
                     max_concurrent=a.max_concurrent, cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
                     address=a.address, workspace=str(ws), baseline="tuned",
                     overrides=[f"data.path={paths[0]}", f"tracking.experiment={a.experiment}", *a.set])
    _validate(args)                                      # every config of the design, before any work
    uri = resolve_tracking_uri(None, a.tracking_uri, default_dir=str(ws))
    check_reachable(uri)
    t0 = time.time()
    for r in chosen:
        for s in seeds:
            ensure_data(ws, r, regimes[r], s)
    args.tracking_uri = uri
    res = run_sweep(args)
    rows = by_regime(collect(MlflowClient(uri), a.experiment, res.parent_run_id), ws, chosen)
    results: dict[str, list] = {}
    for r in chosen:
        results[r] = group_runs(rows[r], "variant", a.split)
        print(render_text(results[r], f"regime {r}: {a.split} AUROC vs single-task towers"), flush=True)
    elapsed = time.time() - t0

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = figure(results, out / "ground_truth.png")
    rel = Path(a.readme).resolve().parent if a.readme else out
    try:
        fig_rel = str(fig.resolve().relative_to(rel.resolve()))
    except ValueError:
        fig_rel = str(fig)
    md = markdown(results, {r: regimes[r] for r in chosen}, seeds, a.split, fig_rel, load_space(space).tune)
    md += (f"\n\nRegenerated by `python -m mtlsweep.studies.ground_truth --readme README.md` ({elapsed / 60:.0f} min on this "
           "run's machine).")
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
        from mtlsweep.app.readme import replace_section
        p = Path(a.readme)
        p.write_text(replace_section(p.read_text(), "ground-truth", md.strip()))
        print(f"updated {p}")
    return 0


if __name__ == "__main__":
    import sys
    from mtlsweep.config.errors import guarded
    sys.exit(guarded(main, sys.argv[1:]))
