"""A schedule searched as the model trains (PBT) against the best fixed schedule of the same compute.

    python -m mtlsweep.studies.population_vs_fixed                     # embedded Ray, 3 data seeds
    python -m mtlsweep.studies.population_vs_fixed --page docs/results/schedules-optimizers.md

On the ground-truth study's related benchmark (search/spaces/ground_truth: 16 tasks in 4 groups,
motif trunk, hard sharing) and each of its data seeds, three sweeps of ``--trials`` trials of at
most ``--epochs`` epochs each (early stopping on validation as in the study):

- ``fixed``: Optuna's TPE over the learning rate and weight decay, the plain sum of task losses,
  fixed for the whole run (the tuned plain sum);
- ``pbt_lr``: a PBT population of as many members over the same two ranges, mutated every
  ``--interval`` epochs (a learning-rate and decay schedule);
- ``pbt_weights``: the same, and one loss weight per task in [0.25, 4] (a task-weight schedule);
- ``plateau``: as ``fixed``, the rate cut to a fifth after 3 epochs without a validation gain
  (``optim.lr_schedule: plateau``): the control that tells a searched schedule from a rate that
  merely decays.

Every sweep tunes the single-task towers alike (their own search, as many trials); the three arms
with a constant rate share theirs, ``plateau``'s towers have its schedule too. Each arm is judged
by its trial best on validation, trained on until it converged when the epoch cap stopped it (as
the ground-truth study does): its test AUROC, its Δ against the towers and, paired by data seed,
against the fixed schedule, its certificates (converged; a value at the edge of its range is
flagged), its train − validation gap, and the epochs the sweep trained in all (its compute, the
finishing included). Mean ± sd over data seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import yaml
from mlflow.tracking import MlflowClient

from mtlsweep.app.docs import replace_section
from mtlsweep.config.errors import ConfigError
from mtlsweep.mlflow_server.compare import collect
from mtlsweep.mlflow_server.server import check_reachable, resolve_tracking_uri
from mtlsweep.search.driver import SweepArgs, run_sweep
from mtlsweep.search.finish import finish_until_converged
from mtlsweep.search.population import exploits
from mtlsweep.studies.ground_truth import STUDY, ensure_data, load_design

EXPERIMENT = "mtlsweep-population"
RANGES = {"optim.lr": {"type": "loguniform", "low": 1.0e-3, "high": 3.0e-2},
          "optim.weight_decay": {"type": "loguniform", "low": 1.0e-2, "high": 1.0}}
# arm -> (scheduler, space, config overrides of every trial and of its towers)
ARMS = {
    "fixed": ("none", RANGES, {}),
    "pbt_lr": ("pbt", RANGES, {}),
    "pbt_weights": ("pbt", {**RANGES, "schedule.task_weights": {"type": "loguniform", "low": 0.25, "high": 4.0}}, {}),
    # The control for pbt_lr: a rate cut when validation stalls, searched by Optuna over the same ranges.
    "plateau": ("none", RANGES, {"optim.lr_schedule": "plateau", "optim.lr_patience": 3, "optim.lr_factor": 0.2}),
}
SECTION = "population"


def chosen(client, sweep: str, experiment: str = EXPERIMENT) -> list:
    """The sweep's trial best on validation (completed trials only), as a one-row list."""
    done = [r for r in collect(client, experiment, sweep)
            if r.role == "trial" and r.completed and math.isfinite(r.m("best/val/auroc_mean"))]
    return [max(done, key=lambda r: r.m("best/val/auroc_mean"))] if done else []


def arm_result(client, experiment: str, sweep: str) -> dict:
    """The sweep's trial best on validation (completed trials only), with its certificates, and
    the epochs every trial of the sweep trained."""
    rows = [r for r in collect(client, experiment, sweep) if r.role == "trial"]
    epochs = sum(len(client.get_metric_history(r.run_id, "val/auroc_mean")) for r in rows)
    picked = chosen(client, sweep, experiment)
    if not picked:
        return {"sweep": sweep, "epochs": epochs, "best": None}
    best = picked[0]
    ok, why = best.certificate()
    return {"sweep": sweep, "epochs": epochs, "best": best.name, "val": best.m("best/val/auroc_mean"),
            "test": best.m("test/auroc_mean"), "delta_test": best.m("test/delta_auroc_mean"),
            "gap": best.m("best/gap/auroc"), "certified": ok, "why": why, "copies": len(exploits(best.tags)),
            "best_epoch": best.m("best/epoch"), "trials": len(rows)}


def _finished(client, sweep: str) -> bool:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], max_results=1,
                              filter_string=f"tags.role = 'sweep' and tags.sweep = '{sweep}'")
    return bool(runs) and runs[0].info.status == "FINISHED"


