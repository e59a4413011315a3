"""Every term of the training objective, readable top to bottom next to DESIGN.md §1.

One optimizer step of every method minimizes

    L = aggregate(clipped_surrogate(D_exp rollouts))                              (1) policy gradient
        + kl_coef * aggregate(kl_penalty_per_token(D_exp rollouts))               (2) method "rkl" only
        + eta * aggregate(divergence_per_token(stored D_pef reference samples))   (3) methods "dph_*" only

(1) is GRPO/DAPO's clipped surrogate on on-policy rollouts of the exploration set D_exp, with
group-normalized advantages (DESIGN.md §1 "DPH-RL as released" step 2; papers/dph-rl.md §1.4e).
(2) is the reverse-KL baseline: a per-token k3 (or k1/k2) estimate of KL(pi || pi_ref) on the same
rollouts, needing the online reference (the policy with adapters disabled).
(3) is DPH-RL: the f-divergence *generator loss* on reference responses pre-sampled from pi_ref
for the near-perfect set D_pef, with their stored pi_ref log-probs, so no reference forward pass
(papers/dph-rl.md §1.4a-d). "aggregate" is token-mean over every masked token (verl's
``loss_agg_mode=token-mean``). MARA is a reward transform (``toy_bandits.mara``), applied by the
trainer before :func:`group_advantages`, with beta = ``kl_coef``: its augmented rewards only give
the uniform target together with term (2) at the same beta (papers/mara.md).
(3)'s ``eta`` is the released ``sft_loss_coeff`` x 0.125 (``config.eta_from_sft_loss_coeff``).

No divergence is defined here: every generator and KL estimator comes from
``toy_bandits.divergences`` (DESIGN.md §2, "one place per idea").

Deliberate departures from the released code (papers/dph-rl.md §1.3-1.5):

1. The forward-KL loss e^x - x - 1 is not clamped at +-10 (only x is clamped at +-20, as released);
   the same holds for the k3 reverse-KL penalty, whose x is not clamped either.
2. The reference batch (3) is aggregated on its own (its own token-mean, times eta) and added,
   rather than concatenated with the rollouts into one micro-batch and routed by ``data_type``.
3. "dapo" is clip-higher GRPO with no KL term; the released ``dapo.sh`` also adds a 0.01 k3 KL.
4. A group of identical rewards has zero advantage, and a group of one sample too (verl gives a
   single-sample group advantage = reward).
"""

from __future__ import annotations

import torch

from toy_bandits import divergences

from .config import METHODS, method_defaults  # noqa: F401  (the method table lives in config.py)


DPH_DIVERGENCES: tuple[str, ...] = ("forward_kl", "js", "alpha", "reverse_kl")
"""Divergences whose generator loss may regularize on reference samples (term (3))."""

AGGREGATIONS: tuple[str, ...] = ("token_mean", "sequence_mean")

LOG_RATIO_CLAMP = 20.0
"""|log pi - log pi_old| and |log pi - log pi_ref| are clamped here before exp, as released."""

