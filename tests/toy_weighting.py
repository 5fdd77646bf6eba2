"""A weighting from one file: registered by tests/test_registries.py, trained with, unregistered."""
from mtlsweep.schedules.weighting import Weighting


class HalfFirst(Weighting):
    """The first scheduled task at half weight, the others at full: a rule no shipped weighting has."""

    calls = 0

    def __init__(self, n_tasks: int):
        super().__init__()
        self.n_tasks = n_tasks

    @classmethod
    def from_config(cls, cfg, n_tasks):
        return cls(n_tasks)

    def backward(self, losses, weights, model, known=None):
        HalfFirst.calls += 1
        scale = weights.clone()
        scale[0] = scale[0] * 0.5
        total = (scale * losses).sum()
        total.backward()
        return float(total.detach())
