"""Every kind of bad input a user has been seen to type, refused the same way: exit status 2, one
line on stderr naming what is wrong, no traceback, and nothing created or changed on disk.

Each case runs the real CLI (`mtlsweep.app.cli.main`) in-process, in a working directory that
holds a trained run, a data store, a peak sample sheet, a FASTA and the outputs of earlier
commands, so that "nothing changed" covers what a wrong command could overwrite."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from mtlsweep.app.cli import main

TINY = ["--set", "model.arch.conv_channels=[8, 8, 8]", "--set", "model.arch.conv_widths=[7, 5, 3]",
        "--set", "model.arch.pool=[2, 2, 2]", "--set", "model.arch.dense=[16, 16]", "--set", "train.epochs=1",
        "--set", "data.batch_size=32", "--set", "train.out_dir=runs", "--set", "train.num_threads=1"]


def _write_fasta(path: Path, rng) -> None:
    with open(path, "w") as fh:
        for name in ("chr1", "chr2", "chr3"):
            seq = "".join(rng.choice(list("ACGT"), 3000))
            fh.write(f">{name}\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")


@pytest.fixture(scope="module")
def home(tmp_path_factory, signal_store_path):
    """The working directory every case starts from (built once; cases must leave it unchanged)."""
    import os
    d = tmp_path_factory.mktemp("home")
    old = os.getcwd()
    os.chdir(d)
    try:
        rng = np.random.default_rng(0)
        Path("store.h5").write_bytes(Path(signal_store_path).read_bytes())
        Path("run.yaml").write_text("data: {path: store.h5}\n")
        Path("space.yaml").write_text("model.sharing.shared_layers: {choice: [0, 5]}\n")
        Path("basset_space.yaml").write_text("model.arch.preset: {type: categorical, values: [motif, basset]}\n")
        assert main(["train", "--config", "run.yaml", "--name", "done", "--no-progress", *TINY]) == 0
        _write_fasta(Path("genome.fa"), rng)
        Path("peaks").mkdir()
        Path("peaks/a.bed").write_text("chr1\t400\t500\nchr2\t1000\t1100\nchr3\t500\t700\n")
        Path("peaks/b.bed").write_text("chr1\t420\t520\nchr2\t1500\t1600\nchr3\t900\t1000\n")
        Path("peaks/bad.bed").write_text("chr1\t400\t500\nchr1\t100\n")
        Path("samples.tsv").write_text("a\tpeaks/a.bed\nb\tpeaks/b.bed\n")
        Path("bad_samples.tsv").write_text("a\tpeaks/a.bed\nbad\tpeaks/bad.bed\n")
        assert main(["data", "build", "samples.tsv", "genome.fa", "--out", "built", "--length", "200",
                     "--valid-chroms", "chr2", "--test-chroms", "chr3"]) == 0
        assert not Path("genome.fa.fai").exists()              # the index goes to the cache
        assert main(["data", "synth", "--out", "synth", "--tasks", "2", "--groups", "1", "--seqs", "200",
                     "--length", "100"]) == 0
        Path("a_file").write_text("not a directory\n")
        Path("dup.yaml").write_text("data: {path: store.h5}\ntrain: {epochs: 1}\ntrain: {epochs: 2}\n")
        Path("empty_labels.tsv").write_text("")
        Path("export_me").mkdir()
        # A tracking store with only a `train` run in it.
        assert main(["train", "--config", "run.yaml", "--name", "tracked", "--no-progress", *TINY,
                     "--tracking-uri", f"sqlite:///{d / 'mlflow.db'}"]) == 0
    finally:
        os.chdir(old)
    return d


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*")}


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


ARCH = "--set model.arch.conv_channels=[8,8,4]"
CASES = [
    # (id, argv, what the one line must say)
    ("config-is-hdf5", "train --config store.h5", "an HDF5 data file, not a YAML config"),
    ("sweep-base-is-hdf5", "sweep --base store.h5 --space space.yaml", "an HDF5 data file, not a YAML config"),
    ("config-missing", "train --config nope.yaml", "nope.yaml: no such config file"),
    ("unknown-key", "train --config run.yaml --set model.nope=1", "unknown key 'model.nope'"),
    ("batch-size-1", "train --config run.yaml --set data.batch_size=1", "data.batch_size: must be >= 2"),
    ("batch-size-bool", "train --config run.yaml --set data.batch_size=true", "expected a number, got true"),
    ("tracking-uri-scheme", "train --config run.yaml --tracking-uri htp:/bad", "unknown scheme 'htp'"),
    ("resume-nothing", "train --config run.yaml --resume a_dir_without_run", "nothing to resume"),
    ("resume-other-data", "train --config run.yaml --resume runs/done --set data.path=synth/store.h5",
     "--resume with other data"),
    ("resume-other-arch", f"train --config run.yaml --resume runs/done {ARCH}",
     "--resume with another config: model.arch.conv_channels"),
    ("resume-finished", "train --config run.yaml --resume runs/done", "already complete"),
    ("run-dir-exists", "train --config run.yaml --name done", "run directory exists"),
    ("export-out-is-file", "export-best --out a_file --tracking-uri sqlite:///mlflow.db",
     "--out a_file: is a file"),
    ("export-only-train-runs", "export-best --out new_export --experiment mtlsweep --tracking-uri sqlite:///mlflow.db",
     "export-best exports sweep trials"),
    ("build-exists", "data build samples.tsv genome.fa --out built --length 200", "exists; pass --force"),
    ("build-merge-overlap", "data build samples.tsv genome.fa --out new_build --length 100 --merge-overlap 300",
     "--merge-overlap 300 is not allowed with --length 100"),
    ("build-malformed", "data build bad_samples.tsv genome.fa --out new_build --length 200",
     "pass --on-error skip"),
    ("synth-exists", "data synth --out synth --tasks 2 --groups 1 --seqs 200 --length 100", "pass --force"),
    ("convert-exists", "data convert built/basset.h5 store.h5", "pass --force"),
    ("server-port-busy", "server start --dir new_server --port {port}", "--port {port}: already in use"),
    ("preset-unknown", "train --config run.yaml --set model.arch.preset=huge", "model.arch.preset: must be one of"),
    ("preset-and-own-lists", "train --config run.yaml --set model.arch.preset=motif",
     "differs from preset motif's [64]"),
    ("shared-layers-word", "train --config run.yaml --set model.sharing.shared_layers=most",
     "model.sharing.shared_layers"),
    ("kmer-k-too-long", "train --config run.yaml --set model.family=kmer_linear --set kmer.k=[9]",
     "kmer.k.0: must be <= 8"),
    ("sweep-references-unknown", "sweep --base run.yaml --space basset_space.yaml --references xgb",
     "--references 'xgb': allowed: motif_gbm, kmer_linear"),
    ("sweep-preset-too-long", "sweep --base run.yaml --space basset_space.yaml --set model.arch.preset=motif",
     "model.arch.preset=basset does not fit"),
    ("sweep-base-trunk-too-long", "sweep --base run.yaml --space basset_space.yaml",
     "the base config's trunk does not fit"),
    ("sweep-grace-period", "sweep --base run.yaml --space space.yaml --grace-period -1",
     "--grace-period -1: must be >= 1"),
    ("sweep-max-failures", "sweep --base run.yaml --space space.yaml --max-failures -2", "--max-failures -2"),
    ("server-auth-no-credentials", "server start --dir new_server --auth", "MLFLOW_TRACKING_PASSWORD"),
    ("server-backend-scheme", "server start --dir new_server --backend-uri bogus://x",
     "--backend-uri bogus://x: use sqlite:///"),
    ("yaml-duplicate-key", "train --config dup.yaml", "dup.yaml: key 'train' at lines 2 and 3"),
    ("weighting-one-task", "train --config run.yaml --set schedule.weighting=famo --set data.tasks=[0]",
     "schedule.weighting=famo: weighs tasks against each other, and this run has one task"),
    ("export-top-0", "export-best --top 0 --out new_export --tracking-uri sqlite:///mlflow.db", "--top 0: must be >= 1"),
    ("export-no-store", "export-best --out new_export --tracking-uri sqlite:///nothing.db", "no MLflow store there"),
    ("compare-no-store", "compare --workspace no_workspace --out new_compare", "no MLflow store there"),
    ("info-directory", "data info peaks", "peaks: is a directory, not an HDF5 file (and holds no .h5 file)"),
    ("labels-empty", "data build --labels empty_labels.tsv genome.fa --out new_build", "empty_labels.tsv: is empty"),
    ("synth-avoid-bad", "data synth --out new_synth --tasks 2 --groups 1 --seqs 200 --set avoid_motifs=vertebrates",
     "avoid_motifs='vertebrates' is not allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, home, capsys, monkeypatch):
    _, argv, expect = case
    monkeypatch.chdir(home)
    busy = _busy_port()
    port = busy.getsockname()[1]
    argv, expect = argv.format(port=port), expect.format(port=port)
    import shlex
    before = _snapshot(home)
    try:
        capsys.readouterr()
        words = shlex.split(argv)
        # The case's own --set comes after the tiny model's, so that it is the one that counts.
        rc = main(words[:1] + TINY + words[1:] if words[0] == "train" else words)
    finally:
        busy.close()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("mtlsweep: error: "), err
    assert expect in lines[0], lines[0]
    assert _snapshot(home) == before          # nothing created, nothing changed


def test_refused_resume_creates_no_workspace(home, tmp_path, monkeypatch, capsys):
    """A refused `train --resume` in a fresh directory leaves it empty: the default tracking
    store's workspace is made only once the run is accepted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = home / "run.yaml"
    rc = main(["train", "--config", str(cfg), "--resume", str(home / "runs" / "done"), *TINY, "--set", "optim.lr=0.5",
               "--set", f"data.path={home / 'store.h5'}", "--set", f"train.out_dir={home / 'runs'}",
               "--set", "tracking.enabled=true"])
    assert rc == 2 and "--resume with another config: optim.lr" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_and_force_reevaluates(home, tmp_path, monkeypatch, capsys):
    """The accepted resumes: a longer budget trains on in the same run; --force evaluates a finished run again."""
    import json
    import shutil
    monkeypatch.chdir(home)
    shutil.copytree(home / "runs" / "done", tmp_path / "done")
    run = str(tmp_path / "done")
    assert main(["train", "--config", "run.yaml", "--resume", run, "--no-progress", *TINY,
                 "--set", "train.epochs=2"]) == 0
    assert len(json.loads((tmp_path / "done" / "metrics.json").read_text())["history"]) == 2
    assert main(["train", "--config", "run.yaml", "--resume", run, "--force", "--no-progress", *TINY,
                 "--set", "train.epochs=2"]) == 0


