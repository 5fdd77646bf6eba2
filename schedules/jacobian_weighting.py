"""Jacobian weightings from TorchJD: the per-task gradients of the shared parameters, aggregated.

Each arm computes the [m, P] Jacobian of the m counted tasks' (ordering-weighted) losses with
respect to the shared trunk's parameters, hands it to a TorchJD aggregator (UPGrad, Nash-MTL,
CAGrad, ...) and puts the aggregate in the shared parameters' ``.grad``; towers, group layers and
output units get the ordinary gradient of their own task's loss, as TorchJD's ``mtl_backward``
gives them. A task counts at a step when the ordering gives it a nonzero weight and the batch
holds at least one labelled sample of it (``known > 0``): any other is left out of the Jacobian,
since its zero row would pull a min-norm or projection method towards no step at all. With
fewer than two counted tasks there is nothing to balance and the step is the ordinary gradient.

Cost: m backward passes per step (``per_task_gradients``) plus the aggregator's own solve on
the m x m Gramian; see bench/weighting.py and docs/concepts/weightings.md.
"""
from __future__ import annotations

import warnings
from typing import ClassVar, Optional

import numpy as np
import torch
from torchjd import aggregation as jd

from mtlsweep.schedules.weighting import Weighting, counted_tasks, per_task_gradients

SCALES = ("tasks", "native")