def _mean_sd(xs, digits: int = 3) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "–"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def markdown(results: dict[str, list[dict]], towers: list[float], oracle: list[float], trials: int, epochs: int,
             interval: int) -> str:
    """The comparison's table: each arm's trial best on validation, mean ± sd over data seeds, and
    each population's paired difference to the fixed schedule on the same seeds."""
    lines = [f"Related benchmark (16 tasks, 4 groups), hard sharing on the motif trunk, the same model in every "
             f"arm; per arm {trials} trials of at most {epochs} epochs (early stopping as in the ground-truth "
             f"study); PBT perturbs every {interval} epochs. Test AUROC of the trial best on validation, mean ± sd "
             f"over {len(towers)} data seed(s); the towers are each seed's tuned single-task baseline; the ceiling "
             f"is the generator's oracle, {_mean_sd(oracle)}. Gap: train − validation AUROC at the best epoch."
             + (" Δ vs towers is against the towers of the arm's own rate schedule (plateau's are tuned with it)."
                if any(ARMS.get(arm, ("", {}, {}))[2] for arm in results) else ""), "",
             "| arm | test AUROC | Δ vs towers | Δ vs fixed (paired) | best epoch | gap | certified "
             "| epochs trained (all trials) | copies made by the best |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| towers (tuned) | {_mean_sd(towers)} | – | – | – | – | – | – | – |"]
    fixed = {r["sweep"].rsplit("-seed", 1)[-1]: r for r in results.get("fixed", []) if r["best"]}
    for arm, res in results.items():
        got = [r for r in res if r["best"]]
        cert = sum(r["certified"] for r in got)
        paired = "–" if arm == "fixed" else _mean_sd(
            [r["test"] - fixed[s]["test"] for r in got if (s := r["sweep"].rsplit("-seed", 1)[-1]) in fixed])
        lines.append(f"| {arm} | {_mean_sd([r['test'] for r in got])} | {_mean_sd([r['delta_test'] for r in got])} | "
                     f"{paired} | {_mean_sd([r['best_epoch'] for r in got], 0)} | {_mean_sd([r['gap'] for r in got])} | "
                     f"{cert} of {len(res)} | {_mean_sd([r['epochs'] for r in res], 0)} | "
                     f"{_mean_sd([r['copies'] for r in got], 1)} |")
    why = sorted({f"{arm} ({r['sweep']}): {r['why']}" for arm, res in results.items() for r in res
                  if r["best"] and not r["certified"]})
    if why:
        lines += ["", "Not certified (shown, not ranked):", "", *[f"- {w}" for w in why]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", default="workspace/population")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=8, help="trials per arm (a population's size)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--interval", type=int, default=4, help="PBT: epochs between perturbations")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--page", help="a markdown page to update between its population section markers")
    a = ap.parse_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    for x in arms:
        if x not in ARMS:
            raise ConfigError(f"--arms {x!r}: not an arm (arms: {', '.join(ARMS)})")
    design = load_design(STUDY / "regimes.yaml", STUDY / "variants.yaml")
    ws = Path(a.workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(None, a.tracking_uri, default_dir=str(ws))
    check_reachable(uri)
    base = yaml.safe_load((STUDY / "base.yaml").read_text())
    base["train"].update(epochs=a.epochs, patience=a.patience, out_dir=str(ws / "runs"))
    base["tracking"]["experiment"] = EXPERIMENT
    t0 = time.time()
    results: dict[str, list[dict]] = {x: [] for x in arms}
    towers: list[float] = []
    oracle: list[float] = []
    client = MlflowClient(uri)
    for seed in a.seeds:
        store = ensure_data(ws, "related", design.regimes["related"], seed)
        (ws / f"base-seed{seed}.yaml").write_text(yaml.safe_dump({**base, "data": {**base["data"], "path": str(store)}}))
        for arm in arms:
            scheduler, space, over = ARMS[arm]
            name = f"{arm}-seed{seed}"
            (ws / f"space-{arm}.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
            state = ws / "sweeps" / f"{name}.json"
            if not _finished(client, name):       # rerunning the study resumes it: finished sweeps are reused
                run_sweep(SweepArgs(
                    base=str(ws / f"base-seed{seed}.yaml"), space=str(ws / f"space-{arm}.yaml"), name=name,
                    num_samples=a.trials, max_concurrent=a.max_concurrent, cpus_per_trial=a.cpus_per_trial,
                    scheduler=scheduler, perturbation_interval=a.interval, workspace=str(ws), tracking_uri=uri,
                    seed=seed, resume=state.is_file(), verbose=0, overrides=[f"{k}={v}" for k, v in over.items()]),
                    log=lambda line: print(line, flush=True))
            # As in the ground-truth study, the arm's chosen run is trained on until it converged, so
            # the verdict never rests on a run the epoch cap stopped (a member keeps its last schedule).
            finish_until_converged(lambda: chosen(client, name), uri, cpus=a.cpus_per_trial)
            res = arm_result(client, EXPERIMENT, name)
            results[arm].append(res)
            print(f"{name}: {res}", flush=True)
        base_rows = [r for r in collect(client, EXPERIMENT, f"{arms[0]}-seed{seed}") if r.role == "baseline"]
        if base_rows:
            towers.append(base_rows[0].m("test/auroc_mean"))
        oracle.append(json.loads((store.parent / "truth.json").read_text())["oracle"]["mean"]["test"]["auroc"])
    md = markdown(results, towers, oracle, a.trials, a.epochs, a.interval)
    md += f"\n\nRegenerated by `python -m mtlsweep.studies.population_vs_fixed` ({(time.time() - t0) / 60:.0f} min here)."
    print(md)
    out = ws / "population_vs_fixed.md"
    out.write_text(md + "\n")
    if a.page:
        p = Path(a.page)
        p.write_text(replace_section(p.read_text(), SECTION, md))
        print(f"updated {p}")
    return 0


if __name__ == "__main__":
    import sys

    from mtlsweep.config.errors import guarded
    sys.exit(guarded(main, sys.argv[1:]))
