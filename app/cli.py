"""The `mtlsweep` command line. Each command imports what it runs inside its function: building the
parser (every `--help`) imports only the light flag modules, so it stays instant."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlsweep.app.analysis_flags import (
    add_affinity_arguments,
    add_cost_arguments,
    add_motif_arguments,
    add_similarity_arguments,
)
from mtlsweep.config.errors import UserError, guarded
from mtlsweep.mlflow_server.__main__ import add_arguments as add_server_arguments
from mtlsweep.search.sweep import add_arguments as add_sweep_arguments


# ---- data ----------------------------------------------------------------------------
def cmd_data_synth(args) -> int:
    from mtlsweep.data.synthetic import spec_from_dict, write_synthetic
    knobs = {k: v for k, v in {
        "n_tasks": args.tasks, "n_groups": args.groups, "motifs_per_task": args.motifs_per_task,
        "shared_fraction": args.shared_fraction, "n_seqs": args.seqs, "seq_len": args.length,
        "gc": args.gc, "label_noise": args.label_noise, "unknown_rate": args.unknown_rate,
        "seed": args.seed}.items() if v is not None}
    from mtlsweep.config.run import parse_overrides
    knobs.update(parse_overrides(args.set))
    spec = spec_from_dict(knobs)
    paths = write_synthetic(spec, args.out, overwrite=args.force)
    for p in (paths.values() if isinstance(paths, dict) else paths):
        print(p)
    return 0


def cmd_data_build(args) -> int:
    from mtlsweep.data.signal import parse_track_arg

    def chroms(values):
        return tuple(c for v in values or () for c in v.split(",") if c)
    want = 1 if args.labels else 2
    if len(args.inputs) != want:
        usage = "FASTA (with --labels)" if args.labels else "SAMPLES FASTA (or --labels FILE FASTA)"
        raise UserError(f"data build takes {usage}; got {len(args.inputs)} argument(s): {' '.join(args.inputs)}")
    tracks = [parse_track_arg(t) for t in args.track or ()]
    common = dict(valid_chroms=chroms(args.valid_chroms), test_chroms=chroms(args.test_chroms),
                  valid_frac=args.valid_frac, test_frac=args.test_frac, seed=args.seed, on_error=args.on_error,
                  on_outside=args.on_outside, overwrite=args.force, tracks=tracks,
                  track_transform=args.track_transform, track_resolution=args.track_resolution)
    if args.labels:
        from mtlsweep.data.labels_tsv import build_from_labels, format_labels_report
        if args.negatives != "peaks" or args.merge_overlap is not None:
            flag = "--negatives" if args.negatives != "peaks" else "--merge-overlap"
            raise UserError(f"{flag} applies to peak sample sheets; a --labels file gives its own negatives")
        report = build_from_labels(args.labels, args.inputs[0], args.out, seq_len=args.length,
                                   label_map=_label_map(args.label_map), **common)
        print(format_labels_report(report))
        _warn_about_labels(Path(args.out) / "store.h5")
        return 0
    from mtlsweep.data.peaks import build_from_peaks, format_report
    result = build_from_peaks(
        args.inputs[0], args.inputs[1], args.out, seq_len=args.length or 600, merge_overlap=args.merge_overlap,
        merge_mode=args.merge_mode, negatives=args.negatives, negative_ratio=args.negative_ratio,
        max_n_fraction=args.max_n_fraction, flank_distance=args.flank_distance, min_negatives=args.min_negatives,
        **common)
    print(format_report(result.report))
    _warn_about_labels(result.store_path)
    return 0


def _warn_about_labels(store_path: Path) -> None:
    """Complementary tasks and tasks too scarce to judge, said when the store is built."""
    import warnings

    from mtlsweep.data.label_checks import file_label_warnings
    for line in file_label_warnings(store_path):
        warnings.warn(line, stacklevel=2)


def _label_map(raw):
    if raw is None:
        return None
    import json
    try:
        m = json.loads(raw)
        assert isinstance(m, dict)
        return m
    except (ValueError, AssertionError):
        raise UserError(f"--label-map {raw!r}: expected a JSON object, e.g. '{{\"U\": 0, \"A\": -1, \"B\": 1}}'") from None


def cmd_data_info(args) -> int:
    from mtlsweep.data.info import describe, format_info
    print(format_info(describe(args.file, label_map=_label_map(args.label_map))))
    return 0


def cmd_data_convert(args) -> int:
    from mtlsweep.data.store import basset_to_store
    info = basset_to_store(args.source, args.dest, chunk=args.chunk, overwrite=args.force,
                           label_map=_label_map(args.label_map))
    print(f"{info.path}: {info.n_tasks} tasks, {info.seq_len} bp, splits {info.sizes}, fingerprint {info.fingerprint[:16]}")
    return 0


# ---- train ---------------------------------------------------------------------------
def cmd_train(args) -> int:
    import dataclasses

    from mtlsweep.config.run import load_config
    from mtlsweep.mlflow_server.attach import attach, train_tracking
    from mtlsweep.mlflow_server.server import check_reachable, make_room, resolve_tracking_uri
    from mtlsweep.training.callbacks import ConsoleReporter
    from mtlsweep.training.engine import check_resume, prepare_run_dir
    from mtlsweep.training.request import RunRequest, resolve
    from mtlsweep.training.run import execute, prepare
    cfg = load_config(args.config, args.set)
    if args.tracking_uri:
        cfg = cfg.with_overrides({"tracking.enabled": True})
    uri = None
    if cfg.tracking.enabled:
        uri = resolve_tracking_uri(cfg.tracking.uri, args.tracking_uri, default_dir="workspace", create=False)
        check_reachable(uri)
    # Everything a user can get wrong is checked before a directory, a checkpoint or an MLflow run exists.
    run_dir = Path(args.resume).resolve() if args.resume else prepare_run_dir(cfg, args.name, force=args.force)
    resume = ("force" if args.force else True) if args.resume else False
    req = resolve(RunRequest(cfg, run_dir, resume=resume, progress=not args.no_progress))
    if args.resume:
        check_resume(req.cfg, run_dir, req.data.fingerprint, list(req.data.task_names), force=args.force)
    if uri:
        make_room(uri)
    tracking, baseline = train_tracking(req, uri) if uri else (None, None)
    req, prepared = prepare(dataclasses.replace(req, baseline=baseline))
    req, logger = attach(req, tracking)
    execute(req.with_callbacks(ConsoleReporter()), prepared)
    if logger is not None:
        print(f"MLflow run {logger.run_id} in experiment {cfg.tracking.experiment!r} at {logger.uri}")
        from mtlsweep.mlflow_server.runs_view import how_to_open
        print(f"runs table: {how_to_open(logger.uri, logger.experiment_id)}")
    return 0


# ---- sweeps, comparison, export, tracking --------------------------------------------
def cmd_sweep(args) -> int:
    from mtlsweep.search.sweep import run
    return run(args)


def _tracking_uri(args) -> str:
    from mtlsweep.mlflow_server.server import check_reachable, require_store, resolve_tracking_uri
    uri = resolve_tracking_uri(None, args.tracking_uri, default_dir=args.workspace, create=False)
    require_store(uri)
    check_reachable(uri)
    return uri


def _which_sweep(args, uri: str):
    """--sweep as given; else, unless --all-sweeps, the experiment's latest sweep (said on stderr)."""
    args.sweep_label = args.sweep or ("all-sweeps" if args.all_sweeps else None)
    if args.sweep or args.all_sweeps:
        return args.sweep
    from mtlsweep.mlflow_server.compare import latest_sweep
    found = latest_sweep(uri, args.experiment)
    if found is None:
        return None
    run_id, name = found
    args.sweep_label = name
    print(f"sweep {name} (parent run {run_id[:8]}), the latest of experiment {args.experiment!r}; "
          "--sweep NAME for another, --all-sweeps for every run", file=sys.stderr)
    return run_id


