"""How fast the CLI answers: each command's wall time against `python -c pass` measured in the
same run (the interpreter's own start-up), and which heavy libraries it imported.

    python bench/cli_startup.py [--repeat 3] [--workspace DIR]

`--help` of every command is timed as is. `compare`, `export-best` and `server start`/`stop`
need runs to read: given `--workspace` (one a demo or sweep wrote, holding mlflow.db) they are
timed on it, else on a store of two finished runs written here first.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "ray", "mlflow", "optuna", "matplotlib", "pandas", "sklearn", "scipy")
PROBE = ("import runpy, sys; sys.argv = ['mtlsweep'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('mtlsweep.app.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         f"print('IMPORTED', ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")


def timed(argv: list[str], repeat: int) -> tuple[float, str, int]:
    times, heavy, rc = [], "", 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        rc = r.returncode
        heavy = next((line.split(" ", 1)[1] if " " in line else "" for line in r.stderr.splitlines()
                      if line.startswith("IMPORTED")), heavy)
    return statistics.median(times), heavy, rc


def small_store(root: Path) -> Path:
    """Two finished tracked runs (a single-task baseline and a hard model) on a tiny benchmark."""
    py = sys.executable
    subprocess.run([py, "-m", "mtlsweep.app.cli", "data", "synth", "--out", str(root / "synth"), "--tasks", "4",
                    "--groups", "2", "--seqs", "400", "--length", "100"], check=True, capture_output=True)
    repo = Path(__file__).resolve().parents[1]
    for cfg in ("single.yaml", "hard.yaml"):
        subprocess.run([py, "-m", "mtlsweep.app.cli", "train", "--config", str(repo / "search" / "configs" / cfg),
                        "--set", f"data.path={root / 'synth' / 'store.h5'}", "--set", "train.epochs=2",
                        "--set", "train.steps_per_epoch=3", "--set", f"train.out_dir={root / 'runs'}",
                        "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--no-progress"],
                       check=True, capture_output=True)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workspace", help="a workspace with mlflow.db (default: two runs written here)")
    args = p.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(args.workspace).resolve() if args.workspace else small_store(Path(tmp))
        uri = f"sqlite:///{ws / 'mlflow.db'}"
        exp = "mtlsweep-demo" if args.workspace else "mtlsweep"
        cases = [("python -c pass", [py, "-c", "pass"]),
                 ("mtlsweep --help", [py, "-c", PROBE, "--help"])]
        for cmd in ("data", "train", "sweep", "compare", "export-best", "server", "motifs", "affinity", "demo"):
            cases.append((f"mtlsweep {cmd} --help", [py, "-c", PROBE, cmd, "--help"]))
        cases += [
            ("mtlsweep compare", [py, "-c", PROBE, "compare", "--experiment", exp, "--all-sweeps", "--tracking-uri",
                                  uri, "--out", str(Path(tmp) / "cmp")]),
            ("mtlsweep export-best", [py, "-c", PROBE, "export-best", "--experiment", exp, "--all-sweeps",
                                      "--tracking-uri", uri, "--out", str(Path(tmp) / "exp"), "--force"]),
            ("mtlsweep server start + stop", ["sh", "-c", f"{py} -m mtlsweep.app.cli server start --dir {tmp}/srv "
                                              f"&& {py} -m mtlsweep.app.cli server stop --dir {tmp}/srv"]),
        ]
        base = None
        print(f"{'command':34} {'median s':>9} {'x python':>9}  heavy imports")
        for label, argv_ in cases:
            s, heavy, rc = timed(argv_, args.repeat if "server" not in label else 1)
            base = base or s
            note = "" if rc == 0 or "export-best" in label else f"  (exit {rc})"
            print(f"{label:34} {s:9.2f} {s / base:9.1f}  {heavy or '-'}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
