"""Where Ray, Tune, Optuna and MLflow write while a sweep runs: a log file in the workspace, not the
terminal, which shows the sweep's live view. ``--verbose 2`` leaves them on the terminal.

Third-party warnings follow their loggers into the file. mtlsweep's own warnings (a task without
negatives, a server that went away) still reach the person, once each.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

# Loggers a sweep's libraries write to from the driver; each is given the file instead of its
# handlers. The first four at INFO (what a sweep did), the rest at WARNING (SQLAlchemy's INFO is
# thousands of lines of mapper set-up).
INFO_LOGGERS = ("ray", "optuna", "mlflow", "mtlsweep")
LIBRARY_LOGGERS = (*INFO_LOGGERS, "alembic", "sqlalchemy", "urllib3", "filelock", "huey", "py.warnings",
                   "matplotlib", "numexpr", "torch", "fsspec")
# mtlsweep's own warnings come from modules of this tree; anything else is a library's.
OWN_ROOT = str(Path(__file__).resolve().parents[1])
OWN_PACKAGES = ("mtlsweep",)


def is_own_warning(category: type, filename: str) -> bool:
    """A warning a person acts on (mtlsweep's), not a library's: libraries warn with categories of
    their own (Optuna's ExperimentalWarning) or from their own files."""
    module = getattr(category, "__module__", "") or ""
    if module not in ("builtins", "warnings") and not module.startswith(OWN_PACKAGES):
        return False
    if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)):
        return False
    path = str(Path(filename).resolve()) if filename else ""
    return path.startswith(OWN_ROOT) and "site-packages" not in path


BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def no_download_bars():
    """MLflow's "Downloading artifacts" bars (one per file) off while open; as it was after."""
    before = os.environ.get(BARS)
    os.environ[BARS] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BARS, None)
        else:
            os.environ[BARS] = before


class LibraryLogs:
    """While open: the libraries' loggers write to ``path`` (created with its folder), the MLflow
    download bars are off, and third-party warnings go to the file; ``say`` shows mtlsweep's own
    warnings once each. Everything is put back on close."""

    def __init__(self, path: Path, say: Callable[[str], None] = print):
        self.path = Path(path)
        self.say = say
        self._saved: list[tuple[logging.Logger, list, int, bool]] = []
        self._showwarning = None
        self._bars = no_download_bars()
        self._handler: Optional[logging.Handler] = None
        self._seen: set[str] = set()

    def __enter__(self) -> "LibraryLogs":
        # Imported first: each adds its own terminal handler on import, which is then replaced.
        import mlflow  # noqa: F401
        import optuna
        import ray  # noqa: F401
        optuna.logging.disable_default_handler()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.route()
        self._bars.__enter__()
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._warning
        return self

    def route(self) -> None:
        """Give every library logger the file (again: ``ray.init`` reconfigures Ray's)."""
        for name in LIBRARY_LOGGERS:
            log = logging.getLogger(name)
            if self._handler in log.handlers:
                continue
            if all(saved[0] is not log for saved in self._saved):
                self._saved.append((log, list(log.handlers), log.level, log.propagate))
            log.handlers = [self._handler]
            log.propagate = False
            log.setLevel(logging.INFO if name in INFO_LOGGERS else logging.WARNING)

    def _warning(self, message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if is_own_warning(category, filename):
            if text not in self._seen:
                self._seen.add(text)
                self.say(f"mtlsweep: warning: {text}")
            return
        logging.getLogger("py.warnings").warning("%s:%s: %s: %s", filename, lineno, category.__name__, text)

    def __exit__(self, *exc) -> None:
        warnings.showwarning = self._showwarning
        self._bars.__exit__(None, None, None)
        for log, handlers, level, propagate in self._saved:
            log.handlers, log.propagate = handlers, propagate
            log.setLevel(level)
        self._saved.clear()
        if self._handler is not None:
            self._handler.close()
