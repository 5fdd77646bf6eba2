"""What a person sees in the MLflow UI: a real `mtlsweep server`, a single-task, a hard and a soft
run trained with tracking on a small synthetic benchmark, and headless Chromium screenshots at
1600x1000 of what mtlsweep prints links to:

    runs_table_first_visit.png   the runs-table view as a browser first opens it (MLflow then opens
                                 its Assistant panel, once per browser, on a local server)
    runs_table.png               the same once the panel was closed
    runs_table_mlflow_default.png  the runs table as MLflow opens it without mtlsweep's view
    run_page.png                 a run's page, from the "View run" link printed at its end
    per_task_html.png, per_task_csv.png   the run's per-task table in its artifact view

    python bench/mlflow_ui.py [--out DIR]        (needs /usr/bin/chromium: apt-get install chromium)

Prints the PNG paths; look at them.
"""
from __future__ import annotations

import sys
from pathlib import Path as _Path

sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from mtlsweep.app.cli import main as cli
from mtlsweep.config import tags as tag
from mtlsweep.mlflow_server import server
from mtlsweep.mlflow_server.runs_view import ML_SIDE, run_url, runs_url

WIDTH, HEIGHT = 1600, 1000
# The MLflow UI's own local-storage keys (3.17): the Assistant panel closed, its first-visit opening done.
ASSISTANT_CLOSED = {"mlflow.assistant.panelOpen_v1": "false", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}


class Browser:
    """Headless Chromium driven over the DevTools protocol on --remote-debugging-pipe (JSON
    messages ending in NUL, read by Chromium on fd 3 and written on fd 4): one profile, so what a
    page stores (the UI's settings) holds for the next."""

    def __init__(self, chromium: str, profile: Path):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def pipes_at_3_and_4():
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            preexec_fn=pipes_at_3_and_4, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._n, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self._n += 1
        msg = {"id": self._n, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited during {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._n:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 30) -> None:
        """Load ``url`` afresh and wait until the CSS selector ``ready`` matches, then for the UI to settle."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while not self.js(f"!!document.querySelector({json.dumps(ready)})"):
            if time.time() > deadline:
                raise TimeoutError(f"{url}: nothing matched {ready} in {timeout:.0f} s")
            time.sleep(0.3)
        time.sleep(2)

    def screenshot(self, png: Path) -> Path:
        png.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return png

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._out)
        os.close(self._in)


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
        browser = None
        try:
            assert cli(["data", "synth", "--out", str(tmp / "synth"), "--tasks", "4", "--groups", "2",
                        "--seqs", "1200", "--length", "200"]) == 0
            common = ["--set", f"data.path={tmp / 'synth' / 'store.h5'}", "--set", f"train.out_dir={tmp / 'runs'}",
                      "--set", "train.epochs=3", "--set", "tracking.experiment=ui-check", "--no-progress",
                      "--tracking-uri", info.url]
            for name in ("single", "hard", "soft"):         # the baseline first: the others compare with it
                assert cli(["train", "--config", f"search/configs/{name}.yaml", *common]) == 0
            client = MlflowClient(info.url)
            exp = client.get_experiment_by_name("ui-check").experiment_id
            best = client.search_runs([exp], order_by=[f"metrics.{tag.D_AUROC} DESC"], max_results=1)[0].info.run_id
            table = "[role=columnheader]"
            shots = []
            browser = Browser(a.chromium, tmp / "profile")
            browser.open(runs_url(info.url, exp), table)
            shots.append(("the view, first visit", runs_url(info.url, exp),
                          browser.screenshot(out / "runs_table_first_visit.png")))
            browser.js("".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});"
                               for k, v in ASSISTANT_CLOSED.items()))
            pages = [("the view", runs_url(info.url, exp), table, "runs_table.png"),
                     ("MLflow's default view", f"{info.url}/#/experiments/{exp}/runs?{ML_SIDE}", table,
                      "runs_table_mlflow_default.png"),
                     ("run page (printed link)", run_url(info.url, exp, best), "h2", "run_page.png")]
            for name in (tag.PER_TASK_PAGE, tag.PER_TASK_FILE):
                url = f"{info.url}/#/experiments/{exp}/runs/{best}/artifacts/{name}?{ML_SIDE}"
                pages.append((f"artifact {name}", url, "iframe, table", f"{name.replace('.', '_')}.png"))
            for label, url, ready, png in pages:
                browser.open(url, ready)
                shots.append((label, url, browser.screenshot(out / png)))
            for label, url, png in shots:
                print(f"{label}: {url}\n  -> {png}")
        finally:
            if browser is not None:
                browser.close()
            server.stop(tmp / "mlflow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
