"""Task weighting: turns per-task losses and the ordering's weights into gradients.

The ordering says which tasks count at a step (0/1 or fractional weights); the weighting
says how the counted tasks are balanced. Both compose: a task the ordering switches off
contributes no gradient whatever the weighting.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn


class Weighting(nn.Module):
    """backward(losses [T], weights [T], model, known [T]) -> float (the objective): how the
    scheduled task losses are combined into gradients. What is not a task's loss (a coupling's
    penalty) the engine adds once, for every weighting alike.

    ``known``: labelled samples per task in the batch (a task without any has loss 0 there and
    says nothing about how it is doing). A weighting registered in config/registry.py WEIGHTINGS
    is built by its ``from_config(cfg, n_tasks)`` (``cfg``: the config's schedule section); one
    whose ``from_config`` also names ``seed`` or ``task_names`` gets the run's train.seed and
    task names. Buffers are checkpointed with the run; what must survive a resume is a buffer."""

    @classmethod
    def from_config(cls, cfg, n_tasks: int) -> "Weighting":
        return cls()

    def backward(self, losses: torch.Tensor, weights: torch.Tensor, model: nn.Module,
                 known: Optional[torch.Tensor] = None) -> float:
        """Backpropagate the combined objective; subclasses decide how tasks are combined."""
        raise TypeError(f"{type(self).__name__} does not define backward()")

    def after_step(self) -> None:
        """Called after the optimizer step (GradNorm renormalizes its weights here)."""

    def report(self) -> dict[str, float]:
        return {}


class Equal(Weighting):
    def backward(self, losses, weights, model, known=None):
        total = (weights * losses).sum()
        total.backward()
        return float(total.detach())


class Uncertainty(Weighting):
    """Kendall et al. 2018: each task's loss scaled by exp(-s_t) plus s_t/2, s_t = log σ_t²
    learned with the model."""

    def __init__(self, n_tasks: int):
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(n_tasks))

    @classmethod
    def from_config(cls, cfg, n_tasks: int) -> "Weighting":
        return cls(n_tasks)

    def backward(self, losses, weights, model, known=None):
        total = (weights * (torch.exp(-self.log_var) * losses + 0.5 * self.log_var)).sum()
        total.backward()
        return float(total.detach())

    def report(self):
        return {"weighting/log_var_mean": float(self.log_var.detach().mean())}


def counted_tasks(weights: torch.Tensor, known: Optional[torch.Tensor]) -> torch.Tensor:
    """The tasks that count at a step, as a bool mask [T]: a nonzero ordering weight and, when
    ``known`` is given, at least one labelled sample in the batch."""
    on = weights != 0
    if known is not None:
        on &= known.to(weights.device) > 0
    return on


def per_task_gradients(losses: torch.Tensor, params: Sequence[torch.Tensor], chunk: int) -> torch.Tensor:
    """[T, P] gradients of each task's loss with respect to ``params``, flattened; the graph is
    kept for the caller's own backward.

    On CUDA one vectorized backward per chunk of tasks (``is_grads_batched``); on the CPU one
    backward per task, which measured 3.7x faster there (vmap's batching rules for conv and
    pooling backward are slow on CPU)."""
    n = losses.shape[0]
    rows = []
    if losses.device.type == "cuda":
        eye = torch.eye(n, device=losses.device, dtype=losses.dtype)
        for start in range(0, n, chunk):
            cot = eye[start:start + chunk]
            grads = torch.autograd.grad(losses, params, grad_outputs=cot, is_grads_batched=True,
                                        retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros(cot.shape[0], *p.shape, device=p.device))
                                   .reshape(cot.shape[0], -1) for g, p in zip(grads, params)], dim=1))
        return torch.cat(rows, dim=0)
    for i in range(n):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def last_shared_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Parameters of the last layer shared by all tasks (GradNorm's W)."""
    names = list(getattr(model, "shared_layer_names", []))
    if not names:
        raise ValueError("schedule.weighting=gradnorm needs a shared layer (model.sharing.shared_layers >= 1)")
    return list(model.layers[names[-1]].parameters())


class PCGrad(Weighting):
    """Yu et al. 2020 on the shared parameters: each task's gradient loses its component
    along any other task's gradient it conflicts with (negative inner product), in a random
    order per step; towers get their ordinary gradients."""

    def __init__(self, n_tasks: int, seed: int = 0, chunk: int = 32):
        super().__init__()
        self.chunk = chunk
        self.gen = np.random.default_rng([seed, 53])
        self.last_conflicts = 0.0

    @classmethod
    def from_config(cls, cfg, n_tasks: int) -> "Weighting":
        return cls(n_tasks, seed=0, chunk=cfg.per_task_grad_chunk)

    @staticmethod
    def project_weights(gram: torch.Tensor, order: Sequence[int]) -> tuple[torch.Tensor, int]:
        """The projection on the Gramian G [T, T] of the gradients: W [T, T] with the projected
        gradients W @ grads, and the number of conflicting pairs met. Row i of W holds g_i's
        coefficients, so g_i · g_j is (W G)_ij: T small steps instead of T passes over [T, P]
        (at T = 164, P = 200,000: 0.4 s instead of 3.0 s; the same arithmetic up to rounding)."""
        gram = gram.double()
        n = gram.shape[0]
        W = torch.eye(n, dtype=torch.float64, device=gram.device)
        conflicts = 0
        for j in order:
            sq = gram[j, j]
            if sq == 0:
                continue
            dots = W @ gram[:, j]
            hit = dots < 0
            hit[j] = False
            conflicts += int(hit.sum())
            if hit.any():
                W[hit, j] -= dots[hit] / sq
        return W, conflicts

    @classmethod
    def project(cls, grads: torch.Tensor, order: Sequence[int]) -> tuple[torch.Tensor, int]:
        """grads [T, P] -> projected [T, P] and the number of conflicting pairs met."""
        W, conflicts = cls.project_weights(grads @ grads.T, order)
        return (W.to(grads.dtype) @ grads), conflicts

    def backward(self, losses, weights, model, known=None):
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        weighted = weights * losses
        total = weighted.sum()
        if shared:
            active = torch.nonzero(weights != 0).flatten()
            g = per_task_gradients(weighted[active], shared, self.chunk) if len(active) else None
        total.backward()
        if shared and g is not None and len(active) > 1:
            with torch.no_grad():
                W, conflicts = self.project_weights(g @ g.T, self.gen.permutation(len(active)).tolist())
                # What the backward put beyond the tasks' own gradients is kept.
                delta = W.sum(0).to(g.dtype) @ g - g.sum(0)
            self.last_conflicts = conflicts / (len(active) * (len(active) - 1))
            offset = 0
            for p in shared:
                n = p.numel()
                p.grad = p.grad + delta[offset:offset + n].view_as(p).to(p.dtype)
                offset += n
        return float(total.detach())

    def report(self):
        return {"weighting/conflict_frac": float(self.last_conflicts)}


class GradNorm(Weighting):
    """Chen et al. 2018: learned task weights w_t whose gradients pull each task's gradient
    norm on the last shared layer towards mean norm × (relative inverse training rate)^α."""

    def __init__(self, n_tasks: int, alpha: float = 1.5, chunk: int = 32):
        super().__init__()
        self.alpha = alpha
        self.chunk = chunk
        self.task_weights = nn.Parameter(torch.ones(n_tasks))
        self.register_buffer("initial_loss", torch.full((n_tasks,), float("nan")))
        self.last_norms = torch.zeros(n_tasks)

    @classmethod
    def from_config(cls, cfg, n_tasks: int) -> "Weighting":
        return cls(n_tasks, alpha=cfg.gradnorm_alpha)

    def backward(self, losses, weights, model, known=None):
        params = [p for p in last_shared_parameters(model) if p.requires_grad]
        active = torch.nonzero(weights != 0).flatten()
        with torch.no_grad():
            fresh = torch.isnan(self.initial_loss) & (weights != 0)
            self.initial_loss[fresh] = losses.detach()[fresh]
        # Per-task gradient norms of the unweighted losses; ||∇(w L)|| = w ||∇L||.
        g = per_task_gradients(losses[active], params, self.chunk)
        base = g.norm(dim=1).detach()
        w = self.task_weights.detach()[active]
        norms = w * base
        with torch.no_grad():
            ratio = losses.detach()[active] / self.initial_loss[active].clamp(min=1e-12)
            r = ratio / ratio.mean().clamp(min=1e-12)
            target = norms.mean() * r.pow(self.alpha)
            grad_w = torch.zeros_like(self.task_weights)
            grad_w[active] = torch.sign(norms - target) * base
        total = (weights * self.task_weights.detach() * losses).sum()
        total.backward()
        self.task_weights.grad = grad_w
        self.last_norms = torch.zeros_like(self.task_weights.detach())
        self.last_norms[active] = norms
        return float(total.detach())

    def after_step(self):
        with torch.no_grad():
            w = self.task_weights.clamp_(min=1e-3)
            w.mul_(len(w) / w.sum())

    def report(self):
        return {"weighting/gradnorm_weight_std": float(self.task_weights.detach().std()),
                "weighting/grad_norm_mean": float(self.last_norms.mean())}


class FAMO(Weighting):
    """Liu et al. 2023 (FAMO): task logits xi, weights z = softmax(xi); the step follows
    sum_t c z_t grad log l_t (c normalizes), one backward pass whatever T. After each step the
    logits move (Adam, lr ``lr``, L2 ``gamma``) along the softmax Jacobian applied to each task's
    drop in log loss, so a task whose loss fell less gains weight.

    The drop is measured between consecutive batches (this step's losses against the last
    step's), not by a second forward pass over the same batch: that keeps the cost O(1) at the
    price of batch noise in the update. A task with no labelled sample in a batch (``known``
    0), or switched off by the ordering, is left out of that step's objective and of the logits
    update it would take part in, so its log(0) never enters."""

    def __init__(self, n_tasks: int, lr: float = 0.025, gamma: float = 0.01, eps: float = 1e-8):
        super().__init__()
        self.lr, self.gamma, self.eps = lr, gamma, eps
        self.register_buffer("logits", torch.zeros(n_tasks))
        self.register_buffer("adam_m", torch.zeros(n_tasks))
        self.register_buffer("adam_v", torch.zeros(n_tasks))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_loss", torch.full((n_tasks,), float("nan")))

    @classmethod
    def from_config(cls, cfg, n_tasks: int) -> "Weighting":
        return cls(n_tasks, lr=cfg.famo_lr, gamma=cfg.famo_gamma)

    def weights(self, active: torch.Tensor) -> torch.Tensor:
        """z over the active tasks (0 elsewhere), summing to 1."""
        z = torch.softmax(self.logits.masked_fill(~active, float("-inf")), 0)
        return torch.nan_to_num(z, nan=0.0)

    def update_logits(self, loss: torch.Tensor, active: torch.Tensor) -> None:
        """One Adam step of the logits from the drop in log loss since the last call."""
        both = active & torch.isfinite(self.prev_loss)
        if both.any():
            delta = torch.zeros_like(self.logits)
            delta[both] = torch.log(self.prev_loss[both] + self.eps) - torch.log(loss[both] + self.eps)
            z = self.weights(both)
            grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits * both
            b1, b2 = 0.9, 0.999
            self.adam_t += 1
            t = int(self.adam_t)
            self.adam_m.mul_(b1).add_((1 - b1) * grad)
            self.adam_v.mul_(b2).add_((1 - b2) * grad * grad)
            step = self.lr * (self.adam_m / (1 - b1 ** t)) / ((self.adam_v / (1 - b2 ** t)).sqrt() + 1e-8)
            self.logits.sub_(step * both)
        self.prev_loss[active] = loss[active]

    def backward(self, losses, weights, model, known=None):
        active = counted_tasks(weights, known)
        with torch.no_grad():
            self.update_logits(losses.detach(), active)
            z = self.weights(active) * weights
            d = losses.detach().clamp(min=0) + self.eps
            c = (z / d).sum().clamp(min=self.eps)
        if active.any():
            logs = torch.log(losses.clamp(min=0)[active] + self.eps)
            total = (z[active] / c * logs).sum()
        else:
            total = 0.0 * losses.sum()
        total.backward()
        return float(total.detach())

    def report(self):
        z = torch.softmax(self.logits, 0)
        return {"weighting/famo_weight_max": float(z.max()), "weighting/famo_weight_min": float(z.min())}


class RandomLoss(Weighting):
    """Random loss weighting (Lin et al. 2021, "Reasonable effectiveness of random weighting"):
    each step the counted tasks' losses are weighted by softmax(z), z ~ N(0, I), times the
    ordering's weights. ``scale`` tasks multiplies the softmax by the number of counted tasks
    (weights of mean one, equal weighting's scale); native keeps weights summing to one.

    A task counts when the ordering gives it a nonzero weight and the batch labels it (``known``).
    z is drawn for every task from a generator seeded by (seed, step), so the same seed gives
    the same weights, a task's draw does not depend on which others count, and a run resumed
    from a checkpoint (the step counter is a buffer) draws what it would have drawn."""

    def __init__(self, n_tasks: int, seed: int = 0, scale: str = "tasks"):
        super().__init__()
        self.n_tasks, self.seed, self.scale = n_tasks, seed, scale
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._max = [0.0, 0]

    @classmethod
    def from_config(cls, cfg, n_tasks: int, seed: int = 0) -> "Weighting":
        return cls(n_tasks, seed=seed, scale=cfg.aggregate_scale)

    def draw(self, counted: torch.Tensor) -> torch.Tensor:
        """The step's loss weights [T] (0 for a task that does not count)."""
        z = np.random.default_rng([self.seed, 31, int(self.steps)]).standard_normal(self.n_tasks)
        z = torch.as_tensor(z, dtype=torch.float32, device=counted.device)
        lam = torch.nan_to_num(torch.softmax(z.masked_fill(~counted, float("-inf")), 0), nan=0.0)
        return lam * counted.sum() if self.scale == "tasks" else lam

    def backward(self, losses, weights, model, known=None):
        counted = counted_tasks(weights, known)
        lam = self.draw(counted).to(losses.dtype)
        total = (lam * weights * losses).sum()
        total.backward()
        m = int(counted.sum())
        if m:
            self._max[0] += float(lam.max() / lam.sum()) * m
            self._max[1] += 1
        self.steps += 1
        return float(total.detach())

    def report(self):
        """The mean, since the last report, of the largest weight relative to the mean weight."""
        total, n = self._max
        self._max = [0.0, 0]
        return {"weighting/random_weight_max": total / n} if n else {}


def resolve_task_weights(value, n_tasks: int, task_names: Optional[Sequence[str]] = None) -> list[float]:
    """``schedule.task_weights`` as one weight per task: a list of ``n_tasks`` weights, or a
    mapping task name -> weight (the others 1.0); None is all 1.0."""
    if value is None:
        return [1.0] * n_tasks
    if isinstance(value, dict):
        if task_names is None:
            raise ValueError("schedule.task_weights as a mapping needs the run's task names; give a list instead")
        names = list(task_names)
        unknown = [k for k in value if k not in names]
        if unknown:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"schedule.task_weights: {unknown[0]!r} is not among the run's tasks ({shown})")
        out = [float(value.get(t, 1.0)) for t in names]
        if not any(w > 0 for w in out):
            raise ValueError("schedule.task_weights: at least one task needs a weight > 0")
        return out
    if len(value) != n_tasks:
        raise ValueError(f"schedule.task_weights has {len(value)} weights; the run has {n_tasks} tasks "
                         "(give one per task, or a mapping task name -> weight)")
    return [float(w) for w in value]


class Fixed(Weighting):
    """The scheduled task losses summed with fixed weights (``schedule.task_weights``), read when
    the weighting is built: not in the state_dict, so a run resumed with other weights (population
    based training mutates them between epochs) trains with the new ones."""

    def __init__(self, task_weights: Sequence[float], task_names: Optional[Sequence[str]] = None):
        super().__init__()
        self.register_buffer("task_weights", torch.as_tensor(task_weights, dtype=torch.float32), persistent=False)
        self.task_names = list(task_names) if task_names is not None else [str(i) for i in range(len(task_weights))]

    @classmethod
    def from_config(cls, cfg, n_tasks: int, task_names: Optional[Sequence[str]] = None) -> "Weighting":
        return cls(resolve_task_weights(cfg.task_weights, n_tasks, task_names), task_names)

    def backward(self, losses, weights, model, known=None):
        total = (weights * self.task_weights.to(losses.dtype) * losses).sum()
        total.backward()
        return float(total.detach())

    def report(self):
        # Each epoch, so that a schedule that changes them (PBT) shows in the run's charts.
        return {f"schedule/task_weight/{t}": float(w) for t, w in zip(self.task_names, self.task_weights.tolist())}
