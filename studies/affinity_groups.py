"""Does measured task affinity recover the planted task groups? (issue: which tasks should share)

    python -m mtlsweep.studies.affinity_groups [--workspace workspace/affinity_study] [--epochs 30]
        [--every 5] [--lr LR] [--seeds 0,1,2] [--arms] [--jobs 2] [--out docs/results/affinity-groups.md]

On the ground-truth study's synthetic benchmarks (search/spaces/ground_truth/regimes.yaml:
16 tasks in 4 groups; `related` shares 2 of each task's 3 motifs within its group,
`unrelated` shares none) it trains the study's hard model (base.yaml) with
train.affinity_every, clusters the measured matrix into the truth's 4 groups and reports the
adjusted Rand index against the planted groups (1 = recovered exactly, ~0 = chance), with
the mean symmetrized affinity within and between the planted groups.

With --arms it then trains, on each data set and with the ground-truth study's protocol for
every arm (base.yaml: at most 60 epochs, early stopping after 8 without validation gain;
optim.weight_decay tuned over {0.03, 0.1}, the value best on validation kept): hard (k = 5),
the towers (k = 0), and the branched trunk k = 3 with its 2 dense layers shared within groups,
the groups from truth or from the affinity just measured (auto:4), plus the k = 3 branched
trunk with per-task dense towers as the control for the extra depth of sharing: test AUROC
mean over tasks, and the share of hard's gap to the towers each arm closes. No tracking: the
runs land in the workspace; the tables go to --out.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from mtlsweep.config.run import RunConfig
from mtlsweep.studies.ground_truth import ensure_data, load_design
from mtlsweep.training.request import RunRequest
from mtlsweep.training.run import execute, prepare
from mtlsweep.training.sharing_groups import truth_groups
from mtlsweep.training.task_affinity import adjusted_rand, cluster, symmetric

SPACES = Path(__file__).resolve().parents[1] / "search" / "spaces" / "ground_truth"


ARMS = {
    "hard": {"model.sharing.shared_layers": 5},
    "towers": {"model.sharing.shared_layers": 0},
    "branched_k3": {"model.sharing.shared_layers": 3},
    "groups_truth": {"model.sharing.shared_layers": 3, "model.sharing.group_layers": 2,
                     "model.sharing.groups": "truth"},
    "groups_affinity": {"model.sharing.shared_layers": 3, "model.sharing.group_layers": 2,
                        "model.sharing.groups": "auto:4"},
}


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


def measure(store: Path, base: dict, epochs: int, every: int, lr, run_dir: Path) -> dict:
    over = {"data.path": str(store), "train.epochs": epochs, "train.patience": epochs, "tracking.enabled": False,
            "train.affinity_every": every, "train.out_dir": str(run_dir.parent)}
    if lr is not None:
        over["train.affinity_lr"] = lr
    cfg = RunConfig.model_validate(base).with_overrides(over)
    t0 = time.time()
    req, tr = prepare(RunRequest(cfg, run_dir, progress=False))
    res = execute(req, tr)
    Z = tr.affinity.matrix()
    truth = truth_groups(store.parent / "truth.json", tr.tasks)
    labels = cluster(Z, int(truth.max()) + 1)
    S = symmetric(Z)
    off = ~np.eye(len(truth), dtype=bool)
    same = (truth[:, None] == truth[None, :]) & off
    return {"ari": adjusted_rand(truth, labels), "within": float(S[same].mean()),
            "between": float(S[off & ~same].mean()), "val_auroc": res.best_val_auroc,
            "probes": tr.affinity.probes, "seconds": time.time() - t0}


def one_data_set(job: tuple) -> tuple[dict, list[dict]]:
    regime, seed, knobs, ws, base, a = job
    store = ensure_data(ws, regime, knobs, seed)
    aff_run = ws / "runs" / f"{regime}-seed{seed}"
    r = {"regime": regime, "seed": seed, **measure(store, base, a.epochs, a.every, a.lr, aff_run)}
    print(f"{regime} seed {seed}: ARI {r['ari']:.3f}, affinity within {r['within']:+.4f} between "
          f"{r['between']:+.4f}, val AUROC {r['val_auroc']:.3f}, {r['probes']} probes, {r['seconds']:.0f} s",
          flush=True)
    arm_rows = []
    for arm, over in (ARMS.items() if a.arms else ()):
        if arm == "groups_affinity":
            over = {**over, "model.sharing.affinity": str(aff_run)}
        auc = train_arm(store, base, over, ws / "arms" / f"{regime}-seed{seed}-{arm}")
        arm_rows.append({"regime": regime, "seed": seed, "arm": arm, "test_auroc": auc})
        print(f"  {regime} seed {seed} {arm}: test AUROC {auc:.4f}", flush=True)
    return r, arm_rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default="workspace/affinity_study")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the affinity-measuring run")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--lr", type=float, default=None, help="train.affinity_lr (default: the optimizer's lr)")
    ap.add_argument("--seeds", default=None, help="data seeds (default: the regimes file's)")
    ap.add_argument("--regimes", default="related,unrelated")
    ap.add_argument("--out", default="docs/results/affinity-groups.md")
    ap.add_argument("--arms", action="store_true", help="also train hard, towers and the group-wise arms")
    ap.add_argument("--jobs", type=int, default=1, help="data sets at once (each on one thread)")
    a = ap.parse_args(argv)
    design = load_design(SPACES / "regimes.yaml", SPACES / "variants.yaml")
    regimes = design.regimes
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else design.seeds
    base = yaml.safe_load((SPACES / "base.yaml").read_text())
    # This study's protocol, pinned: the deep trunk (5 layers, ARMS' k = 3 and 5), adam lr 0.005, at
    # most 60 epochs with early stopping after 8; the ground-truth study tunes and searches these.
    base["model"]["arch"] = {"preset": "deep", "dropout": 0.1}
    base["model"]["sharing"] = {"shared_layers": 5}
    base["optim"]["lr"] = 0.005
    base["train"].update(epochs=60, patience=8)
    ws = Path(a.workspace)
    jobs = [(regime, seed, regimes[regime], ws, base, a) for regime in a.regimes.split(",") for seed in seeds]
    t0 = time.time()
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            results = list(pool.map(one_data_set, jobs))
    else:
        results = [one_data_set(j) for j in jobs]
    rows = [r for r, _ in results]
    arm_rows = [x for _, xs in results for x in xs]
    print(f"{len(jobs)} data sets in {(time.time() - t0) / 60:.1f} min", flush=True)
    lines = [f"Task affinity on the synthetic benchmark (hard model of the ground-truth study, {a.epochs} epochs, "
             f"a probe every {a.every} steps, lookahead lr {a.lr if a.lr is not None else 'optim.lr'}; "
             "`python -m mtlsweep.studies.affinity_groups`).", "",
             "| regime | data seed | ARI vs planted groups | affinity within groups | between groups | val AUROC |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['regime']} | {r['seed']} | {r['ari']:.3f} | {r['within']:+.4f} | {r['between']:+.4f} "
                     f"| {r['val_auroc']:.3f} |")
    for regime in a.regimes.split(","):
        aris = [r["ari"] for r in rows if r["regime"] == regime]
        lines.append(f"| {regime} | mean ± sd | {np.mean(aris):.3f} ± {np.std(aris):.3f} | | | |")
    if arm_rows:
        lines += ["", "Arms, the ground-truth study's protocol for each (at most 60 epochs, early stopping after 8 "
                  "without validation gain, adam lr 0.005, weight decay in {0.03, 0.1} best on validation per data "
                  "set): test AUROC (mean over tasks; mean ± sd over data seeds) and the share of hard's gap to the "
                  "towers closed, (arm − hard) / (towers − hard), mean over data seeds.", "",
                  "| regime | arm | test AUROC | gap closed |", "|---|---|---|---|"]
        for regime in a.regimes.split(","):
            by = {arm: np.array([r["test_auroc"] for r in arm_rows if r["regime"] == regime and r["arm"] == arm])
                  for arm in ARMS}
            gap = by["towers"] - by["hard"]
            for arm, v in by.items():
                closed = (v - by["hard"]) / np.where(np.abs(gap) > 1e-9, gap, np.nan)
                lines.append(f"| {regime} | {arm} | {v.mean():.4f} ± {v.std():.4f} | "
                             f"{np.nanmean(closed):+.2f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
