"""The maths of PPO and GRPO on padded token tensors, independent of any model.

Shapes: per-token tensors are (B, T) over the response tokens, ``mask`` is 1 on real tokens
(up to and including the end-of-sequence token) and 0 on padding; per-sequence tensors are (B,).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 when there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance over the masked positions (and zero mean when ``shift_mean``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Per-token k1 estimate of KL(policy || reference): log pi - log ref, clamped at 0 as the paper does."""
    kl = logp - ref_logp
    return kl.clamp(min=0.0) if clamp else kl


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate (exp(r) - r - 1 with r = log ref - log pi): unbiased and never negative."""
    r = ref_logp - logp
    return torch.expm1(r) - r


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef x KL on every token, plus the sequence score on its last real token."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns (advantages, returns = advantages + values).

    The value after a sequence's last real token is 0 (the episode ends there).
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean of max(-A r, -A clip(r, 1-e, 1+e)); returns (loss, clipped fraction)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).to(logp.dtype), mask)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """0.5 x mean of max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, -c, c)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dimension (float32)."""
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1)


def group_advantages(
    scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO: each score minus its group's mean (and divided by its std); groups are consecutive rows."""
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    grouped = scores.float().view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale_by_std and group_size > 1:
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    return centred.view(-1)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO: the clipped surrogate with one advantage per sequence plus kl_coef x k3 KL to the reference.

    Returns (loss, clipped fraction, mean KL).
    """
    per_token = advantages.to(logp.dtype)[:, None].expand_as(logp)
    surrogate, clipfrac = clipped_policy_loss(logp, old_logp, per_token, mask, clip)
    kl = masked_mean(kl_k3(logp, ref_logp), mask)
    return surrogate + kl_coef * kl, clipfrac, kl
