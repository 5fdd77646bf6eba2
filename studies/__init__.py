"""Studies built on the platform: the ground-truth study and the schedule study (scripts whose output is committed)."""
