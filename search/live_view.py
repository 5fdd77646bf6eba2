"""One live view of a sweep on the terminal (rich): for each stage (the baseline's search, the
trials, the reference families) and each family in it, trials done, running, waiting, failed and
pruned, the best validation AUROC any of its trials reached so far and that trial's Δ against the
baseline (certified or not: the comparison after the sweep ranks certified runs only), elapsed
time and the stage's ETA. Messages print above it; on a file or a pipe only its final state is
written.

The Tune callback finds the view through the module, not through itself: Tune pickles its
callbacks into the experiment's state, and a restored sweep must draw on the new view.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mtlsweep.search.grid import VARIANT_KEY
from mtlsweep.search.space import FAMILY_KEY

ACTIVE: Optional["SweepView"] = None


@dataclass
class Arm:
    """One family (or arm, variant, reference) of a stage."""
    planned: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    stopped: int = 0                  # by the scheduler, before its last epoch
    best: float = math.nan            # best validation AUROC (mean over tasks) so far
    delta: float = math.nan           # its ΔAUROC against the baseline, where the trial has one
    progress: float = 0.0             # finished trials plus the running ones' share of their epochs

    def offer(self, auroc: float, delta: float) -> None:
        """A trial's validation AUROC (and its Δ): kept if it is the best so far."""
        if math.isfinite(auroc) and not auroc <= self.best:
            self.best, self.delta = auroc, delta

    @property
    def pending(self) -> int:
        return max(0, self.planned - self.done - self.running - self.failed - self.stopped)


@dataclass
class Stage:
    name: str
    arms: dict[str, Arm] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    ended: Optional[float] = None

    def arm(self, name: str) -> Arm:
        return self.arms.setdefault(name, Arm())

    def eta_s(self) -> Optional[float]:
        planned = sum(a.planned for a in self.arms.values())
        done = sum(a.progress for a in self.arms.values())
        if self.ended or not planned or done <= 0.02 * planned:
            return None
        elapsed = time.time() - self.started
        return elapsed * (planned - done) / done


def _columns() -> int:
    try:
        return int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        return 0


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _auroc(v: float, signed: bool = False) -> str:
    return "-" if not math.isfinite(v) else f"{v:+.3f}" if signed else f"{v:.3f}"


