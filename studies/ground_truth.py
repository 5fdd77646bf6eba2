"""The ground-truth study: does sharing help where tasks are related by construction, and only there?

    python -m mtlsweep.studies.ground_truth                        # the full design, embedded Ray
    python -m mtlsweep.studies.ground_truth --quick                 # related and unrelated, motif trunk only
    python -m mtlsweep.studies.ground_truth --page docs/results/ground-truth.md   # ... and the site's page
    ray submit search/clusters/aws-gpu.yaml studies/ground_truth.py -- --address auto --gpus-per-trial 0.25 \\
        --max-concurrent 16 --tracking-uri http://<head>:5000

search/spaces/ground_truth/regimes.yaml names synthetic benchmarks whose task relatedness is
known (regimes), the data seeds each is drawn with, which arms each runs and the reference
families; variants.yaml the CNN arms on base.yaml and the values every arm is tuned over.

The protocol, the same for every arm (the single-task towers of each trunk, the baselines,
included):

1. **Tune** on the first data seed of each regime: every arm at every ``tune:`` point (learning
   rate x weight decay), the towers first; per arm the point best on validation is kept. The hard
   model measures task affinity as it trains (``train.affinity_every``), and ``grouped_affinity``
   (a hard model per group of the affinity's clusters) is then tuned the same way.
2. **Replicate** the chosen values of every arm on the other data seeds (one sweep per regime
   and trunk, against the towers at their own chosen values).
3. **References** on every data set, fitted by the sweeps of the base trunk (``--references``):
   ``motif_gbm`` and ``kmer_linear`` (which tunes its k and penalty on validation inside its fit),
   configured by base.yaml's gbm: and kmer: sections; the oracle (true motifs and rule) is each
   data set's ceiling.
4. **Finish** every run the table reads whose convergence certificate failed (trained longer
   from its last checkpoint, in its own MLflow run).
5. **Table**: test AUROC at the best validation epoch against the towers of the same data set
   and trunk (mean ± sd over data seeds, Wilcoxon over tasks x seeds), each arm's certificate
   (converged on every data set, tuned values inside their ranges), parameters and FLOPs; the
   best hard-sharing configuration per regime (chosen on validation) and its gap to the towers.

Rerunning resumes: finished sweeps, trials and baselines are reused, never rerun.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from mlflow.tracking import MlflowClient

import mtlsweep.search as search_pkg
from mtlsweep.app.docs import replace_section
from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import ARCH_PRESETS, load_config
from mtlsweep.config.tags import Role
from mtlsweep.config.yaml_file import load_yaml
from mtlsweep.data.synthetic import spec_from_dict, write_synthetic, written_with
from mtlsweep.mlflow_server.compare import collect
from mtlsweep.mlflow_server.group_compare import (
    BASELINE_GROUP,
    COLUMNS,
    SELECT_BY,
    group_runs,
    render_text,
    select_tuned,
    trunk_name,
)
from mtlsweep.mlflow_server.run_logger import get_or_create_experiment
from mtlsweep.mlflow_server.server import check_reachable, resolve_tracking_uri
from mtlsweep.plots import subplots
from mtlsweep.search.driver import SweepArgs, run_sweep
from mtlsweep.search.finish import finish_until_converged
from mtlsweep.search.grid import parse_grid
from mtlsweep.search.references import parse_references
from mtlsweep.training.certificates import RULE, TUNING_RULE

REPO = Path(search_pkg.__file__).resolve().parents[1]     # works when `ray submit` runs this file alone
STUDY = REPO / "search" / "spaces" / "ground_truth"
EXPERIMENT = "mtlsweep-ground-truth"
SWEEP = "ground-truth"
TUNED = ("optim.lr", "optim.weight_decay")
AFFINITY_ARM = "grouped_affinity"
# A hard model per cluster of the hard arm's measured affinity (its chosen run on the tuning data set).
AFFINITY_OVERRIDES = {"model.sharing.shared_layers": 0, "model.sharing.group_layers": "all",
                      "model.sharing.groups": "auto:{k}", "model.capacity": "match_towers"}
HARD_ARMS = ("hard", "hard_curriculum", "hard_warm_start", "deep_hard", "deep_hard_matched")
QUICK_REGIMES = ("related", "unrelated")
TABLE, FIGURE = "ground-truth-table.md", "ground-truth.png"     # in --out (docs/results/)


@dataclass
class Design:
    regimes: dict[str, dict]                 # regime -> synthetic-data knobs
    seeds: list[int]
    arms: dict[str, list[str]]               # regime -> arms it runs
    variants: dict[str, dict]                # arm -> overrides (grouped_affinity filled in later)
    tune: dict[str, list]
    references: list[str] = field(default_factory=list)      # reference families, fitted once per data set


def load_design(regimes_file: Path, variants_file: Path, quick: bool = False, only=None) -> Design:
    """The study's design; a bad knob, arm or key fails here, before any work. ``only``: the
    regimes to run (their arms are checked against the variants file; another variants file,
    e.g. optimizers.yaml, need not have the arms the other regimes list)."""
    tree = load_yaml(Path(regimes_file).read_text(), str(regimes_file)) or {}
    common, regimes = tree.get("common") or {}, tree.get("regimes")
    seeds = tree.get("data_seeds", [common.get("seed", 0)])
    if not isinstance(regimes, dict) or not regimes:
        raise ConfigError(f"{regimes_file}: regimes: expected a mapping of regime names to synthetic-data knobs")
    if not isinstance(seeds, list) or not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0
                                                        for s in seeds):
        raise ConfigError(f"{regimes_file}: data_seeds: expected a non-empty list of integers >= 0, got {seeds!r}")
    knobs = {}
    for name, k in regimes.items():
        merged = {**common, **(k or {})}
        spec_from_dict({**merged, "seed": seeds[0]})
        knobs[str(name)] = merged
    grid = load_yaml(Path(variants_file).read_text(), str(variants_file)) or {}
    variants = {str(n): dict(o or {}) for n, o in (grid.get("variants") or {}).items()}
    tune = grid.get("tune") or {}
    every = [*variants, AFFINITY_ARM]
    arms = {}
    for r in knobs:
        if only and r not in only:
            continue
        listed = (tree.get("arms") or {}).get(r, every)
        bad = [a for a in listed if a not in every]
        if bad:
            raise ConfigError(f"{regimes_file}: arms.{r}: {bad[0]!r} is not an arm of {variants_file} "
                              f"(arms: {', '.join(every)})")
        arms[r] = [a for a in listed if not (quick and a.startswith("deep_"))]
    if quick:
        knobs = {r: k for r, k in knobs.items() if r in QUICK_REGIMES}
    refs = tree.get("references") or []
    if not isinstance(refs, list):
        raise ConfigError(f"{regimes_file}: references: expected a list of reference families, got {refs!r}")
    return Design(knobs, seeds, arms, variants, tune, list(parse_references(",".join(map(str, refs)))))


def data_dir(ws: Path, regime: str, seed: int) -> Path:
    return ws / "data" / regime / f"seed{seed}"


def store_path(ws: Path, regime: str, seed: int) -> str:
    return str(data_dir(ws, regime, seed) / "store.h5")


def ensure_data(ws: Path, regime: str, knobs: dict, seed: int) -> Path:
    """The benchmark's store, written once; one written from other knobs is refused, not reused."""
    out = data_dir(ws, regime, seed)
    spec = spec_from_dict({**knobs, "seed": seed})
    truth = out / "truth.json"
    if (out / "store.h5").is_file() and truth.is_file():
        if not written_with(truth, spec):
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


