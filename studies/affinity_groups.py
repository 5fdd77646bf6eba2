"""Does measured task affinity recover the planted task groups, and how stably? (issue 31)

    python -m mtlsweep.studies.affinity_groups [--workspace workspace/affinity_study] [--every 5]
        [--seeds 0,1,2,3,4] [--arms [--arm-seeds 0,1,2]] [--jobs 2] [--out docs/results/affinity-groups.md]

On the ground-truth study's synthetic benchmarks (search/spaces/ground_truth/regimes.yaml: 16
tasks in 4 groups; `related` shares 2 of each task's 3 motifs within its group, `unrelated`
shares none) it trains the **probe**: the ground-truth study's hard model on its motif-sized
trunk (base.yaml: adam lr 0.005, weight decay 0.1, at most 150 epochs, early stopping after 10
without validation gain), measuring the lookahead affinity every --every steps from the first
epoch to the last. The probe is certified when it converged by the certificate's rule (its
learning rate and weight decay are the ground-truth study's centres, not tuned here, so no
interior-optimum check applies); its validation AUROC sits beside every matrix.

For each data set: the planted groups' adjusted Rand index (ARI; 1 = recovered exactly, ~0 =
chance) of the average-linkage clusters and of TAG's selection (the partition into the truth's
number of groups with the most affinity onto each task), the stability of each (mean ARI of the
groups of 200 resamples of the measurement's epochs with these groups), and the affinity within
minus between the planted groups; per regime, mean ± sd over the data seeds. On the first data
seed of each regime the probe is trained again with 2 threads instead of 1, and with training
seed 1 instead of 0: the ARI between their groups and the first's says whether the partition
survives the thread count and the training seed. Affinity by stage of training (the ARI of each
epoch's clusters) is reported for the first data seed.

With --arms it then trains, on each data set, the towers, hard, and the hard-model-per-group arm
(ground-truth study's grouped_truth: group_layers all at the towers' size) with groups from the
truth, from the probe's clusters (auto:4) and from TAG's selection (tag:4), each at the weight
decay of {0.03, 0.1} best on validation: test AUROC, mean ± sd over data seeds. No tracking: the
runs land in the workspace; the tables go to --out.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from mtlsweep.analysis.task_groups import stability
from mtlsweep.config.run import RunConfig
from mtlsweep.studies.ground_truth import ensure_data, load_design
from mtlsweep.training.request import RunRequest
from mtlsweep.training.run import execute, prepare
from mtlsweep.training.sharing_groups import truth_groups
from mtlsweep.training.task_affinity import (
    adjusted_rand,
    cluster,
    mean_affinity,
    read_affinity,
    select_groups,
    within_between,
)

SPACES = Path(__file__).resolve().parents[1] / "search" / "spaces" / "ground_truth"


GROUPED = {"model.sharing.shared_layers": 0, "model.sharing.group_layers": "all", "model.capacity": "match_towers"}
ARMS = {
    "towers": {"model.sharing.shared_layers": 0},
    "hard": {"model.sharing.shared_layers": "all"},
    "groups_truth": {**GROUPED, "model.sharing.groups": "truth"},
    "groups_clusters": {**GROUPED, "model.sharing.groups": "auto:4"},
    "groups_tag": {**GROUPED, "model.sharing.groups": "tag:4"},
}
PROBED_ARMS = ("groups_clusters", "groups_tag")       # their groups come from the probe's affinity


WEIGHT_DECAYS = (0.03, 0.1)


def train_arm(store: Path, base: dict, over: dict, run_dir: Path) -> float:
    """Test AUROC (mean over tasks) at the weight decay best on validation."""
    best = None
    for wd in WEIGHT_DECAYS:
        cfg = RunConfig.model_validate(base).with_overrides(
            {"data.path": str(store), "tracking.enabled": False, "optim.weight_decay": wd,
             "train.out_dir": str(run_dir.parent), **over})
        res = execute(RunRequest(cfg, run_dir.with_name(f"{run_dir.name}-wd{wd}"), progress=False))
        if best is None or res.best_val_auroc > best[0]:
            best = (res.best_val_auroc, float(res.test_summary["test/auroc_mean"]))
    return best[1]


def probe(store: Path, base: dict, every: int, run_dir: Path, threads: int = 1, seed: int = 0) -> dict:
    """Train the probe measuring affinity; its groups by both methods, their ARI against the truth and
    stability, the probe's certificate and validation AUROC, and the clusters' ARI by stage."""
    cfg = RunConfig.model_validate(base).with_overrides(
        {"data.path": str(store), "tracking.enabled": False, "train.affinity_every": every,
         "train.num_threads": threads, "train.seed": seed, "train.out_dir": str(run_dir.parent)})
    t0 = time.time()
    req, tr = prepare(RunRequest(cfg, run_dir, threads=threads, progress=False))
    res = execute(req, tr)
    Z = tr.affinity.matrix()
    truth = truth_groups(store.parent / "truth.json", tr.tasks)
    k = int(truth.max()) + 1
    within, between = within_between(Z, truth)
    sums = np.stack([x for _, _, x, _ in tr.affinity.stages]).astype(np.float64)
    counts = np.stack([c for _, _, _, c in tr.affinity.stages]).astype(np.float64)
    out = {"val_auroc": res.best_val_auroc, "converged": bool(res.convergence and res.convergence.converged),
           "best_epoch": res.best_epoch, "epochs": res.epochs_run, "probes": tr.affinity.probes,
           "within_minus_between": within - between, "seconds": time.time() - t0,
           "by_stage": [(a, b, adjusted_rand(truth, cluster(mean_affinity(x, c), k))) for a, b, x, c in tr.affinity.stages]}
    # Clusters of -Z: groups of tasks whose steps raise each other's loss (interference), not lower it.
    out["ari_interference"] = adjusted_rand(truth, cluster(-Z, k))
    for name, labels, tag in (("clusters", cluster(Z, k), False), ("tag", select_groups(Z, k), True)):
        out[name] = labels
        out[f"ari_{name}"] = adjusted_rand(truth, labels)
        out[f"stability_{name}"] = float(stability(sums, counts, labels, k, tag=tag, n=100)[0].mean())
    return out


def one_data_set(job: tuple) -> tuple[dict, list[dict]]:
    regime, seed, knobs, ws, base, a, first = job
    store = ensure_data(ws, regime, knobs, seed)
    run = ws / "runs" / f"{regime}-seed{seed}"
    r = {"regime": regime, "seed": seed, **probe(store, base, a.every, run)}
    print(f"{regime} seed {seed}: probe val AUROC {r['val_auroc']:.3f} ({'converged' if r['converged'] else 'NOT converged'}"
          f", best epoch {r['best_epoch']} of {r['epochs']}); ARI clusters {r['ari_clusters']:.3f}, TAG "
          f"{r['ari_tag']:.3f}; {r['seconds']:.0f} s", flush=True)
    if first:       # the same data and probe with 2 threads, and with another training seed
        for what, kw in (("threads", {"threads": 2}), ("train_seed", {"seed": 1})):
            other = probe(store, base, a.every, ws / "runs" / f"{regime}-seed{seed}-{what}", **kw)
            r[f"agree_{what}"] = {m: adjusted_rand(r[m], other[m]) for m in ("clusters", "tag")}
            r[f"ari_{what}"] = {m: other[f"ari_{m}"] for m in ("clusters", "tag")}
    arm_rows = []
    arm_seeds = [int(x) for x in a.arm_seeds.split(",")] if getattr(a, "arm_seeds", None) else None
    for arm, over in (ARMS.items() if a.arms and (arm_seeds is None or seed in arm_seeds) else ()):
        if arm in PROBED_ARMS:
            over = {**over, "model.sharing.affinity": str(run)}
        auc = train_arm(store, base, over, ws / "arms" / f"{regime}-seed{seed}-{arm}")
        arm_rows.append({"regime": regime, "seed": seed, "arm": arm, "test_auroc": auc})
        print(f"  {regime} seed {seed} {arm}: test AUROC {auc:.4f}", flush=True)
    return r, arm_rows


def _ms(values) -> str:
    v = np.asarray(list(values), dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def report(rows: list[dict], arm_rows: list[dict], regimes: list[str], every: int) -> list[str]:
    lines = [f"The probe: the ground-truth study's hard model on its motif-sized trunk (base.yaml, adam lr 0.005, "
             f"weight decay 0.1, early stopping after 10 epochs without validation gain), affinity measured every "
             f"{every} steps over its whole run; groups: the truth's number (4). ARI: adjusted Rand index against the "
             "planted groups; stability: mean ARI of the groups of 100 resamples of the measurement's epochs with "
             "the groups shown; within − between: mean symmetrized affinity within minus between the planted "
             "groups. `python -m mtlsweep.studies.affinity_groups`.", "",
             "| regime | data seed | probe val AUROC | probe converged (best epoch / run) | ARI clusters | "
             "ARI TAG | ARI clusters of −Z | stability clusters | stability TAG | within − between |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['regime']} | {r['seed']} | {r['val_auroc']:.3f} | {'yes' if r['converged'] else 'no'} "
                     f"({r['best_epoch']}/{r['epochs']}) | {r['ari_clusters']:.3f} | {r['ari_tag']:.3f} | "
                     f"{r['ari_interference']:.3f} | "
                     f"{r['stability_clusters']:.3f} | {r['stability_tag']:.3f} | {r['within_minus_between']:+.4f} |")
    for regime in regimes:
        rs = [r for r in rows if r["regime"] == regime]
        lines.append(f"| {regime} | mean ± sd ({len(rs)}) | {_ms(r['val_auroc'] for r in rs)} | "
                     f"{sum(r['converged'] for r in rs)}/{len(rs)} | {_ms(r['ari_clusters'] for r in rs)} | "
                     f"{_ms(r['ari_tag'] for r in rs)} | {_ms(r['ari_interference'] for r in rs)} | "
                     f"{_ms(r['stability_clusters'] for r in rs)} | "
                     f"{_ms(r['stability_tag'] for r in rs)} | {_ms(r['within_minus_between'] for r in rs)} |")
    firsts = [r for r in rows if "agree_threads" in r]
    if firsts:
        lines += ["", "The first data seed's probe again, with 2 threads instead of 1 and with training seed 1 instead "
                  "of 0: ARI between its groups and the first probe's (1 = the same partition), and its own ARI "
                  "against the truth.", "",
                  "| regime | changed | agreement, clusters | agreement, TAG | its ARI clusters | its ARI TAG |",
                  "|---|---|---|---|---|---|"]
        for r in firsts:
            for what, label in (("threads", "2 threads"), ("train_seed", "training seed 1")):
                ag, ar = r[f"agree_{what}"], r[f"ari_{what}"]
                lines.append(f"| {r['regime']} | {label} | {ag['clusters']:.3f} | {ag['tag']:.3f} | "
                             f"{ar['clusters']:.3f} | {ar['tag']:.3f} |")
        lines += ["", "ARI of each stage's clusters against the truth, first data seed (epochs: ARI):", ""]
        for r in firsts:
            lines.append(f"- {r['regime']}: " + ", ".join(f"{a}–{b}: {ari:.2f}" if a != b else f"{a}: {ari:.2f}"
                                                       for a, b, ari in r["by_stage"]))
    if arm_rows:
        lines += ["", "Arms (towers, hard, and a hard model per group at the towers' size with groups from the truth, "
                  "the probe's clusters and TAG's selection), each at the weight decay of {0.03, 0.1} best on "
                  "validation: test AUROC, mean ± sd over data seeds.", "", "| regime | arm | test AUROC |", "|---|---|---|"]
        for regime in regimes:
            for arm in ARMS:
                v = [x["test_auroc"] for x in arm_rows if x["regime"] == regime and x["arm"] == arm]
                if v:
                    lines.append(f"| {regime} | {arm} | {_ms(v)} |")
    return lines


def reread(ws: Path, regimes: list[str], seeds: list[int]) -> list[str]:
    """From the probes already trained in ``ws``: the ARI against the truth of the clusters of -Z."""
    lines = ["| regime | data seed | ARI clusters of −Z |", "|---|---|---|"]
    for regime in regimes:
        for seed in seeds:
            tasks, Z, _ = read_affinity(ws / "runs" / f"{regime}-seed{seed}" / "mlflow_artifacts" / "affinity.json")
            truth = truth_groups(ws / "data" / regime / f"seed{seed}" / "truth.json", tasks)
            lines.append(f"| {regime} | {seed} | {adjusted_rand(truth, cluster(-Z, int(truth.max()) + 1)):.3f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default="workspace/affinity_study")
    ap.add_argument("--every", type=int, default=5, help="train.affinity_every of the probe (steps)")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="data seeds")
    ap.add_argument("--regimes", default="related,unrelated")
    ap.add_argument("--out", default="docs/results/affinity-groups.md")
    ap.add_argument("--arms", action="store_true", help="also train the towers, hard and the group-wise arms")
    ap.add_argument("--arm-seeds", help="with --arms: only on these data seeds (default: every one)")
    ap.add_argument("--jobs", type=int, default=1, help="data sets at once (each on one thread)")
    ap.add_argument("--reread", action="store_true", help="train nothing: the ARI of the clusters of -Z of the "
                    "probes already in --workspace")
    a = ap.parse_args(argv)
    design = load_design(SPACES / "regimes.yaml", SPACES / "variants.yaml")
    seeds = [int(s) for s in a.seeds.split(",")]
    regimes = a.regimes.split(",")
    base = yaml.safe_load((SPACES / "base.yaml").read_text())
    ws = Path(a.workspace)
    if a.reread:
        print("\n".join(reread(ws, regimes, seeds)))
        return 0
    jobs = [(regime, seed, design.regimes[regime], ws, base, a, i == 0) for regime in regimes
            for i, seed in enumerate(seeds)]
    t0 = time.time()
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            results = list(pool.map(one_data_set, jobs))
    else:
        results = [one_data_set(j) for j in jobs]
    print(f"{len(jobs)} data sets in {(time.time() - t0) / 60:.1f} min", flush=True)
    lines = report([r for r, _ in results], [x for _, xs in results for x in xs], regimes, a.every)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
