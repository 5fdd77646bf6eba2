import json
import math
import os
import signal
import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mtlsweep.data.errors import DataError
from mtlsweep.mlflow_server import server
from mtlsweep.mlflow_server.fast_logger import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    FastLogger,
    Spool,
    _chunks,
    sync,
)
from mtlsweep.data.task_keys import sanitize_names

TASKS = [f"cell type {i}/rep:{i % 3}" for i in range(164)]
KEYS = sanitize_names(TASKS)


def report(step):
    return {f"val/auroc/{KEYS[t]}": 0.5 + (i + step) / 1000 for i, t in enumerate(TASKS)}


def history_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def new_run(client, name, parent=None):
    exp = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    tags = {"mlflow.parentRunId": parent} if parent else {}
    return client.create_run(exp.experiment_id, tags=tags).info.run_id


def test_chunks_respect_mlflow_batch_limits():
    m = [[f"m{i}", 1.0, 0, 0] for i in range(2500)]
    p = [[f"p{i}", "v"] for i in range(250)]
    t = [[f"t{i}", "x" * 7000] for i in range(150)]
    chunks = _chunks(m, p, t)
    for cm, cp, ct in chunks:
        assert len(cm) <= MAX_METRICS_PER_BATCH and len(cp) <= MAX_PARAMS_TAGS_PER_BATCH
        assert len(ct) <= MAX_PARAMS_TAGS_PER_BATCH
        assert len(cm) + len(cp) + len(ct) <= MAX_ENTITIES_PER_BATCH
        assert len(json.dumps([cm, cp, ct])) < 1_000_000
    assert [r for c in chunks for r in c[0]] == m and [r for c in chunks for r in c[1]] == p
    assert [r for c in chunks for r in c[2]] == t


def test_164_task_report_arrives_batched_with_parent_child(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.url)
    parent = new_run(client, "study-a")
    child = new_run(client, "study-a", parent=parent)
    log = FastLogger(mlflow_server.url, child, tmp_path / "spool")
    log.log_params({"model.sharing.strength": 0.5, "seed": 1})
    log.set_tags({"role": "baseline"})
    for step in range(3):
        log.log_metrics({**report(step), "val/auroc_mean": math.nan, "train/loss": 0.1}, step=step)
    log.close()
    # one HTTP call per report, never one per metric
    assert log.n_calls == 2 + 3 and log.n_sent == 3 + 3 * 166 and not log.spooled

    run = client.get_run(child)
    assert run.data.params["model.sharing.strength"] == "0.5" and run.data.tags["role"] == "baseline"
    per_task = [k for k in run.data.metrics if k.startswith("val/auroc/")]
    assert len(per_task) == 164
    assert math.isnan(run.data.metrics["val/auroc_mean"])
    for key in list(KEYS.values())[::40]:
        assert history_steps(client, child, f"val/auroc/{key}") == [0, 1, 2]
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in children] == [child]


def test_async_logger_coalesces_and_flush_waits(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.url)
    run_id = new_run(client, "study-async")
    log = FastLogger(mlflow_server.url, run_id, tmp_path / "spool", async_=True)
    for step in range(5):
        log.log_metrics(report(step), step=step)
    log.flush()
    assert log.n_sent == 5 * 164 and log.n_calls <= 5
    assert history_steps(client, run_id, f"val/auroc/{KEYS[TASKS[7]]}") == [0, 1, 2, 3, 4]
    log.set_tags({"phase": "warm-up"})
    log.set_tags({"phase": "joint"})
    log.flush()
    assert client.get_run(run_id).data.tags["phase"] == "joint"
    log.log_params({"a": 1})
    log.log_params({"a": 2})  # MLflow refuses to change a param: surfaces at flush
    with pytest.raises(server.TrackingError, match="refused"):
        log.flush()
    log.close()


def test_bad_keys_and_values_fail_before_sending(mlflow_server, tmp_path):
    log = FastLogger(mlflow_server.url, "no-such-run", tmp_path / "spool")
    with pytest.raises(DataError, match="'val/auroc/a//b'"):
        log.log_metrics({"val/auroc/a//b": 1.0}, step=0)
    with pytest.raises(DataError, match="must be a number"):
        log.log_metrics({"x": "high"}, step=0)
    assert log.n_calls == 0 and not log.spooled


def test_refused_batch_is_kept_and_the_rest_still_arrives(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.url)
    run_id = new_run(client, "study-refuse")
    log = FastLogger(mlflow_server.url, run_id, tmp_path / "spool")
    log.log_params({f"p{i}": 1 for i in range(100)})
    # 150 params: two chunks; the first conflicts (p0 changes), the second is new.
    with pytest.raises(server.TrackingError, match="refused 1 batch"):
        log.log_params({f"p{i}": 2 if i == 0 else 1 for i in range(150)})
    assert client.get_run(run_id).data.params["p149"] == "1"
    rejected = [json.loads(x) for x in (tmp_path / "spool" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and len(rejected[0]["p"]) == 100 and "INVALID_PARAMETER" in rejected[0]["error"]


def test_dead_server_spools_then_sync_sends_exactly_once(mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server.url)
    run_id = new_run(client, "study-sync")
    dead = f"http://127.0.0.1:{server._free_port('127.0.0.1')}"
    spool_dir = tmp_path / "spool"
    log = FastLogger(dead, run_id, spool_dir)
    t0 = time.monotonic()
    for step in range(3):
        log.log_metrics(report(step), step=step)
    log.set_tags({"status": "old"})
    log.set_tags({"status": "new"})
    log.close()  # flush fails quietly: training goes on
    assert time.monotonic() - t0 < 10 and log.spooled and log.n_spooled == 3 * 164 + 2
    with pytest.raises(server.TrackingError, match="does not answer"):
        sync(spool_dir)  # the recorded URI is still dead
    # A crash after the server took a batch but before its sent-marker: resending changes nothing.
    pending = Spool(spool_dir).pending()
    m0 = pending[0]["m"]
    client.log_batch(run_id, metrics=[Metric(*r) for r in m0])
    assert sync(spool_dir, tracking_uri=mlflow_server.url) == 3 * 164 + 2
    assert sync(spool_dir, tracking_uri=mlflow_server.url) == 0
    assert not (spool_dir / "spool.jsonl").exists()
    for key in list(KEYS.values())[::20]:
        assert history_steps(client, run_id, f"val/auroc/{key}") == [0, 1, 2]
    assert client.get_run(run_id).data.tags["status"] == "new"


def test_server_killed_mid_run_loses_nothing(killable_server, tmp_path):
    d, info = killable_server
    client = MlflowClient(info.url)
    run_id = new_run(client, "study-kill")
    log = FastLogger(info.url, run_id, tmp_path / "spool", retry_interval_s=0)
    log.log_metrics(report(0), step=0)
    log.log_metrics(report(1), step=1)
    assert not log.spooled

    os.killpg(info.pgid, signal.SIGKILL)
    t0 = time.monotonic()
    for step in range(2, 5):
        log.log_metrics(report(step), step=step)  # must not raise: training goes on
    log.flush()
    assert time.monotonic() - t0 < 15 and log.spooled
    assert server.status(d).alive is False

    # Same database, same artifacts, same port: the logger's next flush sends the spool.
    info2 = server.start(d, port=info.port)
    assert info2.url == info.url and info2.pgid != info.pgid
    log.flush()
    assert not log.spooled
    log.log_metrics(report(5), step=5)
    log.close()
    for key in KEYS.values():
        assert history_steps(client, run_id, f"val/auroc/{key}") == [0, 1, 2, 3, 4, 5]
    assert server.stop(d) is True and server.status(d) is None