def write_space(path: Path, variants: dict, grid: dict, tune: dict, why: str) -> Path:
    tree = {"variants": variants, "grid": grid, **({"tune": tune} if tune else {})}
    path.write_text(f"# written by studies/ground_truth.py: {why}\n" + yaml.safe_dump(tree, sort_keys=False))
    return path


def by_regime(rows, ws: Path, regimes) -> dict[str, list]:
    """Rows split by the regime of their data set (baselines and trials alike)."""
    out: dict[str, list] = {r: [] for r in regimes}
    for row in rows:
        p = Path(row.params.get("data.path", ""))
        regime = p.parent.parent.name if p.parent.parent.parent == ws / "data" else None
        if regime in out:
            out[regime].append(row)
    return out


def seed_of(row, ws: Path) -> str:
    return Path(row.params.get("data.path", "")).parent.name


def chosen_values(rows, arm: str) -> tuple[dict, object]:
    """(the tuned values, the run) of ``arm``'s run best on validation among its tune points."""
    runs = [r for r in rows if r.tags.get(tag.VARIANT) == arm and r.completed and math.isfinite(r.m(SELECT_BY))]
    if not runs:
        return {}, None
    best = max(runs, key=lambda r: r.m(SELECT_BY))
    return {k: yaml.safe_load(best.params[k]) for k in TUNED if k in best.params}, best