def cmd_compare(args) -> int:
    uri = _tracking_uri(args)
    args.sweep = _which_sweep(args, uri)
    # Where the sweep itself wrote its report: workspace/compare/<sweep>/.
    args.out = args.out or str(Path(args.workspace) / "compare" / (args.sweep_label or args.experiment))
    if args.group_by:
        return _compare_grouped(args, uri)
    from mtlsweep.mlflow_server.compare import compare
    text, _ = compare(uri, args.experiment, args.sweep, args.metric, Path(args.out), args.top,
                      objectives=args.objectives, worst=args.worst, constraint_delta=args.constraint_delta)
    print(text)
    print(f"written: {Path(args.out) / 'comparison.csv'} and {Path(args.out) / 'comparison.html'}")
    return 0


def _compare_grouped(args, uri: str) -> int:
    from mlflow.tracking import MlflowClient

    from mtlsweep.mlflow_server.compare import collect
    from mtlsweep.mlflow_server.group_compare import group_runs, render_markdown, render_text, write_csv
    runs = collect(MlflowClient(uri), args.experiment, args.sweep)
    groups = group_runs(runs, args.group_by, args.split)
    if len(groups) < 2:
        raise LookupError(f"experiment {args.experiment!r}: no finished runs tagged {args.group_by!r} to group")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(render_text(groups, f"{args.experiment}: by {args.group_by}, {args.split} AUROC vs single-task"))
    write_csv(groups, out / "comparison_groups.csv")
    (out / "comparison_groups.md").write_text(render_markdown(groups, args.split) + "\n")
    print(f"written: {out / 'comparison_groups.csv'} and {out / 'comparison_groups.md'}")
    return 0


