"""How much of each update a regularizer makes: the DPH term's (or the KL penalty's) share (DESIGN.md §1, Strength).

The DPH loss ``eta * token_mean(ell(x))`` has ``d ell / dx = 0`` at ``x = log pi - log pi_ref = 0``
(forward KL: ``e^x - 1``; JS and alpha likewise): a restoring force that acts only once the policy has
drifted from pi_ref on the rehearsed tokens. Its coefficient says little about its strength; these
per-update measures say how much it acts, on one scale for DPH and for the reverse-KL penalty:

- ``{term}_grad_share = ||g_term|| / (||g_rest|| + ||g_term||)``, with ``g_term`` the gradient of the
  regularizer as weighted in the loss (``eta * g_DPH``, ``kl_coef * g_KL``) and ``g_rest`` that of
  everything else in the same update (for DPH, the policy loss and any KL penalty);
- ``{term}_grad_cosine = cos(g_rest, g_term)``;
- ``{term}_update_share = ||D_term|| / (||D_rest|| + ||D_term||)``: the optimizer's parameter update
  ``D`` split in two. For AdamW the step is ``lr * m_hat / (sqrt(v_hat) + eps)`` (weight decay
  aside), linear in the first moment ``m``: ``m`` is split exactly into the moments of the two
  gradient streams (clipped as the update clipped them), and the second moment ``v`` is shared, so
  ``D_term + D_rest`` is the update AdamW takes. This is an approximation of what each term "does":
  ``v`` holds both, and without the term it would be smaller. The moments are kept here in fp32
  with the optimizer's betas and eps, so for ``paged_adamw_8bit`` (whose own states are 8-bit) they
  are AdamW's moments computed exactly, not that optimizer's quantized ones.

``UpdateShares.term(name)`` brackets the backward passes of one regularizer; the grads it adds are
that term's. ``measure`` is called after gradient clipping, before ``optimizer.step()``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch


class UpdateShares:
    """Per-update gradient and update shares of named regularizer terms (module docstring)."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer):
        self.params, self.optimizer = params, optimizer
        self.terms: dict[str, list[torch.Tensor]] = {}  # term -> its gradient in this update, per parameter
        self.first_moment = {"total": self._zeros()}  # "total" and each term: the split first moments
        self.second_moment = self._zeros()
        self.updates = 0

    def _zeros(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    def _grads(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p, dtype=torch.float32) if p.grad is None else p.grad.detach().float().clone()
                for p in self.params]

    def zero(self) -> None:
        """Forget the last update's term gradients (call with ``optimizer.zero_grad``)."""
        self.terms = {}

    @contextlib.contextmanager
    def term(self, name: str) -> Iterator[None]:
        """The gradients accumulated inside this block belong to regularizer ``name``."""
        before = self._grads()
        yield
        added = [after - b for after, b in zip(self._grads(), before)]
        self.terms[name] = [a + b for a, b in zip(self.terms[name], added)] if name in self.terms else added

    def all_reduce(self, accelerator) -> None:
        """Several processes: average the gradients, and the terms' parts of them, that each process
        accumulated alone (under ``no_sync``), as DDP would have."""
        for p in self.params:
            if p.grad is not None:
                p.grad.copy_(accelerator.reduce(p.grad, "mean"))
        self.terms = {name: [accelerator.reduce(g, "mean") for g in grads] for name, grads in self.terms.items()}

    def measure(self, clip_coef: float) -> dict[str, float]:
        """The shares of this update's terms, given the clipped gradients in ``p.grad`` and the factor
        ``clip_coef`` (<= 1) that clipping applied; advances the moments by one update."""
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group.get("betas", (0.9, 0.999))
        eps, lr = group.get("eps", 1e-8), float(group["lr"])
        total = self._grads()  # clipped: what the optimizer applies
        self.updates += 1
        bias1, bias2 = 1 - beta1 ** self.updates, 1 - beta2 ** self.updates
        for v, g in zip(self.second_moment, total):
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = [(v / bias2).sqrt_().add_(eps) for v in self.second_moment]
        for m, g in zip(self.first_moment["total"], total):
            m.mul_(beta1).add_(g, alpha=1 - beta1)
        metrics: dict[str, float] = {}
        for name, grads in self.terms.items():
            part = [clip_coef * g for g in grads]  # (clipped) gradient of the term
            moment = self.first_moment.setdefault(name, self._zeros())
            for m, g in zip(moment, part):
                m.mul_(beta1).add_(g, alpha=1 - beta1)
            rest = [t - p for t, p in zip(total, part)]
            term_norm, rest_norm = _norm(part), _norm(rest)
            dot = sum(float((a * b).sum()) for a, b in zip(part, rest))
            step_term = _norm([lr * m / bias1 / d for m, d in zip(moment, denom)])
            step_rest = _norm([lr * (mt - m) / bias1 / d for mt, m, d in zip(self.first_moment["total"], moment, denom)])
            metrics[f"{name}_grad_share"] = _share(term_norm, rest_norm)
            metrics[f"{name}_grad_cosine"] = dot / (term_norm * rest_norm) if term_norm * rest_norm > 0 else 0.0
            metrics[f"{name}_update_share"] = _share(step_term, step_rest)
        return metrics

    def state_dict(self) -> dict:
        return {"first_moment": self.first_moment, "second_moment": self.second_moment, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.first_moment, self.second_moment = state["first_moment"], state["second_moment"]
        self.updates = state["updates"]


def clip_coefficient(grad_norm: float, max_norm: float) -> float:
    """The factor ``torch.nn.utils.clip_grad_norm_`` scaled the gradients by (1 when not clipped)."""
    return min(1.0, max_norm / (grad_norm + 1e-6))


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


def _share(part: float, rest: float) -> float:
    return part / (part + rest) if part + rest > 0 else 0.0
