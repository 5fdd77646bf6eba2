"""User errors: one line naming the file, field or value and what is allowed; exit status 2.

Every layer raises its own subclass of ``UserError`` (ConfigError here, DataError in data,
TrackingError in mlflow_server); ``guarded`` is how every entry point prints them.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


class UserError(Exception):
    """A user mistake: printed as one line, exit status 2, no traceback."""


class ConfigError(UserError, ValueError):
    """A user mistake in a config: one line naming the field and what is allowed."""


# Raised by the standard library and the libraries for a user's paths and names: also one line.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, LookupError)


def describe(err: dict) -> str:
    """One pydantic error as "<dotted field>: <what is allowed>, got <value>"."""
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected')}, got {got!r}"
    if kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"{loc}: must be {op} {bound}, got {got!r}"
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return f"{loc}: {msg}" if loc else msg
    return f"{loc}: {err['msg'].lower()}, got {got!r}"


def describe_all(exc, prefix: tuple = ()) -> str:
    """Every error of a pydantic ValidationError, joined; ``prefix`` is put before each location."""
    return "; ".join(describe({**e, "loc": prefix + tuple(e["loc"])}) for e in exc.errors())


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised like Ctrl-C so that every run it interrupts
    is closed the same way: KILLED in MLflow, its checkpoint kept for --resume."""


_SIGTERM_SEEN = []      # a library may re-raise Terminated as a plain KeyboardInterrupt


def _terminate(signum, frame):
    _SIGTERM_SEEN.append(signum)
    raise Terminated()


def catch_sigterm():
    """Make SIGTERM raise Terminated in the main thread; returns the handler it replaced (None
    elsewhere). Called again after `ray.init`, whose core worker installs its own, which aborts."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


def guarded(func, *args) -> int:
    """Run an entry point: user mistakes become one line and exit status 2; bugs keep their traceback;
    SIGINT and SIGTERM end it through KeyboardInterrupt (exit status 130 and 143)."""
    previous = catch_sigterm()
    _SIGTERM_SEEN.clear()
    try:
        return func(*args) or 0
    except KeyboardInterrupt as exc:
        term = isinstance(exc, Terminated) or bool(_SIGTERM_SEEN)
        print(f"mtlsweep: {'terminated' if term else 'interrupted'}", file=sys.stderr)
        return 143 if term else 130
    except BrokenPipeError:
        # The reader of a pipe went away (`mtlsweep data info F | head`): stop quietly, as `cat` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - user mistakes become one line; bugs keep their traceback
        # A Ray task's error is also its cause's type; its own text starts with the task's name.
        cause = getattr(exc, "cause", None)
        if isinstance(exc, USER_ERRORS) or isinstance(cause, USER_ERRORS):
            text = str(cause if isinstance(cause, USER_ERRORS) else exc)
            msg = text.splitlines()[0] if text else type(exc).__name__
            print(f"mtlsweep: error: {msg}", file=sys.stderr)
            return 2
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
