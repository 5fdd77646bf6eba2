"""The names a run leaves behind, in one place: its MLflow tags and the files of its directory.

Every module that writes or reads them imports them from here, so a name is spelled once.
"""
from __future__ import annotations

# ---- tags --------------------------------------------------------------------------------
ROLE = "role"                            # one of the roles below
FAMILY = "family"                        # single, hard, soft, ... (identity.model_family)
ARM = "arm"                              # the family of a space's families: a trial belongs to
VARIANT = "variant"                      # the variant of a fixed design (grid sweeps)
SWEEP = "sweep"                          # the sweep's name
TRIAL_ID = "trial_id"                    # Ray Tune's trial id
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
RUN_DIR = "run_dir"                      # where the run's checkpoints and outputs are
CHECKPOINT = "checkpoint"                # its best.pt (a baseline's, for init from_single)

BASELINE_FP = "baseline_fp"              # a baseline's identity
COMPARE_FP = "compare_fp"                # the identity of the baseline a run must be compared with
COMPARE_KEY = "compare_key"              # what a run shares with its baseline (tuned keys left out)
CONFIG_FP = "config_fp"                  # a run's own identity
BASELINE_RUN = "baseline_run_id"         # the baseline a sweep's run was compared with
PROTOCOL = "baseline_protocol"           # how the baselines were set (tuned/fixed), in words
PROTOCOL_FP = "baseline_protocol_fp"

STOPPED_EARLY = "stopped_early"          # a scheduler stopped the run: never a family's best
ORPHANED = "orphaned"                    # its driver was killed before the run was recorded
STARTED_BY = "started_by"                # the sweep whose driver trained this shared baseline
INTERRUPTED = "interrupted"              # Ctrl-C or SIGTERM ended it (KILLED; --resume continues it)
ADOPTED_BY = "adopted_by"                # a restored trial took over this finished run
FIRST_TRIAL_ID = "first_trial_id"

CONVERGED = "converged"                  # yes / no: the convergence certificate
CONVERGENCE = "convergence"              # why (not), and how to finish it
RANGES = "search_ranges"                 # JSON: each tuned key's searched range
INNER_TUNING = "inner_tuning"            # JSON: what a reference family tuned inside its fit

# ---- headline metrics ------------------------------------------------------------------------
# Short copies of what a run is judged by, logged beside their long names: a runs-table column's
# header and value fit these (``best/val/auroc_`` and ``0.80141781…`` were cut at any width).
AUROC = "auroc"                          # best/val/auroc_mean, 4 decimals
D_AUROC = "d_auroc"                      # best/val/delta_auroc_mean, 4 decimals
IMPROVED = "improved"                    # best/val/tasks_improved
CONVERGED_METRIC = "converged"           # the convergence certificate: 1 / 0
PARAMS = "params"                        # model.n_params


class Role:
    TRIAL = "trial"
    BASELINE = "baseline"
    CANDIDATE = "baseline_candidate"     # a tuned baseline's search tried it and did not keep it
    TRAIN = "train"                      # `mtlsweep train`
    SWEEP = "sweep"                      # a sweep's parent run
    ANALYSIS = "analysis"                # similarity, motifs, affinity, a study's report


# ---- files of a run directory ---------------------------------------------------------------
ARTIFACT_DIR = "mlflow_artifacts"        # what a tracker uploads with the run
RUN_ID_FILE = "mlflow_run_id.txt"        # the MLflow run a resumed run continues
TASK_NAMES_FILE = "task_names.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
PER_TASK_FILE = "per_task.csv"
PER_TASK_PAGE = "per_task.html"          # the same table as the MLflow UI's artifact view renders it
