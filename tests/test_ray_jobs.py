"""The sweep's entry script under `ray job submit` against a `ray start --head` on loopback."""
import json
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def test_ray_job_submit_runs_the_entry_script(ray_cluster, signal_store_path, tmp_path):
    from conftest import TINY_ARCH
    base = {"data": {"path": str(signal_store_path), "batch_size": 64},
            "model": {"arch": TINY_ARCH, "sharing": {"shared_layers": 5}},
            "train": {"epochs": 1, "steps_per_epoch": 5, "num_threads": 1, "out_dir": str(tmp_path / "runs")},
            "tracking": {"experiment": "jobs"}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"optim.lr": {"type": "loguniform", "low": 1e-3,
                                                                      "high": 1e-2}}))
    uri = f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "ray"), "job", "submit", "--address", ray_cluster["dashboard"],
           "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "workspace", "mlruns", "*.egg-info"]}),
           "--", "python", "-m", "mtlsweep.search.sweep", "--base", str(tmp_path / "base.yaml"),
           "--space", str(tmp_path / "space.yaml"), "--num-samples", "2", "--name", "job",
           "--workspace", str(tmp_path / "ws"), "--tracking-uri", uri, "--scheduler", "none"]
    import time
    for _ in range(30):   # the dashboard's job agent comes up some seconds after `ray start`
        r = subprocess.run(cmd, env=ray_cluster["env"], capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in r.stderr:
            break
        time.sleep(2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("jobs")
    trials = client.search_runs([exp.experiment_id], "tags.role = 'trial' and tags.sweep = 'job'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