def towers_values(rows, trunk: str, seed_path: str) -> dict:
    """The tuned values of the towers (the kept baseline) of a trunk on the tuning data set."""
    for r in rows:
        if r.role == Role.BASELINE and r.status == "FINISHED" and trunk_name(r.params) == trunk and \
                r.params.get("data.path") == seed_path:
            return {k: yaml.safe_load(r.params[k]) for k in TUNED if k in r.params}
    return {}


def trunk_of(overrides: dict, base_trunk: str) -> str:
    return overrides.get("model.arch.preset") or base_trunk


class Study:
    """The phases of one run of the study, sharing the sweep arguments and the tracking store."""

    def __init__(self, a, design: Design, ws: Path, uri: str, base):
        self.a, self.design, self.ws, self.uri, self.base = a, design, ws, uri, base
        self.sweeps: list[str] = []

    def sweep(self, name: str, space: Path, baseline: str, overrides: list[str], references: bool = False):
        a = self.a
        args = SweepArgs(base=a.base, space=str(space), scheduler="none", name=name, max_concurrent=a.max_concurrent,
                         cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial, address=a.address,
                         workspace=str(self.ws), baseline=baseline, tracking_uri=self.uri,
                         references=self.design.references if references else (),
                         overrides=[f"tracking.experiment={a.experiment}", *a.set, *overrides])
        self.sweeps.append(name)
        print(f"\n==> sweep {name}", flush=True)
        return run_sweep(args)

    def rows(self, regime: str | None = None):
        rows = [r for r in collect(MlflowClient(self.uri), self.a.experiment)
                if r.tags.get(tag.SWEEP, "").startswith(SWEEP) or r.role == Role.BASELINE]
        split = by_regime(rows, self.ws, list(self.design.regimes))
        return split[regime] if regime else [r for rs in split.values() for r in rs]


def tune_stage(study: Study, regime: str) -> None:
    d = study.design
    arms = {n: d.variants[n] for n in d.arms[regime] if n in d.variants}
    path = store_path(study.ws, regime, d.seeds[0])
    space = write_space(study.ws / f"space-{regime}-tune.yaml", arms, {"data.path": [path]}, d.tune,
                        f"tune every arm on data seed {d.seeds[0]} of {regime}")
    study.sweep(f"{SWEEP}-{regime}-tune", space, "tuned", [f"data.path={path}"], references=True)


def affinity_stage(study: Study, regime: str) -> dict:
    """grouped_affinity's overrides for ``regime`` (groups from the chosen hard run's affinity, that
    run finished until it converged), tuned like every arm; {} when the regime does not run it."""
    d = study.design
    if AFFINITY_ARM not in d.arms[regime]:
        return {}
    _, hard = chosen_values(study.rows(regime), "hard")
    if hard is None or not (Path(hard.tags[tag.RUN_DIR]) / "mlflow_artifacts" / "affinity.json").is_file():
        print(f"{regime}: no hard run with a measured affinity; {AFFINITY_ARM} left out", flush=True)
        return {}
    # The affinity is only as good as the probe that measured it: a run that has not converged has not
    # learned the motifs the groups share (issue 31). It is finished first (its measurement goes on).
    if hard.converged is not True:
        a = study.a
        finish_until_converged(lambda: [r for r in study.rows(regime) if r.run_id == hard.run_id], study.uri,
                               cpus=a.cpus_per_trial, gpus=a.gpus_per_trial)
        _, hard = chosen_values(study.rows(regime), "hard")
    if hard.converged is not True:
        print(f"{regime}: the chosen hard run ({hard.name}) did not converge; its affinity is no probe of a "
              f"model that learned, {AFFINITY_ARM} left out", flush=True)
        return {}
    k = d.regimes[regime].get("n_groups", 4)
    over = {**{key: (v.format(k=k) if isinstance(v, str) else v) for key, v in AFFINITY_OVERRIDES.items()},
            "model.sharing.affinity": hard.tags[tag.RUN_DIR]}
    path = store_path(study.ws, regime, d.seeds[0])
    space = write_space(study.ws / f"space-{regime}-affinity.yaml", {AFFINITY_ARM: over}, {"data.path": [path]},
                        d.tune, f"tune {AFFINITY_ARM} on data seed {d.seeds[0]} of {regime}")
    study.sweep(f"{SWEEP}-{regime}-affinity", space, "tuned", [f"data.path={path}"])
    return over