def test_unjudgeable_task_is_left_out_of_every_mean(tmp_path, capsys):
    """A task with no positive among its train and valid labels: warned once per load, NaN in
    every split, and no split's mean includes it."""
    import json

    from tests.conftest import make_signal_store
    store = make_signal_store(n=900)
    for split in ("train", "valid"):
        store.splits[split].labels[:, 2] = np.where(store.splits[split].labels[:, 2] == 1, 0,
                                                    store.splits[split].labels[:, 2])
    store.save(tmp_path / "s.h5")
    (tmp_path / "r.yaml").write_text(f"data: {{path: {tmp_path / 's.h5'}}}\n")
    assert main(["train", "--config", str(tmp_path / "r.yaml"), "--name", "x", "--no-progress",
                 *[a.replace("train.out_dir=runs", f"train.out_dir={tmp_path / 'runs'}") for a in TINY]]) == 0
    err = capsys.readouterr().err
    assert "mtlsweep: warning:" in err and "task2" in err and "Traceback" not in err
    import csv
    rows = list(csv.DictReader(open(tmp_path / "runs" / "x" / "per_task.csv")))
    final = json.loads((tmp_path / "runs" / "x" / "metrics.json").read_text())["final"]
    assert np.isnan(float(rows[2]["val_auroc"])) and np.isnan(float(rows[2]["test_auroc"]))
    for split, col in (("val", "val_auroc"), ("test", "test_auroc")):
        assert final[f"{split}/auroc_mean"] == pytest.approx(np.mean([float(r[col]) for r in rows[:2]]))
