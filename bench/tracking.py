"""Time to log one epoch report (164 tasks, ~500 metrics) to a real MLflow server.

FastLogger (log_batch, <= 1000 metrics a call) against one MlflowClient.log_metric call per
metric, which is what Ray's MLflowLoggerCallback does (ray/air/_internal/mlflow.py,
`log_metrics`: `for key, value in ...: client.log_metric(...)`). Same server, same run.
Targets: >= 10x faster, <= 0.5 s per report.

    .venv/bin/python bench/tracking.py [--tasks 164] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow import MlflowClient

from mtlsweep.data.task_keys import sanitize_names  # noqa: E402
from mtlsweep.mlflow_server import server  # noqa: E402
from mtlsweep.mlflow_server.fast_logger import FastLogger  # noqa: E402


def epoch_report(keys: list[str], step: int) -> dict[str, float]:
    r = {}
    for i, k in enumerate(keys):
        r[f"val/auroc/{k}"] = 0.7 + ((i * 7 + step) % 100) / 1000
        r[f"val/auprc/{k}"] = 0.3 + ((i * 3 + step) % 100) / 1000
        r[f"val/delta_auroc/{k}"] = ((i + step) % 21 - 10) / 1000
    r.update({
        "train/loss": 0.2, "val/loss": 0.25, "val/auroc_mean": 0.75, "val/auroc_median": 0.76,
        "val/auprc_mean": 0.35, "val/delta_auroc_mean": 0.001, "val/tasks_improved": 90,
        "cost/epoch_s": 12.5, "cost/samples_per_s": 1e4, "cost/peak_mem_mb": 900,
    })
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=164)
    ap.add_argument("--reps", type=int, default=5, help="FastLogger reports timed")
    ap.add_argument("--slow-reps", type=int, default=2, help="per-metric reports timed")
    args = ap.parse_args(argv)

    keys = list(sanitize_names([f"cell_{i}" for i in range(args.tasks)]).values())
    with tempfile.TemporaryDirectory(prefix="mtlsweep-bench-") as tmp:
        t0 = time.perf_counter()
        info = server.start(Path(tmp) / "server")
        print(f"server {info.url} ready in {time.perf_counter() - t0:.1f} s")
        try:

            client = MlflowClient(info.url)
            exp = client.create_experiment("bench-tracking")
            run_id = client.create_run(exp).info.run_id
            n_metrics = len(epoch_report(keys, 0))
            step = 0

            log = FastLogger(info.url, run_id, Path(tmp) / "spool")
            log.log_metrics(epoch_report(keys, step), step=step)  # warm the connection
            step += 1
            fast = []
            for _ in range(args.reps):
                rep = epoch_report(keys, step)
                t = time.perf_counter()
                log.log_metrics(rep, step=step)
                fast.append(time.perf_counter() - t)
                step += 1
            log.close()
            assert not log.spooled
            calls_per_report = log.n_calls / (args.reps + 1)

            slow = []
            for _ in range(args.slow_reps):
                rep = epoch_report(keys, step)
                t = time.perf_counter()
                for k, v in rep.items():
                    client.log_metric(run_id, k, v, step=step)
                slow.append(time.perf_counter() - t)
                step += 1

            hist = client.get_metric_history(run_id, f"val/auroc/{keys[0]}")
            assert len(hist) == step, (len(hist), step)
        finally:
            server.stop(Path(tmp) / "server")

    f, s = statistics.median(fast), statistics.median(slow)
    print(f"report: {args.tasks} tasks, {n_metrics} metrics")
    print(f"FastLogger (log_batch): median {f:.3f} s/report  "
          f"(min {min(fast):.3f}, max {max(fast):.3f}, n={len(fast)}, "
          f"{calls_per_report:g} HTTP call(s)/report)")
    print(f"log_metric per metric:  median {s:.3f} s/report  "
          f"(min {min(slow):.3f}, max {max(slow):.3f}, n={len(slow)}, {n_metrics} HTTP calls/report, "
          f"{1000 * s / n_metrics:.1f} ms/call)")
    ratio = s / f
    print(f"speed-up: {ratio:.1f}x  (target >= 10x: {'OK' if ratio >= 10 else 'MISSED'}; "
          f"<= 0.5 s/report: {'OK' if f <= 0.5 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
