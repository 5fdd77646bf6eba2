"""The CLI answers at once: no `--help` imports torch, Ray or MLflow, and the commands that only
read MLflow (compare, export-best, server) never import torch or Ray."""
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "mlflow", "optuna", "matplotlib")
COMMANDS = ["", "data", "data build", "train", "sweep", "compare", "export-best", "server", "sync", "similarity",
            "motifs", "affinity", "cost", "docs", "demo"]


def _imported_by(code: str) -> set[str]:
    probe = code + f"\nimport sys\nprint('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(filter(None, r.stdout.strip().splitlines()[-1].removeprefix("HEAVY:").split(",")))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_no_heavy_library(command):
    argv = [*command.split(), "--help"]
    code = ("from mtlsweep.app.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n")
    assert _imported_by(code) == set()


def test_reading_commands_import_only_what_they_use():
    # What `compare`, `export-best` and `server` run: MLflow's client, never torch or Ray.
    code = ("import mtlsweep.mlflow_server.compare, mtlsweep.mlflow_server.group_compare, "
            "mtlsweep.search.export, mtlsweep.mlflow_server.server")
    assert _imported_by(code) <= {"mlflow"}
