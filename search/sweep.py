"""The sweep's entry script. The same arguments work with

    ray submit search/clusters/aws-gpu.yaml search/sweep.py -- --address auto --base B.yaml --space S.yaml
    ray job submit --working-dir . -- python -m mtlsweep.search.sweep --base B.yaml --space S.yaml
    python -m mtlsweep.search.sweep --base B.yaml --space S.yaml      (embedded Ray on this machine)

Under `ray submit` this file runs alone as ~/sweep.py, so it only imports the installed
project (the cluster YAML installs it on every node).
"""
from __future__ import annotations

import argparse
import sys

from mtlsweep.config.errors import guarded


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base config YAML (every trial starts from it)")
    p.add_argument("--space", required=True, help="search space YAML (dotted keys -> distributions)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="trials to run (default 12); for a grid space (variants/grid), repeats of the grid (default 1)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractional GPUs share one device")
    p.add_argument("--scheduler", choices=["asha", "none", "pbt", "pb2"], default="asha",
                   help="asha: early stopping within each family; none: every trial to its end; pbt/pb2: a "
                        "population (--num-samples trials) whose schedule (the space's optim.lr, optim.weight_decay, "
                        "schedule.task_weights) is mutated from the better trials' checkpoints as it trains")
    p.add_argument("--perturbation-interval", type=int, default=2,
                   help="pbt/pb2: epochs between two perturbations of the population")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--objective", default="val/auroc_mean",
                   help="val/auroc_mean | val/auprc_mean | val/delta_auroc_mean | multi (AUROC up, epoch time down)")
    p.add_argument("--objectives", metavar="NAMES",
                   help="several objectives, comma-separated, searched with Optuna's multi-objective TPE (the "
                        "result is a Pareto front, in compare, the report and export-best --front): auroc_mean, "
                        "auroc_median, auroc_worst, auprc_mean, delta_auroc_mean, delta_auroc_worst (max) and "
                        "epoch_s (min); e.g. auroc_mean,auroc_worst,epoch_s (replaces --objective)")
    # No default here: the parser is built for every `mtlsweep --help`, and the default lives with
    # the statistics (training.metrics, numpy); SweepArgs takes it.
    p.add_argument("--worst", metavar="{min,p5,p10,p25}",
                   help="what auroc_worst and delta_auroc_worst take over tasks: min (the worst task) or a low "
                        "percentile, linearly interpolated (default p10, the 10th: at 164 tasks one task's minimum "
                        "is mostly that task's noise)")
    p.add_argument("--constraint-delta", type=float, metavar="DELTA",
                   help="every task must keep validation AUROC >= its single-task baseline's - DELTA: an Optuna "
                        "constraint (infeasible trials rank below feasible ones) and never on the Pareto front")
    p.add_argument("--name", help="sweep name (rerun with the same name to resume it)")
    p.add_argument("--storage", help="Ray Tune storage path: local, NFS or s3:// (default workspace/ray_results)")
    p.add_argument("--resume", action="store_true", help="continue the sweep called --name")
    p.add_argument("--address", help="Ray cluster to attach to: ADDR or auto (default: an embedded cluster of this "
                   "process; RAY_ADDRESS also names one)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: config, MLFLOW_TRACKING_URI, local SQLite)")
    p.add_argument("--workspace", default="workspace", help="local state: baselines, sweep state, default storage")
    p.add_argument("--seed", type=int, default=0, help="Optuna sampler seed")
    p.add_argument("--baseline-seeds", type=int, nargs="*", default=[], help="train baselines for these seeds")
    p.add_argument("--baseline", choices=["tuned", "fixed"], default="tuned",
                   help="tuned: the single-task baseline gets its own search over the space's optimizer and "
                        "regularization keys (a grid's tune: values), with as many trials as each family; "
                        "fixed: the base config's setting")
    p.add_argument("--baseline-trials", type=int, help="trials of the tuned baseline's search (default: as each family)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial from its checkpoint")
    p.add_argument("--references", default="", metavar="FAMILIES",
                   help="reference families fitted once per data set beside the trials and compared with the same "
                        "baseline: motif_gbm, kmer_linear (comma-separated)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    p.add_argument("--verbose", type=int, nargs="?", const=2, choices=[0, 1, 2, 3], default=1, metavar="{0,1,2,3}",
                   help="0: the sweep's own lines; 1 (default): its live view, Ray, Tune, Optuna and MLflow in "
                        "<workspace>/logs/<sweep>.log; 2 (--verbose alone): those libraries and Tune's status "
                        "tables on the terminal; 3: also Ray's per-checkpoint lines")


# The driver (Ray, MLflow, torch) is imported inside the functions that run a sweep: the CLI builds
# this module's parser for every `mtlsweep --help`.
def args_from_namespace(ns):
    from mtlsweep.search.driver import SweepArgs
    from mtlsweep.search.references import parse_references
    return SweepArgs(base=ns.base, space=ns.space, num_samples=ns.num_samples, max_concurrent=ns.max_concurrent,
                     cpus_per_trial=ns.cpus_per_trial, gpus_per_trial=ns.gpus_per_trial, scheduler=ns.scheduler,
                     grace_period=ns.grace_period, perturbation_interval=ns.perturbation_interval, objective=ns.objective,
                     objectives=ns.objectives, constraint_delta=ns.constraint_delta,
                     **({"worst": ns.worst} if ns.worst else {}),
                     name=ns.name, storage=ns.storage,
                     resume=ns.resume, address=ns.address, tracking_uri=ns.tracking_uri, workspace=ns.workspace,
                     seed=ns.seed, baseline_seeds=ns.baseline_seeds, baseline=ns.baseline,
                     baseline_trials=ns.baseline_trials, max_failures=ns.max_failures,
                     references=parse_references(ns.references), overrides=ns.set, verbose=ns.verbose)


def run(ns) -> int:
    from mtlsweep.search.driver import run_sweep
    result = run_sweep(args_from_namespace(ns))
    print(f"sweep {result.name}: {result.n_trials} trials ({result.n_errors} failed); "
          f"MLflow parent run {result.parent_run_id}; Ray results in {result.storage}")
    return 0 if result.n_errors == 0 else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mtlsweep.search.sweep", description="Run an mtlsweep sweep on Ray Tune.")
    add_arguments(p)
    ns = p.parse_args(argv)
    return guarded(run, ns)


if __name__ == "__main__":
    sys.exit(main())