def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages A_i = (r_i - mean_g r) / (std_g r + eps) within each group of rollouts of
    the same prompt (papers/dph-rl.md §1.4e; verl ``norm_adv_by_std_in_grpo``).

    ``rewards`` (N,) holds consecutive groups of ``group_size`` rows (prompt i occupies rows
    i*G..(i+1)*G-1, as ``rollout.generate`` returns them). std is the unbiased sample std, as in
    verl and TRL; ``scale_by_std=False`` gives Dr. GRPO's mean-centred rewards. A NaN reward (an
    unscorable completion: every reward function returned None) is left out of its group's mean and
    std and gets advantage 0, as in TRL.
    """
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size={group_size!r} must be >= 1 and divide {rewards.numel()} rewards")
    grouped = rewards.float().reshape(-1, group_size)  # (N/G, G)
    if grouped.isnan().any():
        scored = ~grouped.isnan()  # (N/G, G)
        mean = grouped.nanmean(dim=1, keepdim=True)  # (N/G, 1)
        advantages = grouped - mean
        if scale_by_std and group_size > 1:
            count = scored.sum(dim=1, keepdim=True).clamp(min=2)
            std = (advantages.nan_to_num(0.0).square().sum(dim=1, keepdim=True) / (count - 1)).sqrt()
            advantages = advantages / (std + eps)
        return advantages.nan_to_num(0.0).reshape(-1)  # (N,)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # (N/G, G)
    if scale_by_std and group_size > 1:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)  # (N/G, G)
    return advantages.reshape(-1)  # (N,)


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.28,
                      clip_ratio_c: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO clipped surrogate with clip-higher and dual clip (term (1); verl's
    ``compute_policy_loss``, papers/dph-rl.md §1.4e):

        ratio = exp(clamp(log pi - log pi_old, -20, 20))
        loss  = max(-A ratio, -A clip(ratio, 1 - eps_low, 1 + eps_high))
        loss  = min(loss, -A c)              only where A < 0 (dual clip, c = clip_ratio_c)

    ``advantages`` is (B,) (one per sequence, broadcast over tokens) or (B, T). Returns the
    (B, T) per-token loss and the fraction of masked tokens whose loss was clipped (either clip).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (B, 1)
    log_ratio = (logps - old_logps).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # (B, T)
    loss = torch.maximum(unclipped, clipped)  # (B, T)
    dual = -advantages * clip_ratio_c  # (B, T) or (B, 1)
    negative = advantages < 0  # (B, T) or (B, 1)
    dual_active = negative & (dual < loss)  # (B, T)
    per_token_loss = torch.where(negative, torch.minimum(loss, dual), loss)  # (B, T)
    was_clipped = (clipped > unclipped) | dual_active  # (B, T)
    clip_fraction = aggregate(was_clipped.float(), mask).detach()  # ()
    return per_token_loss, clip_fraction


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean") -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the tokens where ``mask`` is 1.

    * ``token_mean``: sum(loss * mask) / sum(mask), every token weighs the same (verl token-mean,
      DAPO; the released default);
    * ``sequence_mean``: the mean over rows of each row's token mean (original GRPO).
    """
    mask = mask.bool()  # (B, T)
    masked = per_token.masked_fill(~mask, 0.0)  # (B, T) garbage (even inf) under the mask is ignored
    if mode == "token_mean":
        return masked.sum() / mask.sum().clamp(min=1)
    if mode == "sequence_mean":
        per_row = masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # (B,)
        return per_row.mean()
    raise ValueError(f"mode={mode!r} is unknown; choose one of {AGGREGATIONS}")


def kl_penalty_per_token(logps: torch.Tensor, reference_logps: torch.Tensor,
                         estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of the reverse KL(pi || pi_ref) on on-policy tokens (term (2), the RKL
    baseline; papers/dph-rl.md §2): ``divergences.kl_estimator`` at x = log pi - log pi_ref,
    k1 = x, k2 = x^2/2, k3 = e^-x - 1 + x (released default ``low_var_kl``). Returns (B, T).
    """
    return divergences.kl_estimator(logps - reference_logps, estimator)  # (B, T)


def divergence_per_token(logps: torch.Tensor, reference_logps: torch.Tensor, divergence: str,
                         alpha: float = 0.5) -> torch.Tensor:
    """DPH-RL per-token generator loss on tokens of stored reference samples (term (3);
    DESIGN.md §1 step 2, papers/dph-rl.md §1.4a,b,d):

        x = clamp(log pi_theta - log pi_ref, -20, 20),  loss = f(e^x) - f'(1) (e^x - 1)

    i.e. e^x - x - 1 for ``forward_kl`` (DPH-F), u log u - (u+1) log((u+1)/2) for ``js`` (DPH-JS),
    the alpha generator for ``alpha``, x e^x - e^x + 1 for ``reverse_kl``. Its token mean over
    samples from pi_ref estimates D_f(pi_theta || pi_ref); every value is >= 0 and 0 at x = 0.
    Gradient for forward KL: (u - 1) grad log pi_theta, the rehearsal (NLL-like) gradient.
    Returns (B, T).
    """
    if divergence not in DPH_DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is not usable here; choose one of {DPH_DIVERGENCES}")
    x = (logps - reference_logps).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
    return divergences.generator_loss(x, divergence, alpha)  # (B, T)