class SweepView:
    """The live view of one sweep; ``log`` prints a line above it. As a context manager it is
    the module's active view (the one the Tune callback draws on)."""

    def __init__(self, title: str, console: Optional[Console] = None, footer: str = ""):
        self.title = title
        # On a file or a pipe rich would assume 80 columns: the view is written once there, at its width.
        self.console = console or Console(file=sys.stdout, highlight=False,
                                          width=None if sys.stdout.isatty() else max(110, _columns()))
        self.footer = footer
        self.stages: list[Stage] = []
        self.started = time.time()
        self._live: Optional[Live] = None
        self._previous: Optional[SweepView] = None

    def __enter__(self) -> "SweepView":
        global ACTIVE
        self._previous, ACTIVE = ACTIVE, self
        self._live = Live(self, console=self.console, refresh_per_second=2, transient=False,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        global ACTIVE
        self.stop()
        ACTIVE = self._previous

    def stop(self) -> None:
        """Leave the view in its final state; what is logged after prints below it."""
        for s in self.stages:
            s.ended = s.ended or time.time()
        if self._live is not None:
            self._live.stop()
            self._live = None
            if not self.console.is_terminal:
                self.console.line()

    def log(self, message: str) -> None:
        """A line above the live view, never wrapped by rich (a table rendered for its width
        stays as it is); once the view has stopped, below it."""
        if self._live is None:
            self.console.file.write(f"{message}\n")
            self.console.file.flush()
        else:
            self.console.print(Text(str(message)), soft_wrap=True)

    def stage(self, name: str, planned: dict[str, int]) -> Stage:
        """A new stage with its arms and how many trials (or runs) each will get."""
        st = Stage(name)
        for arm, n in planned.items():
            st.arm(arm).planned = n
        self.stages.append(st)
        self.refresh()
        return st

    def end(self, stage: Stage) -> None:
        stage.ended = time.time()
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def __rich__(self):
        table = Table(title=self.title, title_justify="left", expand=False, pad_edge=False, show_edge=False)
        for col, justify in (("stage", "left"), ("arm", "left"), ("done", "right"), ("running", "right"),
                             ("waiting", "right"), ("failed", "right"), ("pruned", "right"),
                             ("best so far", "right"), ("its Δ", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for st in self.stages:
            for i, (name, a) in enumerate(st.arms.items()):
                table.add_row(st.name if i == 0 else "", name, f"{a.done}/{a.planned}", str(a.running or ""),
                              str(a.pending or ""), str(a.failed or ""), str(a.stopped or ""), _auroc(a.best),
                              _auroc(a.delta, signed=True), end_section=i == len(st.arms) - 1)
        now = time.time()
        line = f"elapsed {_duration(now - self.started)}"
        current = next((s for s in reversed(self.stages) if not s.ended), None)
        if current is not None and current.eta_s() is not None:
            line += f" · {current.name}: about {_duration(current.eta_s())} left"
        return Group(table, Text(line + (f" · {self.footer}" if self.footer else ""), style="dim"))


def stop_active() -> None:
    if ACTIVE is not None:
        ACTIVE.stop()


def arm_of(config: dict[str, Any]) -> str:
    """The arm a trial belongs to: its space family, else its grid variant."""
    return str(config.get(FAMILY_KEY) or config.get(VARIANT_KEY) or "trials")


class LiveTrials(Callback):
    """Counts one Tune experiment's trials per arm into the active view's stage ``stage``."""

    def __init__(self, stage: str, planned: dict[str, int], max_epochs: int, fixed_arm: Optional[str] = None):
        self.stage_name, self.planned, self.max_epochs, self.fixed_arm = stage, dict(planned), max(1, max_epochs), fixed_arm
        self._stage: Optional[Stage] = None
        self._view: Optional[SweepView] = None

    def __getstate__(self):
        return {"stage_name": self.stage_name, "planned": self.planned, "max_epochs": self.max_epochs,
                "fixed_arm": self.fixed_arm, "_stage": None, "_view": None}

    def _current(self) -> Optional[Stage]:
        if ACTIVE is None:
            return None
        if self._view is not ACTIVE or self._stage is None:
            self._view, self._stage = ACTIVE, ACTIVE.stage(self.stage_name, self.planned)
        return self._stage

    def setup(self, **info):
        self._current()

    def on_step_end(self, iteration, trials, **info):
        st = self._current()
        if st is None:
            return
        for a in st.arms.values():
            a.done = a.running = a.failed = a.stopped = 0
            a.progress = 0.0
        for t in trials:
            a = st.arm(self.fixed_arm or arm_of(t.config or {}))
            result = t.last_result or {}
            epochs = float(result.get("epoch", 0) or 0)
            if t.status == "ERROR":
                a.failed += 1
            elif t.status == "TERMINATED":
                if "cert/converged" in result or epochs >= self.max_epochs:
                    a.done += 1
                else:
                    a.stopped += 1
            elif t.status in ("RUNNING", "PAUSED"):
                a.running += 1
                a.progress += min(1.0, epochs / self.max_epochs)
                continue
            else:
                continue
            a.progress += 1.0
        for a in st.arms.values():
            a.planned = max(a.planned, a.done + a.running + a.failed + a.stopped)
        ACTIVE.refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        st = self._current()
        if st is None:
            return
        st.arm(self.fixed_arm or arm_of(trial.config or {})).offer(
            float(result.get("val/auroc_mean", math.nan)), float(result.get("val/delta_auroc_mean", math.nan)))

    def on_experiment_end(self, trials, **info):
        self.on_step_end(0, trials)
        if self._stage is not None and ACTIVE is not None:
            ACTIVE.end(self._stage)


def mlflow_scores(client) -> Callable[[str], tuple[float, float]]:
    """For ``wait_tasks``: a finished run's (best validation AUROC, its ΔAUROC) from its MLflow run id."""
    def scores(run_id: str) -> tuple[float, float]:
        m = client.get_run(run_id).data.metrics
        return m.get("best/val/auroc_mean", math.nan), m.get("best/val/delta_auroc_mean", math.nan)
    return scores


def wait_tasks(refs: Sequence, stage: str, arms: Sequence[str], scores: Optional[Callable[[Any], tuple]] = None):
    """``ray.get(refs)`` that counts them into the active view as they end (``arms[i]`` is the
    arm of ``refs[i]``); ``scores(result)`` may return (AUROC, ΔAUROC) for the view. A task's
    error is raised as ``ray.get`` raises it."""
    import ray
    if not refs:
        return []
    view = ACTIVE
    st = None
    if view is not None:
        planned: dict[str, int] = {}
        for a in arms:
            planned[a] = planned.get(a, 0) + 1
        st = view.stage(stage, planned)
        for a in arms:
            st.arm(a).running += 1
    arm_of_ref = {id(r): a for r, a in zip(refs, arms)}
    left = list(refs)
    while left:
        ready, left = ray.wait(left, num_returns=1, timeout=1.0)
        for r in ready:
            result = ray.get(r)
            if st is not None:
                a = st.arm(arm_of_ref[id(r)])
                a.running -= 1
                a.done += 1
                a.progress += 1.0
                if scores is not None:
                    a.offer(*scores(result))
        if view is not None:
            view.refresh()
    if st is not None:
        view.end(st)
    return ray.get(list(refs))
