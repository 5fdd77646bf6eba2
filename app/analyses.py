"""The analysis commands (`mtlsweep similarity`, `motifs`, `cost`): their flags, and the MLflow
run lookup and analysis-run logging that mtlsweep.analysis leaves to its caller."""
from __future__ import annotations

import numpy as np

from mtlsweep.analysis import cost_scaling, filter_motifs, similarity
from mtlsweep.data.errors import DataError
from mtlsweep.mlflow_server.analysis_runs import locator, publisher


def _hooks(args) -> dict:
    """MLflow run ids are found at --tracking-uri (or the default store); the analysis is logged
    as a run there only when --tracking-uri is given."""
    return {"locate": locator(args.tracking_uri), "publish": publisher(args.tracking_uri, args.experiment)}


def add_tracking_arguments(p) -> None:
    p.add_argument("--tracking-uri", help="also log the analysis as an MLflow run (role=analysis) here")
    p.add_argument("--experiment", default="mtlsweep", help="MLflow experiment of the analysis run")


def add_similarity_arguments(p) -> None:
    p.add_argument("run_a", help="run directory (best.pt, config.yaml) or MLflow run id")
    p.add_argument("run_b", help="run directory or MLflow run id")
    p.add_argument("--layers", help="comma-separated trunk layers (default: all, e.g. conv1,conv2,...,fc2)")
    p.add_argument("--tasks", help="comma-separated tasks (names or indices) whose tower layers are compared "
                                   f"(default: the first {similarity.DEFAULT_TOWER_TASKS} tasks of both runs)")
    p.add_argument("--probe", type=int, default=2000, help="probe sequences drawn from the split")
    p.add_argument("--batch", type=int, default=256, help="minibatch size of the unbiased CKA estimate")
    p.add_argument("--split", default="valid", help="split the probe comes from")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe draw")
    p.add_argument("--data", help="data file for the probe (default: run A's data.path)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="workspace/analysis/similarity", help="output directory (cka.csv, cka.png)")
    add_tracking_arguments(p)


def run_similarity(args) -> int:
    res = similarity.similarity(args.run_a, args.run_b, layers=similarity._parse_list(args.layers), tasks=similarity._parse_list(args.tasks),
                     probe=args.probe, batch=args.batch, split=args.split, seed=args.seed, data=args.data,
                     device=args.device, out=args.out, **_hooks(args))
    width = max(len(r) for r in res.rows)
    shared_cols = [j for j, c in enumerate(res.cols) if "/" not in c] or list(range(len(res.cols)))
    print(f"linear CKA on {res.probe_n} probe sequences (rows: run A, columns: run B)")
    cw = max(8, *(len(res.cols[j]) for j in shared_cols))
    print(" " * width + "  " + "  ".join(f"{res.cols[j]:>{cw}}" for j in shared_cols))
    for name, row in zip(res.rows, res.matrix):
        print(f"{name:<{width}}  " + "  ".join(f"{'n/a':>{cw}}" if not np.isfinite(row[j]) else f"{row[j]:{cw}.3f}"
                                              for j in shared_cols))
    for p in res.files:
        print(f"written: {p}")
    if res.mlflow_run_id:
        print(f"MLflow analysis run {res.mlflow_run_id} in experiment {args.experiment!r}")
    return 0


def add_motif_arguments(p) -> None:
    p.add_argument("run", help="run directory (best.pt, config.yaml) or MLflow run id")
    p.add_argument("--probe", type=int, default=2000, help="probe sequences (Basset used the test set)")
    p.add_argument("--split", default="valid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="data file for the probe (default: the run's data.path)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threshold", type=float, default=0.5, help="site cut-off, fraction of each filter's maximum")
    p.add_argument("--shuffles", type=int, default=200, help="column shuffles per filter for the null")
    p.add_argument("--alpha", type=float, default=0.01, help="a filter matches a known motif at p below this")
    p.add_argument("--min-overlap", type=int, default=5)
    p.add_argument("--top-k", type=int, default=3, help="matches kept per filter (and counted for recall)")
    p.add_argument("--truth", help="synthetic benchmark truth.json: report recall of the planted motifs")
    p.add_argument("--collection", default="CORE")
    p.add_argument("--tax-group", default="vertebrates")
    p.add_argument("--release", help="JASPAR release (default: the newest offline one)")
    p.add_argument("--logos", type=int, default=12, help="filters drawn as sequence logos")
    p.add_argument("--out", default="workspace/analysis/motifs")
    add_tracking_arguments(p)


def run_motifs(args) -> int:
    rep = filter_motifs.analyze(args.run, probe=args.probe, split=args.split, seed=args.seed, data=args.data, batch=args.batch,
                  device=args.device, threshold=args.threshold, shuffles=args.shuffles, alpha=args.alpha,
                  min_overlap=args.min_overlap, top_k=args.top_k, truth=args.truth, collection=args.collection,
                  tax_group=args.tax_group, release=args.release, logos=args.logos, out=args.out,
                  **_hooks(args))
    print(f"{len(rep.results)} first-layer filters, {rep.n_tested} informative; {rep.n_matched} match a JASPAR "
          f"motif at database-wide p < {rep.alpha} ({rep.fraction_matched:.1%}; "
          f"{rep.n_tested * rep.alpha:.1f} expected by chance)")
    for r in [r for r in filter_motifs.ranked(rep.results) if r.significant(rep.alpha)][:10]:
        m = r.matches[0]
        print(f"  {r.name:>10}  {m.matrix_id:<10} {m.name:<14} score {m.score:6.2f}  p {m.p:.3g}  "
              f"database p {r.p_db:.3g}  ({r.n_sites} sites, {r.ic:.1f} bits)")
    if rep.recall:
        rc = rep.recall
        print(f"planted motifs recovered: {len(rc['recovered'])}/{len(rc['planted'])} (recall {rc['recall']:.2f}); "
              f"missed: {', '.join(rc['missed']) or 'none'}; decoys matched: {', '.join(rc['decoys_matched']) or 'none'}")
    for p in rep.files:
        print(f"written: {p}")
    if rep.mlflow_run_id:
        print(f"MLflow analysis run {rep.mlflow_run_id} in experiment {args.experiment!r}")
    return 0


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DataError(f"--tasks: expected comma-separated integers like 1,2,4,8, got {text!r}") from None


def add_cost_arguments(p) -> None:
    p.add_argument("--tasks", default="1,2,4,8,16,32", help="task counts T, comma-separated")
    p.add_argument("--families", default="single,hard,soft", help=f"comma-separated, from {', '.join(cost_scaling.FAMILIES)}")
    p.add_argument("--arch", default="small", choices=sorted(cost_scaling.ARCHS))
    p.add_argument("--width", type=float, default=1.0, help="tower width scale of single/soft (hard: 1)")
    p.add_argument("--soft-coupling", default="l2", choices=["l2", "trace_norm", "cross_stitch"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads per measurement (default: torch's own choice)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=600)
    p.add_argument("--epoch-seqs", type=int, default=100_000, help="training sequences in the epoch estimate")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster; peak memory less exact) instead of one subprocess each")
    p.add_argument("--out", default="workspace/analysis/cost")
    add_tracking_arguments(p)


def run_cost(args) -> int:
    fams = [f.strip() for f in args.families.split(",") if f.strip()]
    study = cost_scaling.cost_scaling(_ints(args.tasks), fams, arch=args.arch, steps=args.steps, warmup=args.warmup,
                         batch=args.batch, seq_len=args.seq_len, device=args.device, epoch_seqs=args.epoch_seqs,
                         width=args.width, soft_coupling=args.soft_coupling, isolate=not args.in_process,
                         threads=args.threads,
                         out=args.out, publish=_hooks(args)["publish"])
    print(f"{'family':<7} {'T':>4} {'s/step':>9} {'seq/s':>9} {'epoch s':>9} {'mem MiB':>8} {'params':>11} {'MFLOPs':>9}")
    for p in study.points:
        print(f"{p.family:<7} {p.n_tasks:>4} {p.time_per_step_s:9.4f} {p.samples_per_s:9.0f} {p.epoch_s:9.1f} "
              f"{p.mem_mb:8.0f} {p.n_params:11,d} {p.flops_per_sample / 1e6:9.2f}")
    for fam, e in study.exponents.items():
        print(f"growth exponent in T, {fam}: time {e['time_per_step_s']:.2f}, memory {e['mem_mb']:.2f}, "
              f"params {e['n_params']:.2f}, FLOPs {e['flops_per_sample']:.2f}")
    for f in study.files:
        print(f"written: {f}")
    if study.mlflow_run_id:
        print(f"MLflow analysis run {study.mlflow_run_id} in experiment {args.experiment!r}")
    return 0


def add_affinity_arguments(p) -> None:
    p.add_argument("run", help="run directory trained with train.affinity_every, or its MLflow run id")
    p.add_argument("--groups", type=int, help="number of task groups (default: the truth's, else the best "
                                              "silhouette over 2..8)")
    p.add_argument("--truth", help="synthetic benchmark truth.json: adjusted Rand index against its groups")
    p.add_argument("--tracking-uri", help="where to look up an MLflow run id (default: the local store)")


def run_affinity(args) -> int:
    from pathlib import Path

    from mtlsweep.analysis.task_groups import describe_groups
    run = Path(args.run)
    if not run.is_dir():
        if "/" in args.run or run.suffix:
            raise DataError(f"{args.run}: no such run directory")
        run, _ = locator(args.tracking_uri)(args.run)
    print(describe_groups(run, args.groups, args.truth))
    return 0