def replicate_stage(study: Study, regime: str, affinity: dict) -> None:
    """Each trunk's arms at their chosen values on the other data seeds, against that trunk's
    towers at theirs."""
    d = study.design
    if len(d.seeds) < 2:
        return
    rows = study.rows(regime)
    base_trunk = study.base.model.arch.preset or "custom"
    arms = {n: d.variants[n] for n in d.arms[regime] if n in d.variants}
    if affinity:
        arms[AFFINITY_ARM] = affinity
    paths = [store_path(study.ws, regime, s) for s in d.seeds[1:]]
    for trunk in dict.fromkeys(trunk_of(o, base_trunk) for o in arms.values()):
        towers = towers_values(rows, trunk, store_path(study.ws, regime, d.seeds[0]))
        chosen = {}
        for n, o in arms.items():
            if trunk_of(o, base_trunk) == trunk:
                values, _ = chosen_values(rows, n)
                if values:
                    chosen[n] = {**o, **values}
        if not towers or not chosen:
            print(f"{regime}/{trunk}: nothing tuned to replicate", flush=True)
            continue
        space = write_space(study.ws / f"space-{regime}-{trunk}-replicate.yaml", chosen, {"data.path": paths}, {},
                            f"the chosen values of {regime}'s {trunk}-trunk arms on data seeds {d.seeds[1:]}")
        study.sweep(f"{SWEEP}-{regime}-{trunk}-replicate", space, "fixed",
                    [f"data.path={paths[0]}", *([f"model.arch.preset={trunk}"] if trunk != base_trunk else []),
                     *(f"{k}={v}" for k, v in towers.items())], references=trunk == base_trunk)


def table_runs(rows) -> list:
    """The runs a regime's table reads: each arm's chosen run per data set and the baselines."""
    out = [r for r in rows if r.role == Role.BASELINE and r.status == "FINISHED"]
    by_arm: dict[str, list] = {}
    for r in rows:
        if r.role not in ("baseline", Role.CANDIDATE) and r.completed and r.tags.get(tag.VARIANT):
            by_arm.setdefault(r.tags[tag.VARIANT], []).append(r)
    for runs in by_arm.values():
        out += select_tuned(runs)
    return out


# ---------------------------------------------------------------------------- report


