"""Per-step task weights: orderings, warm start, curricula, and task weighting."""
from mtlsweep.schedules.base import Joint, Schedule
from mtlsweep.schedules.weighting import Equal, Weighting
from mtlsweep.schedules.factory import build_schedule, build_weighting

__all__ = ["Schedule", "Joint", "Weighting", "Equal", "build_schedule", "build_weighting"]
