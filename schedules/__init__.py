"""Per-step task weights: orderings, warm start, curricula, and task weighting."""
from schedules.base import Joint, Schedule
from schedules.weighting import Equal, Weighting
from schedules.factory import build_schedule, build_weighting

__all__ = ["Schedule", "Joint", "Weighting", "Equal", "build_schedule", "build_weighting"]