def figure(results: dict[str, list], path: Path) -> Path:
    """Share of the towers' gap to the ceiling each configuration closes, per regime: one point per
    data seed, bar = mean. 0 is the towers, 1 the oracle, below 0 worse than the towers."""
    names = list(dict.fromkeys(g.name for groups in results.values() for g in groups if g.pairs.size))
    fig, ax = subplots(figsize=(max(6.0, 1.0 + 0.8 * len(names)), 4.4))
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
                ax.scatter(np.full(by[n].gap_closed.size, x), by[n].gap_closed, s=10, color=colors[i % len(colors)],
                           zorder=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(max(-3.0, ax.get_ylim()[0]), min(1.5, ax.get_ylim()[1]))
    ax.set_ylabel("share of the towers' gap to the oracle closed (test)")
    ax.set_title("0 = single-task towers of the same trunk, 1 = oracle (true motifs)\n"
                 "bars: mean over data seeds, dots: one data seed each", fontsize=8)
    ax.legend(title="regime", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def towers_of(groups, trunk: str):
    """The baseline group of a trunk (there is one group when every arm shares a trunk)."""
    towers = [g for g in groups if g.family == "single" and g.name.endswith("(baseline)")]
    return next((g for g in towers if g.name == BASELINE_GROUP or trunk_name(g.runs[0].params) == trunk), None)


def best_hard(groups) -> tuple[object, str]:
    """The hard-sharing arm best on validation on the tuning data set, among the certified ones
    whose towers are certified too (a verdict needs both sides fit for one)."""
    cands = []
    for g in groups:
        if g.name in HARD_ARMS and g.certificate()[0]:
            towers = towers_of(groups, trunk_name(g.runs[0].params))
            if towers is not None and towers.certificate()[0]:
                cands.append(g)
    if not cands:
        return None, "no hard-sharing arm is certified beside certified towers of its trunk"

    def val(g):
        first = min(g.runs, key=lambda r: r.params.get("data.path", ""))
        return first.m("best/val/auroc_mean")
    return max(cands, key=val), ""


def describe_setup(design: Design, base) -> str:
    """The trunks and the reference families of the design, in words, from their configs."""

    def trunk(name: str) -> str:
        p = ARCH_PRESETS.get(name)
        if p is None:
            return f"{name} (conv {base.model.arch.conv_channels}, dense {base.model.arch.dense})"
        pools = "global max-pool" if p["pool"] == [0] else f"pools {p['pool']}"
        return f"{name} (conv {p['conv_channels']} of widths {p['conv_widths']}, {pools}, dense {p['dense']})"
    base_trunk = base.model.arch.preset or "custom"
    others = sorted({o["model.arch.preset"] for o in design.variants.values() if o.get("model.arch.preset")}
                    - {base_trunk})
    out = [f"Trunks: {trunk(base_trunk)}, the towers at {base.model.width:g} of its width per task"
           + "".join(f"; {trunk(t)} for the `{t}_*` arms" for t in others) + "."]
    refs = []
    for name in design.references:
        cfg = base.with_overrides({"model.family": name}, source=f"references {name}")
        if cfg.model.family == "kmer_linear":
            k = cfg.kmer
            refs.append(f"kmer_linear (logistic regression on canonical k-mers of both strands, k ∈ {k.k} and "
                        f"C ∈ {k.C} chosen {'jointly' if k.select == 'joint' else 'per task'} on validation)")
        elif cfg.model.family == "motif_gbm":
            g = cfg.gbm
            refs.append(f"motif_gbm (JASPAR {g.motif_collection} {g.motif_tax_group} motif scores"
                        + (f", the first {g.max_motifs}" if g.max_motifs else "")
                        + f" + {g.backend} boosted trees, early stopping on validation)")
    if refs:
        out.append("References on the same splits: " + ", ".join(refs) + ", and the oracle (the true motifs and "
                   "label rule: each data set's ceiling).")
    return " ".join(out)


def markdown(results: dict[str, list], design: Design, split: str, figure_rel: str, oracle: dict, base) -> str:
    head = ["regime", "configuration", "family", "data seeds", "certified", f"{split} AUROC",
            "ΔAUROC vs towers (mean ± sd)", "paired Wilcoxon p (tasks × seeds)", "tasks improved (per seed)",
            "oracle AUROC", "gap to oracle closed", "train − valid AUROC", "parameters", "FLOPs / seq", "epoch (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    failed = []
    for regime, groups in results.items():
        for g in groups:
            r = g.row()
            lines.append(f"| {regime} | " + " | ".join(str(r[c]) for c in COLUMNS) + " |")
            ok, why = g.certificate()
            if not ok:
                failed.append(f"- {regime}, {g.name}: {'; '.join(why)}")
        if regime in oracle:
            o = oracle[regime]
            lines.append(f"| {regime} | oracle (true motifs and rule) | oracle | {len(o)} | - | "
                         f"{np.mean(o):.4f} ± {np.std(o, ddof=1) if len(o) > 1 else 0:.4f} | - | - | - | - | - | - | "
                         "- | - | - |")
    c = next(iter(design.regimes.values()))
    knobs = "; ".join(f"**{n}**: shared fraction {k.get('shared_fraction')}, {k.get('n_seqs')} sequences"
                      + (", de novo motifs outside JASPAR CORE vertebrates" if k.get("motif_source") == "denovo" else "")
                      for n, k in design.regimes.items())
    tune = " × ".join(f"{k} ∈ {v}" for k, v in design.tune.items())
    text = [f"{c.get('n_tasks')} tasks in {c.get('n_groups')} groups, {c.get('motifs_per_task')} motifs per task, "
            f"{c.get('seq_len')} bp ({knobs}; 70/15/15 train/valid/test); data seeds {design.seeds}. Every CNN arm, "
            f"the towers of each trunk included, is tuned alike ({tune}: "
            f"{math.prod(len(v) for v in design.tune.values())} trials each, best on validation, on data seed "
            f"{design.seeds[0]}; the chosen values rerun on the other seeds); test AUROC at the best validation "
            f"epoch, against the towers of the same data set and trunk. {describe_setup(design, base)} "
            f"Certified: {RULE}, and {TUNING_RULE}.", "", "\n".join(lines), ""]
    for regime, groups in results.items():
        g, why = best_hard(groups)
        if g is None:
            text.append(f"**{regime}**: {why}; no verdict on hard sharing.")
            continue
        r = g.row()
        text.append(f"**{regime}**: the best hard-sharing configuration (on validation, data seed "
                    f"{design.seeds[0]}) is `{g.name}`: ΔAUROC {r['delta_auroc']} against the towers of its trunk "
                    f"(p = {r['wilcoxon_p']}, {r['tasks_improved']} tasks improved).")
    text.append("")
    names = list(dict.fromkeys(g.name for groups in results.values() for g in groups if g.pairs.size))
    for a, b in (("related", "unrelated"), ("scarce", "related"), ("novel", "related")):
        if a in results and b in results:
            da, db = {g.name: g for g in results[a]}, {g.name: g for g in results[b]}
            diffs = [f"{n} {da[n].delta.mean() - db[n].delta.mean():+.4f}" for n in names
                     if n in da and n in db and da[n].delta.size and db[n].delta.size]
            if diffs:
                text += [f"ΔAUROC({a}) − ΔAUROC({b}) per configuration: " + ", ".join(diffs) + ".", ""]
    # A blank line before the list: Markdown runs a list straight after a line into its paragraph.
    text += [*(["Certificates that failed:", ""] if failed else ["Every arm is certified."]), *failed, "",
             f"![ground-truth study]({figure_rel})"]
    return "\n".join(text)


def oracle_of(ws: Path, design: Design, split: str) -> dict[str, list[float]]:
    key = {"val": "valid", "test": "test"}[split]
    out = {}
    for r in design.regimes:
        vals = []
        for s in design.seeds:
            t = data_dir(ws, r, s) / "truth.json"
            if t.is_file():
                vals.append(json.loads(t.read_text())["oracle"]["mean"][key]["auroc"])
        out[r] = vals
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regimes", default=str(STUDY / "regimes.yaml"))
    ap.add_argument("--base", default=str(STUDY / "base.yaml"))
    ap.add_argument("--space", default=str(STUDY / "variants.yaml"))
    ap.add_argument("--regime", action="append", help="run only these regimes (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK_REGIMES)}, no deep-trunk arms")
    ap.add_argument("--workspace", default="workspace/ground_truth")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else SQLite in the workspace)")
    ap.add_argument("--experiment", default=EXPERIMENT)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--gpus-per-trial", type=float, default=0.0)
    ap.add_argument("--address", help="Ray cluster address (default: an embedded cluster of this machine)")
    ap.add_argument("--split", choices=["val", "test"], default="test", help="AUROC reported in the table")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"),
                    help=f"where {TABLE} and {FIGURE} are written")
    ap.add_argument("--page", help="a markdown page to update between its ground-truth markers "
                                   "(the site's docs/results/ground-truth.md)")
    ap.add_argument("--section", default="ground-truth",
                    help="the page's section (between its <name>:start/end markers) the table replaces")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    a = ap.parse_args(argv)
    if a.page:        # checked now, not after an hour of training
        if not Path(a.page).is_file():
            raise ConfigError(f"--page {a.page}: no such file")
        try:
            replace_section(Path(a.page).read_text(), a.section, "", f"--page {a.page}")
        except ValueError as exc:
            raise ConfigError(f"{exc} (--section {a.section}: add <!-- {a.section}:start --> and "
                              f"<!-- {a.section}:end --> where its table goes)") from None

    design = load_design(Path(a.regimes), Path(a.space), a.quick, only=a.regime)
    for r in a.regime or []:
        if r not in design.regimes:
            raise ConfigError(f"--regime {r!r}: not in {a.regimes} (has {', '.join(design.regimes)})")
    if a.regime:
        design.regimes = {r: k for r, k in design.regimes.items() if r in a.regime}
    # Every config of the design, before any work.
    base = load_config(a.base, a.set)
    parse_grid({"variants": design.variants, "tune": design.tune}, a.space).check_against(base)
    base.with_overrides({k: (v.format(k=4) if isinstance(v, str) else v) for k, v in AFFINITY_OVERRIDES.items()}
                        | {"model.sharing.affinity": "x"}, source=f"{AFFINITY_ARM}")
    ws = Path(a.workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(None, a.tracking_uri, default_dir=str(ws))
    check_reachable(uri)
    t0 = time.time()
    for r, knobs in design.regimes.items():
        for s in design.seeds:
            ensure_data(ws, r, knobs, s)

    study = Study(a, design, ws, uri, base)
    for r in design.regimes:
        tune_stage(study, r)
    affinity = {r: affinity_stage(study, r) for r in design.regimes}
    for r in design.regimes:
        replicate_stage(study, r, affinity[r])
    finish_until_converged(lambda: table_runs(study.rows()), uri, cpus=a.cpus_per_trial, gpus=a.gpus_per_trial)

    results: dict[str, list] = {}
    for r in design.regimes:
        results[r] = group_runs(study.rows(r), tag.VARIANT, a.split)
        print(render_text(results[r], f"regime {r}: {a.split} AUROC vs single-task towers"), flush=True)
    elapsed = time.time() - t0

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = figure(results, out / FIGURE)
    rel = (Path(a.page).resolve().parent if a.page else out).resolve()
    if a.page and not fig.resolve().is_relative_to(rel):
        # The page links its figure by a path inside the site: one written elsewhere (--out outside
        # the docs) is copied beside the page, under the page's name.
        stem = Path(a.page).stem + ("" if a.section == "ground-truth" else f"-{a.section}")
        fig = Path(shutil.copy2(fig, rel / f"{stem}.png"))
    fig_rel = str(fig.resolve().relative_to(rel)) if fig.resolve().is_relative_to(rel) else str(fig)
    md = markdown(results, design, a.split, fig_rel, oracle_of(ws, design, a.split), base)
    given = argv if argv is not None else sys.argv[1:]
    cmd = " ".join(["python -m mtlsweep.studies.ground_truth", *map(shlex.quote, given)])
    md += f"\n\nRegenerated by `{cmd}` ({elapsed / 60:.0f} min on this run's machine)."
    (out / TABLE).write_text(md + "\n")
    client = MlflowClient(uri)
    run = client.create_run(get_or_create_experiment(client, a.experiment), run_name="ground-truth-study",
                            tags={tag.ROLE: Role.ANALYSIS})
    client.log_artifact(run.info.run_id, str(fig))
    client.log_artifact(run.info.run_id, str(out / TABLE))
    client.log_metric(run.info.run_id, "study_minutes", elapsed / 60)
    client.set_terminated(run.info.run_id)
    print(f"\nwritten: {out / TABLE}, {fig} (and MLflow run {run.info.run_id})")
    if a.page:
        p = Path(a.page)
        p.write_text(replace_section(p.read_text(), a.section, md.strip()))
        print(f"updated {p}")
    return 0


if __name__ == "__main__":
    from mtlsweep.config.errors import guarded
    sys.exit(guarded(main, sys.argv[1:]))
