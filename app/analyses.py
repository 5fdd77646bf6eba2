"""The analysis commands (`mtlsweep similarity`, `motifs`, `cost`, `affinity`) run: the MLflow run
lookup and analysis-run logging that mtlsweep.analysis leaves to its caller (their flags:
app/analysis_flags.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlsweep.analysis import cost_scaling, filter_motifs, similarity
from mtlsweep.analysis.task_groups import describe_groups
from mtlsweep.data.errors import DataError
from mtlsweep.mlflow_server.analysis_runs import locator, publisher


def _hooks(args) -> dict:
    """MLflow run ids are found at --tracking-uri (or the default store); the analysis is logged
    as a run there only when --tracking-uri is given."""
    return {"locate": locator(args.tracking_uri), "publish": publisher(args.tracking_uri, args.experiment)}


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


def run_affinity(args) -> int:
    run = Path(args.run)
    if not run.is_dir():
        if "/" in args.run or run.suffix:
            raise DataError(f"{args.run}: no such run directory")
        run, _ = locator(args.tracking_uri)(args.run)
    print(describe_groups(run, args.groups, args.truth))
    return 0
