"""The flags of the analysis commands (`mtlsweep similarity`, `motifs`, `cost`, `affinity`).

Kept apart from app/analyses.py, which runs them: the CLI builds every parser for `--help`, and
this module imports nothing heavy."""
from __future__ import annotations

from mtlsweep.analysis.defaults import COST_ARCHS, COST_FAMILIES, DEFAULT_TOWER_TASKS


def add_tracking_arguments(p) -> None:
    p.add_argument("--tracking-uri", help="also log the analysis as an MLflow run (role=analysis) here")
    p.add_argument("--experiment", default="mtlsweep", help="MLflow experiment of the analysis run")


def add_similarity_arguments(p) -> None:
    p.add_argument("run_a", help="run directory (best.pt, config.yaml) or MLflow run id")
    p.add_argument("run_b", help="run directory or MLflow run id")
    p.add_argument("--layers", help="comma-separated trunk layers (default: all, e.g. conv1,conv2,...,fc2)")
    p.add_argument("--tasks", help="comma-separated tasks (names or indices) whose tower layers are compared "
                                   f"(default: the first {DEFAULT_TOWER_TASKS} tasks of both runs)")
    p.add_argument("--probe", type=int, default=2000, help="probe sequences drawn from the split")
    p.add_argument("--batch", type=int, default=256, help="minibatch size of the unbiased CKA estimate")
    p.add_argument("--split", default="valid", help="split the probe comes from")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe draw")
    p.add_argument("--data", help="data file for the probe (default: run A's data.path)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="workspace/analysis/similarity", help="output directory (cka.csv, cka.png)")
    add_tracking_arguments(p)


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


def add_cost_arguments(p) -> None:
    p.add_argument("--tasks", default="1,2,4,8,16,32", help="task counts T, comma-separated")
    p.add_argument("--families", default="single,hard,soft", help=f"comma-separated, from {', '.join(COST_FAMILIES)}")
    p.add_argument("--arch", default="small", choices=sorted(COST_ARCHS))
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


def add_affinity_arguments(p) -> None:
    p.add_argument("run", help="run directory trained with train.affinity_every, or its MLflow run id")
    p.add_argument("--groups", type=int, help="number of task groups (default: the truth's, else the best "
                                              "silhouette over 2..8)")
    p.add_argument("--truth", help="synthetic benchmark truth.json: adjusted Rand index against its groups")
    p.add_argument("--tracking-uri", help="where to look up an MLflow run id (default: the local store)")