def cmd_export(args) -> int:
    from mtlsweep.search.export import export_best
    if args.top < 1:
        raise UserError(f"--top {args.top}: must be >= 1 (how many of the best configurations to export)")
    uri = _tracking_uri(args)
    written = export_best(uri, args.experiment, args.out, sweep=_which_sweep(args, uri), metric=args.metric,
                          top=args.top, force=args.force, front=args.front, objectives=args.objectives,
                          worst=args.worst, constraint_delta=args.constraint_delta, uncertified=args.uncertified)
    for p in written:
        print(p)
    print(f"{len(written)} config(s) and {Path(args.out) / 'README.md'} (their scores); rerun one with: "
          f"mtlsweep train --config {written[0]}")
    return 0


def cmd_server(args) -> int:
    from mtlsweep.mlflow_server.__main__ import run
    return run(args)


def cmd_sync(args) -> int:
    from mtlsweep.mlflow_server.fast_logger import sync
    root = Path(args.path)
    if not root.exists():
        raise UserError(f"{root}: no such spool directory or tree")
    n = sum(sync(d, args.tracking_uri) for d in _spool_dirs(root))
    print(f"sent {n} items (metric, param and tag values, artifacts, run ends)")
    return 0


def _spool_dirs(root: Path):
    from mtlsweep.mlflow_server.fast_logger import PENDING_ARTIFACTS, PENDING_STATUS, SPOOL_FILE
    names = (SPOOL_FILE, PENDING_ARTIFACTS, PENDING_STATUS)
    if any((root / n).exists() for n in names):
        yield root
    else:
        yield from sorted({p.parent for n in names for p in root.rglob(n)})


def cmd_similarity(args) -> int:
    from mtlsweep.app.analyses import run_similarity
    return run_similarity(args)


def cmd_motifs(args) -> int:
    from mtlsweep.app.analyses import run_motifs
    return run_motifs(args)


def cmd_affinity(args) -> int:
    from mtlsweep.app.analyses import run_affinity
    return run_affinity(args)


def cmd_cost(args) -> int:
    from mtlsweep.app.analyses import run_cost
    return run_cost(args)


def cmd_docs(args) -> int:
    from mtlsweep.app.docs import update_docs
    done = update_docs(Path(args.docs), Path(args.demo_workspace) if args.demo_workspace else None)
    print(f"{args.docs}: regenerated {', '.join(done)}")
    return 0


