"""What a person sees on opening the links mtlsweep prints: two `mtlsweep train` runs (a single-task
baseline and a hard model compared with it) on a real MLflow server, its UI rendered by headless
Chromium at 1600x1000. bench/mlflow_ui.py takes the same pictures to look at."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mtlsweep.app.cli import main
from mtlsweep.config import tags as tag
from mtlsweep.mlflow_server.runs_view import COLUMNS, PINNED_COLUMNS, run_url, runs_url

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI installs chromium (.ci/run) and sets MTLSWEEP_REQUIRE_CHROMIUM=1: there a missing one fails, not skips.
_MISSING = f"{CHROMIUM} missing: the UI is rendered by headless Chromium (apt-get install chromium)"
if not Path(CHROMIUM).is_file() and os.environ.get("MTLSWEEP_REQUIRE_CHROMIUM") == "1":
    raise RuntimeError(f"MTLSWEEP_REQUIRE_CHROMIUM=1 but {_MISSING}")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=_MISSING)
TINY = ["--set", "model.arch.conv_channels=[8, 8, 8]", "--set", "model.arch.conv_widths=[7, 5, 3]",
        "--set", "model.arch.pool=[2, 2, 2]", "--set", "model.arch.dense=[16, 16]", "--set", "data.batch_size=32",
        "--set", "train.num_threads=1", "--set", "train.epochs=2", "--no-progress"]
# The runs table's width at 1600 px beside the Assistant panel, which the UI opens on a browser's
# first visit to a local server (MLflow 3.17.2, measured in bench/mlflow_ui.py's screenshots), less a
# vertical scrollbar.
TABLE_PX_BESIDE_ASSISTANT = 938 - 15
CHECKBOX_PX = 73


def chromium(url: str, *out: str) -> str:
    """The page as Chromium renders it at 1600x1000 (a fresh profile each time): its DOM, or with
    ``--screenshot=PATH`` a PNG."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1600,1000", "--virtual-time-budget=15000", *(out or ["--dump-dom"]), url],
                          check=True, capture_output=True, text=True, timeout=90).stdout


class Cells(HTMLParser):
    """ag-grid's header and body cells as rendered: role, column id, left and width in px, text."""

    def __init__(self, dom: str):
        super().__init__()
        self.cells: list[dict] = []
        self.feed(dom)

    def handle_starttag(self, name, attrs):
        a = dict(attrs)
        if a.get("role") in ("columnheader", "gridcell") and a.get("col-id"):
            at = re.search(r"left: (-?\d+)px; width: (\d+)px", a.get("style") or "")
            self.cells.append({"role": a["role"], "col": a["col-id"], "left": int(at[1]) if at else None,
                               "width": int(at[2]) if at else None, "text": ""})

    def handle_data(self, data):
        if self.cells:
            self.cells[-1]["text"] += data

    def headers(self) -> dict[str, dict]:
        return {c["col"]: c for c in self.cells if c["role"] == "columnheader"}

    def column(self, col: str) -> list[str]:
        return [c["text"].strip() for c in self.cells if c["role"] == "gridcell" and c["col"] == col]


def test_runs_table_opens_on_the_answer(mlflow_server, signal_store_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("run.yaml").write_text(f"data: {{path: {signal_store_path}}}\ntrain: {{out_dir: runs}}\n"
                                f"tracking: {{experiment: ui-{tmp_path.name}}}\n")
    args = ["train", "--config", "run.yaml", *TINY, "--tracking-uri", mlflow_server.url]
    assert main([*args, "--name", "towers", "--set", "model.sharing.shared_layers=0"]) == 0   # the baseline
    assert main([*args, "--name", "shared"]) == 0                                             # hard, against it
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(f"ui-{tmp_path.name}").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert set(runs) == {"single-towers", "hard-shared"}
    hard = runs["hard-shared"]
    # MLflow's own "View run" line opens the run on the GenAI side: replaced by one that does not.
    printed = capsys.readouterr().out
    assert f"View run hard-shared at: {run_url(mlflow_server.url, exp, hard.info.run_id)}" in printed
    assert f"#/experiments/{exp}/runs/{hard.info.run_id}\n" not in printed

    # Its per-task page (the artifact view renders .html): each task against the baseline's.
    page = Path(client.download_artifacts(hard.info.run_id, tag.PER_TASK_PAGE, str(tmp_path))).read_text()
    assert "baseline AUROC" in page and "tasks improved" in page

    url = runs_url(mlflow_server.url, exp)
    page = Cells(chromium(url))
    headers = page.headers()
    ours = [(f"{kind}.`{key}`", width) for kind, key, width in COLUMNS if key != tag.ARM]   # `train` runs have no arm
    for col, width in ours:
        assert col in headers, f"{col} not rendered; headers: {sorted(headers)}"
        assert headers[col]["text"].strip() == col.split("`")[1] and headers[col]["width"] == width
    # In the view's order, family first, and the family and the headline metrics in sight at 1600 px
    # even beside the Assistant panel: the fixed columns are pinned left, ours scroll after them.
    lefts = [headers[col]["left"] for col, _ in ours]
    assert lefts == sorted(lefts) and ours[0][0] == "tags.`family`"
    pinned = CHECKBOX_PX + sum(w for _, w in PINNED_COLUMNS)
    params = headers[f"metrics.`{tag.PARAMS}`"]
    assert pinned + params["left"] + params["width"] <= TABLE_PX_BESIDE_ASSISTANT
    # Best auroc first; each value whole (4 decimals), the family beside it.
    shown = dict(zip(page.column("tags.`family`"), page.column(f"metrics.`{tag.AUROC}`")))
    assert set(shown) == {"single", "hard"}
    values = [float(v) for v in shown.values()]
    assert all(re.fullmatch(r"0\.\d{1,4}|1", v) for v in shown.values()) and values == sorted(values, reverse=True)
    assert page.column(f"metrics.`{tag.PARAMS}`") and page.column(f"metrics.`{tag.CONVERGED_METRIC}`")

    png = tmp_path / "runs_table.png"
    chromium(url, f"--screenshot={png}")
    assert png.stat().st_size > 20_000
    print(f"runs table as rendered: {png}")

    # The printed run link opens the run on the model-training side ("Runs", not "Evaluations").
    run_page = chromium(run_url(mlflow_server.url, exp, hard.info.run_id))
    assert re.search(r'data-testid="experiment-observatory-link-runs"[^>]*>(<[^>]*>)*Runs<', run_page)
