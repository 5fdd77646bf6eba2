"""What a person sees in the MLflow UI: a real `mtlsweep server`, a single-task and a hard run
trained with tracking on a small synthetic benchmark, and headless Chromium screenshots of the
experiment's runs table, once as MLflow opens it and once with the view mtlsweep prints.

    python bench/mlflow_ui.py [--out DIR]        (needs /usr/bin/chromium: apt-get install chromium)

Prints the PNG paths; look at them.
"""
from __future__ import annotations

import sys
from pathlib import Path as _Path

sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from mtlsweep.app.cli import main as cli
from mtlsweep.mlflow_server import server
from mtlsweep.mlflow_server.runs_view import runs_url


def screenshot(url: str, png: Path, chromium: str) -> None:
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=2200,700", "--virtual-time-budget=20000", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=120)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/out/mlflow_ui")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        info = server.start(tmp / "mlflow")
        try:
            assert cli(["data", "synth", "--out", str(tmp / "synth"), "--tasks", "4", "--groups", "2",
                        "--seqs", "1200", "--length", "200"]) == 0
            common = ["--set", f"data.path={tmp / 'synth' / 'store.h5'}", "--set", f"train.out_dir={tmp / 'runs'}",
                      "--set", "train.epochs=3", "--set", "tracking.experiment=ui-check", "--no-progress",
                      "--tracking-uri", info.url]
            for name in ("single", "hard"):
                assert cli(["train", "--config", f"search/configs/{name}.yaml", "--name", name, *common]) == 0
            exp = MlflowClient(info.url).get_experiment_by_name("ui-check")
            shots = {"default": f"{info.url}/#/experiments/{exp.experiment_id}/runs",
                     "mtlsweep_view": runs_url(info.url, exp.experiment_id)}
            for label, url in shots.items():
                png = out / f"runs_table_{label}.png"
                screenshot(url, png, a.chromium)
                print(f"{label}: {url}\n  -> {png}")
        finally:
            server.stop(tmp / "mlflow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
