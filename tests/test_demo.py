"""`mtlsweep demo`'s pipeline at a tiny size, through the same code path as `make demo`."""
import csv

from mlflow.tracking import MlflowClient

from mtlsweep.app.demo import DemoSettings, run_demo


def test_demo_pipeline_end_to_end(ray_cluster, tmp_path, capsys):
    ws = tmp_path / "ws"
    settings = DemoSettings(
        workspace=ws, num_samples=3, top=2, name="tiny-demo",
        data={"n_tasks": 16, "n_groups": 4, "n_seqs": 800, "seq_len": 120, "min_ic": 14.0, "label_noise": 0.01,
              "prevalence_min": 0.1, "prevalence_median": 0.15, "prevalence_max": 0.3, "seed": 0},
        base_overrides=["train.epochs=3", "train.steps_per_epoch=4", "data.batch_size=32", "gbm.max_motifs=50"])
    assert run_demo(settings=settings) == 0
    out = capsys.readouterr().out
    assert "1/4 synthetic benchmark" in out and "4/4 best configurations" in out
    assert out.count("configurations vs single-task baseline") == 1        # the table, printed once
    assert "Checkpoint successfully created" not in out
    # one live view, the libraries in the sweep's log file: a screenful, not hundreds of lines
    assert len(out.splitlines()) <= 70, out
    for noise in ("(run_trial pid=", "== Status ==", "Current best trial", "[I 20", "Downloading artifacts"):
        assert noise not in out, noise
    assert "stage" in out and "trials" in out and "references" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "#/experiments/" in out

    with open(ws / "compare" / "tiny-demo" / "comparison.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0].keys() >= {"run", "family", "role", "certified", "certificate", "auroc_mean", "delta_auroc_mean",
                              "wilcoxon_p", "tasks_improved", "tasks_total", "epoch_s", "n_params", "flops_per_seq",
                              "baseline"}
    assert any(r["role"] == "baseline" for r in rows)
    assert any(r["role"].startswith("best ") for r in rows)
    # the reference families sit beside the CNNs, against the same baseline, with their capacity
    refs = {r["family"]: r for r in rows if r["family"] in ("motif_gbm", "kmer_linear")}
    assert set(refs) == {"motif_gbm", "kmer_linear"}
    assert all(r["baseline"].endswith(rows[0]["run"]) and r["delta_auroc_mean"] != "" and int(r["n_params"]) > 0
               for r in refs.values())
    # every row says whether it is certified, and why not (3 epochs: nothing converges)
    assert all(r["certified"] in ("yes", "no") for r in rows if r["run"] != "-")
    assert any("not converged" in r["certificate"] for r in rows)
    report = (ws / "compare" / "tiny-demo" / "comparison.html").read_text()
    assert "<h1>sweep tiny-demo" in report and "one point per task" in report

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mtlsweep-demo")
    baselines = client.search_runs([exp.experiment_id], "tags.role = 'baseline'")
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'sweep'")
    kids = [k for k in client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                          "and tags.role = 'trial'") if "trial_id" in k.data.tags]
    assert len(baselines) == 1 and len(kids) == 3
    assert sorted(k.data.tags["arm"] for k in kids) == ["branched", "hard", "soft"]     # one each, in turn
    assert baselines[0].data.tags["mlflow.parentRunId"] == parent.info.run_id          # its own search
    assert all(k.data.tags["baseline_run_id"] == baselines[0].info.run_id for k in kids)
    assert sorted(p.name for p in (ws / "export" / "tiny-demo").iterdir()) == ["1.yaml", "2.yaml", "README.md"]

    # Safe to run twice: data and baseline reused, a new sweep, nothing overwritten.
    settings.name = "tiny-demo-2"
    assert run_demo(settings=settings) == 0
    assert "reusing" in capsys.readouterr().out
    assert len(client.search_runs([exp.experiment_id], "tags.role = 'baseline'")) == 1
    assert (ws / "export" / "tiny-demo" / "1.yaml").is_file() and (ws / "export" / "tiny-demo-2" / "1.yaml").is_file()