def _flat(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


class JacobianWeighting(Weighting):
    """A TorchJD aggregator applied to the counted tasks' Jacobian on the shared parameters.

    ``scale``: ``tasks`` multiplies the aggregate of an aggregator whose weights sum to one
    (``mean_scale``) by the number of counted tasks, so that a step has the scale of equal
    weighting's sum and the same learning rate means the same thing across arms; ``native``
    keeps TorchJD's. Randomized aggregators draw from a generator seeded by (seed, step), so the
    draws neither disturb the training's random stream nor differ on resume.

    ``report()`` gives the means since the last report (one epoch in the engine) of the cosine
    between the aggregate and the plain sum of the task gradients, and of the spread (std/mean)
    of the aggregator's task weights where it has any."""

    mean_scale: ClassVar[bool] = True
    randomized: ClassVar[bool] = False

    def __init__(self, n_tasks: int, *, chunk: int = 32, scale: str = "tasks", seed: int = 0):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"schedule.aggregate_scale={scale!r}: must be one of {', '.join(SCALES)}")
        self.n_tasks, self.chunk, self.scale, self.seed = n_tasks, chunk, scale, seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._aggregators: dict[int, jd.Aggregator] = {}
        self._sums: dict[str, list] = {}

    @classmethod
    def options(cls, cfg) -> dict:
        """The arm's own settings from the schedule section."""
        return {}

    @classmethod
    def from_config(cls, cfg, n_tasks: int, seed: int = 0) -> "Weighting":
        return cls(n_tasks, chunk=cfg.per_task_grad_chunk, scale=cfg.aggregate_scale, seed=seed, **cls.options(cfg))

    def make(self, m: int) -> jd.Aggregator:
        """The TorchJD aggregator for m counted tasks: what each registered arm defines."""
        raise NotImplementedError(f"{type(self).__name__} defines no aggregator")

    def aggregator(self, m: int) -> jd.Aggregator:
        """The aggregator for m counted tasks, built once per m (a stateful one holds m-sized state)."""
        if m not in self._aggregators:
            self._aggregators[m] = self.make(m)
        return self._aggregators[m]

    def _step_seed(self) -> int:
        return int(np.random.SeedSequence([self.seed, 29, int(self.steps)]).generate_state(1)[0])

    def combine(self, J: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(aggregate [P], task weights [m] or None) of a Jacobian [m, P]."""
        agg = self.aggregator(J.shape[0])
        devices = list(range(torch.cuda.device_count())) if J.is_cuda else []
        with torch.random.fork_rng(devices=devices, enabled=self.randomized):
            if self.randomized:
                seed = self._step_seed()
                torch.random.default_generator.manual_seed(seed)
                if J.is_cuda:
                    torch.cuda.manual_seed_all(seed)
            if isinstance(agg, jd.WeightedAggregator):
                w = agg.weighting(J)
                return w @ J, w
            return agg(J), None

    def shared_gradient(self, weighted: torch.Tensor, active: torch.Tensor, shared: list[torch.Tensor]
                        ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(aggregate [P], task weights or None, plain sum of the task gradients or None)."""
        J = per_task_gradients(weighted[active], shared, self.chunk).detach()
        with torch.no_grad():
            vec, w = self.combine(J)
            return vec, w, J.sum(0)

    def backward(self, losses, weights, model, known=None):
        weighted = weights * losses
        total = weighted.sum()
        active = torch.nonzero(counted_tasks(weights, known)).flatten()      # indices of the counted tasks
        shared = [p for p in model.shared_parameters() if p.requires_grad] if model is not None else []
        if not shared or len(active) < 2:
            total.backward()
            self.steps += 1
            return float(total.detach())
        vec, w, plain = self.shared_gradient(weighted, active, shared)
        if self.scale == "tasks" and self.mean_scale:
            vec = vec * len(active)
        # Towers get their own loss's gradient; the shared trunk's comes from the aggregate only,
        # so the backward stops at the trunk's output.
        ids = {id(p) for p in shared}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        if others:
            total.backward(inputs=others)
        offset = 0
        for p in shared:
            n = p.numel()
            g = vec[offset:offset + n].reshape(p.shape).to(p.dtype).clone()
            p.grad = g if p.grad is None else p.grad + g
            offset += n
        self._record(vec, w, plain)
        self.steps += 1
        return float(total.detach())

    def _note(self, name: str, value: float) -> None:
        total = self._sums.setdefault(name, [0.0, 0])
        total[0] += value
        total[1] += 1

    def _record(self, vec, w, plain) -> None:
        if plain is not None:
            den = float(vec.norm() * plain.norm())
            if den > 0:
                self._note("weighting/jd_cos_to_sum", float(vec @ plain) / den)
        if w is not None and len(w) > 1 and float(w.mean().abs()) > 0:
            self._note("weighting/jd_weight_cv", float(w.std() / w.mean().abs()))

    def report(self):
        out = {name: total / n for name, (total, n) in self._sums.items() if n}
        self._sums = {}
        return out


class UPGrad(JacobianWeighting):
    """Quinton & Rey 2024 (Jacobian descent): each task gradient projected onto the dual cone of
    all of them, the projections averaged; never conflicts with any task. One QP per task."""

    def make(self, m):
        return jd.UPGrad()


class DualProj(JacobianWeighting):
    """Lopez-Paz & Ranzato 2017 (GEM's projection): the mean gradient projected onto the dual
    cone of the task gradients. One QP per step."""

    def make(self, m):
        return jd.DualProj()


class MGDA(JacobianWeighting):
    """Désidéri 2012, Sener & Koltun 2018: the minimum-norm convex combination of the task
    gradients (Frank-Wolfe on the Gramian)."""

    def make(self, m):
        return jd.MGDA()


class IMTLG(JacobianWeighting):
    """Liu et al. 2021 (IMTL-G): weights summing to one whose combination has equal projections
    onto every task's unit gradient (TorchJD's pseudo-inverse generalization)."""

    def make(self, m):
        return jd.IMTLG()


class AlignedMTL(JacobianWeighting):
    """Senushkin et al. 2023: the Jacobian's singular values equalized (its condition number made
    1) before averaging; ``scale_mode`` picks the singular value the result is scaled to."""

    def __init__(self, n_tasks, *, scale_mode: str = "min", **kw):
        super().__init__(n_tasks, **kw)
        self.scale_mode = scale_mode

    @classmethod
    def options(cls, cfg):
        return {"scale_mode": cfg.aligned_mtl_scale}

    def make(self, m):
        return jd.AlignedMTL(scale_mode=self.scale_mode)


class CAGrad(JacobianWeighting):
    """Liu et al. 2021: the update maximizing the worst task's improvement within a ball of
    radius c·‖mean gradient‖ around the mean gradient (cvxpy + Clarabel on the Gramian)."""

    def __init__(self, n_tasks, *, c: float = 0.4, **kw):
        super().__init__(n_tasks, **kw)
        self.c = c

    @classmethod
    def options(cls, cfg):
        return {"c": cfg.cagrad_c}

    def make(self, m):
        return jd.CAGrad(c=self.c)


class FairGrad(JacobianWeighting):
    """Ban & Ji 2024: α-fair utility maximization, G w = w^(-1/α) solved by least squares
    (α = 1 is proportional fairness, Nash-MTL's). The weights keep their own scale."""

    mean_scale = False

    def __init__(self, n_tasks, *, alpha: float = 1.0, **kw):
        super().__init__(n_tasks, **kw)
        self.alpha = alpha

    @classmethod
    def options(cls, cfg):
        return {"alpha": cfg.fairgrad_alpha}

    def make(self, m):
        return jd.FairGrad(alpha=self.alpha)


class GradDrop(JacobianWeighting):
    """Chen et al. 2020: per coordinate, the gradients of one sign kept with probability given by
    the sign purity, on the parameters' gradients (TorchJD's form). A sum, not a mean."""

    mean_scale = False
    randomized = True

    def make(self, m):
        return jd.GradDrop()


class ConFIG(JacobianWeighting):
    """Liu et al. 2024 (ConFIG): the direction with equal positive cosine to every task gradient,
    with the length of the sum of the gradients' projections onto it. A sum, not a mean."""

    mean_scale = False

    def make(self, m):
        return jd.ConFIG()


class NashMTL(JacobianWeighting):
    """Navon et al. 2022: task weights α solving the bargaining game G α = 1/α (cvxpy + ECOS,
    ``optim_niter`` sequential convex steps), the step's norm clipped at ``max_norm`` (0 = no
    clipping); the weights keep that scale.

    TorchJD's Nash-MTL is stateful: each solve starts from the last solution. That state, the
    last α of every task, is the buffer ``alpha``, in the weighting's state_dict and so in the
    engine's checkpoint: a resumed run solves from where it stopped. With
    ``update_every`` k > 1 the weights are solved every k steps and reused in between (Nash-MTL-k
    in the paper), when the counted tasks are the same; a reused step needs one backward pass
    instead of m.

    From a start where a task's gradient opposes the others' weighted sum the solve fails and the
    last weights are kept (TorchJD's and the original code's behaviour); ``report()`` gives the
    fraction of such solves, ``weighting/nash_unsolved_frac``."""

    mean_scale = False

    def __init__(self, n_tasks, *, max_norm: float = 1.0, update_every: int = 1, optim_niter: int = 20, **kw):
        super().__init__(n_tasks, **kw)
        self.max_norm, self.update_every, self.optim_niter = max_norm, update_every, optim_niter
        self.register_buffer("alpha", torch.ones(n_tasks, dtype=torch.float64))
        self.register_buffer("solved_for", torch.zeros(n_tasks, dtype=torch.bool))

    @classmethod
    def options(cls, cfg):
        return {"max_norm": cfg.nash_max_norm, "update_every": cfg.nash_update_every,
                "optim_niter": cfg.nash_optim_niter}

    def make(self, m):
        # Reuse between solves is handled here (one backward pass), not by TorchJD's counter.
        return jd.NashMTL(n_tasks=m, max_norm=self.max_norm, update_weights_every=1, optim_niter=self.optim_niter)

    def shared_gradient(self, weighted, active, shared):
        mask = torch.zeros_like(self.solved_for)
        mask[active] = True
        if self.update_every > 1 and int(self.steps) % self.update_every and torch.equal(mask, self.solved_for):
            a = self.alpha[active].to(weighted.dtype)
            grads = torch.autograd.grad((a * weighted[active]).sum(), shared, retain_graph=True, allow_unused=True)
            vec = _flat(grads, shared).detach()
            norm = float(vec.norm())
            if self.max_norm > 0 and norm > self.max_norm:
                vec, a = vec * (self.max_norm / norm), a * (self.max_norm / norm)
            return vec, a.detach(), None
        J = per_task_gradients(weighted[active], shared, self.chunk).detach()
        agg = self.aggregator(len(active))
        agg.weighting.prvs_alpha = self.alpha[active].cpu().numpy()
        with torch.no_grad(), warnings.catch_warnings():
            # cvxpy: the problem is not DPP, so later solves are not faster than the first; known, harmless.
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            w = agg.weighting(J)
            # The bargaining problem has no solution from the last α when a task's gradient opposes
            # the others' weighted sum ((G α)_t < 0: ECOS says unbounded); TorchJD then keeps the
            # last α, as the original code does. How often that happens is reported.
            self._note("weighting/nash_unsolved_frac",
                       float(getattr(agg.weighting.prob, "status", None) not in ("optimal", "optimal_inaccurate")))
            self.alpha[active] = torch.as_tensor(np.asarray(agg.weighting.prvs_alpha, dtype=np.float64),
                                                 device=self.alpha.device)
            self.solved_for.copy_(mask)
            return w @ J, w, J.sum(0)