# ---- demo ----------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from mtlsweep.app.demo import run_demo
    return run_demo(workspace=Path(args.workspace))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtlsweep", description="Single-task vs hard- vs soft-sharing multi-task CNNs on DNA sequence: "
        "data, training, Ray Tune sweeps and MLflow comparisons.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="datasets: synthetic benchmark, build from peaks, convert, info")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the synthetic motif benchmark (Basset HDF5 + store + truth.json)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--tasks", type=int)
    s.add_argument("--groups", type=int)
    s.add_argument("--motifs-per-task", type=int)
    s.add_argument("--shared-fraction", type=float, help="fraction of a task's motifs shared within its group")
    s.add_argument("--seqs", type=int, help="number of sequences")
    s.add_argument("--length", type=int, help="sequence length (bp)")
    s.add_argument("--gc", type=float)
    s.add_argument("--label-noise", type=float)
    s.add_argument("--unknown-rate", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                   help="any other knob of data.synthetic.SynthSpec, e.g. --set prevalence_median=0.2")
    s.add_argument("--force", action="store_true", help="overwrite existing files")
    s.set_defaults(func=cmd_data_synth)

    b = dsub.add_parser("build", help="peak BED files (Basset's preprocessing) or a labels TSV, + genome FASTA "
                        "[+ signal tracks] -> store (+ Basset HDF5 for peaks)")
    b.add_argument("inputs", nargs="+", metavar="[SAMPLES] FASTA",
                   help="sample sheet TSV (task name <TAB> BED/narrowPeak path, .gz allowed) and the genome FASTA; "
                        "with --labels only the FASTA")
    b.add_argument("--labels", metavar="FILE.tsv[.gz]",
                   help="ENCODE-DREAM label matrix: chr start stop then one U/A/B (or 0/1/NA) column per task")
    b.add_argument("--out", required=True, help="output directory (store.h5, build_report.json; basset.h5 for peaks)")
    b.add_argument("--length", type=int, default=None,
                   help="sequence length around each peak or window centre (bp; default 600 for peaks, the "
                        "rows' own width for --labels)")
    b.add_argument("--merge-overlap", type=int, default=None,
                   help="merge peaks overlapping by at least this (bp; default --length//3, Basset's 200 at 600 bp)")
    b.add_argument("--merge-mode", choices=["basset", "span"], default="basset",
                   help="basset: Basset's weighted pairwise merge; span: one peak per overlapping group")
    b.add_argument("--negatives", choices=["peaks", "background", "flank"], default="peaks",
                   help="peaks: other tasks' peaks only (Basset); background: + GC-matched genomic windows "
                        "overlapping no peak; flank: + windows --flank-distance beside each peak")
    b.add_argument("--negative-ratio", type=float, default=1.0, help="added negatives per positive window")
    b.add_argument("--min-negatives", type=float, default=0.9, metavar="FRACTION",
                   help="fewest negatives accepted, as a fraction of those requested (default 0.9; fewer is an error)")
    b.add_argument("--max-n-fraction", type=float, default=0.1, help="largest fraction of N bases in a negative")
    b.add_argument("--flank-distance", type=int, default=None,
                   help="flank: bp from a peak window's centre to its flank's centre (default --length: the flank "
                        "touches the window)")
    b.add_argument("--track", action="append", metavar="NAME=FILE",
                   help="signal track (bigWig or bedGraph) as an extra input channel; repeat for more")
    b.add_argument("--track-transform", metavar="T1,T2",
                   help="applied in order: log1p, clip=HI or clip=LO:HI, zscore (train-split statistics)")
    b.add_argument("--track-resolution", type=int, default=1, help="average tracks over bins of this many bp")
    b.add_argument("--label-map", help='JSON map of --labels values, default {"U": 0, "A": -1, "B": 1} (+ 0/1/NA)')
    b.add_argument("--valid-chroms", action="append", help="held-out chromosomes for valid (repeat or comma-separate)")
    b.add_argument("--test-chroms", action="append", help="held-out chromosomes for test")
    b.add_argument("--valid-frac", type=float, default=0.1, help="random valid fraction when no chromosomes are given")
    b.add_argument("--test-frac", type=float, default=0.1)
    b.add_argument("--seed", type=int, default=0, help="random splits and negatives")
    b.add_argument("--on-error", choices=["fail", "skip"], default="fail", help="malformed lines")
    b.add_argument("--on-outside", choices=["skip", "fail"], default="skip",
                   help="peaks on unknown chromosomes or running off a chromosome end")
    b.add_argument("--force", action="store_true", help="replace existing outputs")
    b.set_defaults(func=cmd_data_build)

    i = dsub.add_parser("info", help="sizes, tasks, prevalence, unknown fraction, layout of a Basset file or store")
    i.add_argument("file")
    i.add_argument("--label-map", help='JSON map of string labels, default {"U": 0, "A": -1, "B": 1}')
    i.set_defaults(func=cmd_data_info)

    c = dsub.add_parser("convert", help="Basset HDF5 -> compact store (streaming, bounded memory)")
    c.add_argument("source")
    c.add_argument("dest")
    c.add_argument("--chunk", type=int, default=65536, help="sequences per streamed chunk (bounds memory)")
    c.add_argument("--label-map", help='JSON map of string labels (TF binding U/A/B), default {"U": 0, "A": -1, "B": 1}')
    c.add_argument("--force", action="store_true", help="replace an existing store")
    c.set_defaults(func=cmd_data_convert)

    t = sub.add_parser("train", help="train one config (no Ray)")
    t.add_argument("--config", required=True)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set model.sharing.strength=0.1")
    t.add_argument("--name", help="run directory name under train.out_dir (default: timestamp)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--force", action="store_true",
                   help="reuse an existing run directory; with --resume, evaluate a finished run again")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--tracking-uri", help="log to MLflow here (turns tracking on)")
    t.set_defaults(func=cmd_train)

    sw = sub.add_parser("sweep", help="search configurations with Optuna on Ray Tune, against single-task baselines")
    add_sweep_arguments(sw)
    sw.set_defaults(func=cmd_sweep)

    def objective_args(q, what: str):
        q.add_argument("--objectives", metavar="NAMES", help=f"{what} over these objectives (comma-separated, as "
                       "sweep --objectives takes them) instead of those the sweep recorded on its parent run")
        q.add_argument("--worst", metavar="{min,p5,p10,p25}",
                       help="auroc_worst over tasks: min or a low percentile (default: the sweep's, else p10)")
        q.add_argument("--constraint-delta", type=float, metavar="DELTA",
                       help="every task's validation AUROC >= its baseline's - DELTA to be on the front "
                            "(default: the sweep's)")

    def tracking_args(q):
        q.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else local SQLite)")
        q.add_argument("--workspace", default="workspace", help="where the local SQLite store lives")

    cp = sub.add_parser("compare", help="best run per family vs the single-task baseline: table, CSV, HTML")
    cp.add_argument("--experiment", default="mtlsweep")
    cp.add_argument("--sweep", help="a sweep's name or its MLflow parent run id (default: the latest sweep)")
    cp.add_argument("--all-sweeps", action="store_true", help="compare every run of the experiment")
    cp.add_argument("--metric", default="val/auroc_mean")
    cp.add_argument("--top", type=int, default=5, help="also list the top runs overall")
    cp.add_argument("--out", help="directory for comparison.csv and comparison.html (default: "
                    "<workspace>/compare/<sweep>, where the sweep wrote its own)")
    cp.add_argument("--group-by", metavar="TAG", help="aggregate repeated runs by this tag (grid sweeps tag `variant`): "
                    "mean ± sd over seeds of ΔAUROC and a paired Wilcoxon test over tasks × seeds")
    cp.add_argument("--split", choices=["val", "test"], default="val", help="with --group-by: which split's AUROC")
    objective_args(cp, "the Pareto front")
    tracking_args(cp)
    cp.set_defaults(func=cmd_compare)

    ex = sub.add_parser("export-best", help="write the best trials' configs as YAML that `mtlsweep train` reruns")
    ex.add_argument("--experiment", default="mtlsweep")
    ex.add_argument("--sweep", help="a sweep's name or its MLflow parent run id (default: the latest sweep)")
    ex.add_argument("--all-sweeps", action="store_true", help="the best trials of every sweep of the experiment")
    ex.add_argument("--metric", default="val/auroc_mean")
    ex.add_argument("--top", type=int, default=3)
    ex.add_argument("--out", required=True)
    ex.add_argument("--force", action="store_true", help="write into a non-empty directory")
    ex.add_argument("--front", action="store_true",
                    help="export every point of the sweep's Pareto front (its certified, feasible trials no other "
                         "beats in every objective), instead of --top by --metric")
    ex.add_argument("--uncertified", action="store_true",
                    help="with --front: also the uncertified trials no feasible trial dominates (marked so)")
    objective_args(ex, "with --front: the front")
    tracking_args(ex)
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("server", help="start/stop/status of an MLflow tracking server")
    add_server_arguments(sv)
    sv.set_defaults(func=cmd_server)

    sy = sub.add_parser("sync", help="send what runs spooled while the tracking server was away: metrics, artifacts, their end")
    sy.add_argument("path", nargs="?", default="workspace", help="a spool directory or a tree containing them")
    sy.add_argument("--tracking-uri", help="send to this server instead of the one recorded")
    sy.set_defaults(func=cmd_sync)

    q = sub.add_parser("similarity", help="linear CKA between the layers of two runs (hidden-layer similarity)")
    add_similarity_arguments(q)
    q.set_defaults(func=cmd_similarity)
    q = sub.add_parser("motifs", help="first-layer filters matched to JASPAR motifs (and planted-motif recall)")
    add_motif_arguments(q)
    q.set_defaults(func=cmd_motifs)
    q = sub.add_parser("affinity", help="task groups from a run's measured inter-task affinity (train.affinity_every): "
                       "clusters and TAG's selection, their stability, affinity by stage of training")
    add_affinity_arguments(q)
    q.set_defaults(func=cmd_affinity)
    q = sub.add_parser("cost", help="training time, memory, parameters and FLOPs as the number of tasks grows")
    add_cost_arguments(q)
    q.set_defaults(func=cmd_cost)

    rd = sub.add_parser("docs", help="regenerate the documentation site's generated blocks (config and CLI "
                        "reference, demo and study results)")
    rd.add_argument("--docs", default="docs", help="the site's source folder")
    rd.add_argument("--demo-workspace", help="also refresh the demo results from this workspace's last demo")
    rd.set_defaults(func=cmd_docs)

    m = sub.add_parser("demo", help="the main job on the embedded defaults")
    m.add_argument("--workspace", default="workspace")
    m.set_defaults(func=cmd_demo)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # A user reads what to look at, not the line of mtlsweep that noticed it.
    print(f"mtlsweep: warning: {message}", file=file or sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import warnings
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return guarded(args.func, args)
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
