"""One RL step's experience: prompts, sampled answers, old/reference log-probs, values, rewards, advantages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import losses as L
from .config import RLConfig
from .data import RLSample
from .policy import ActorCritic, Prompts, Responses, encode_prompts, sample
from .rewards import Judge, shape_rewards


@dataclass
class Experience:
    """A rollout batch, everything on CPU except the prompt embeddings (on the model's device)."""

    prompts: Prompts
    responses: Responses
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    old_values: torch.Tensor | None
    scores: torch.Tensor  # shaped sequence rewards (B,)
    advantages: torch.Tensor  # (B, T) for PPO, (B,) for GRPO
    returns: torch.Tensor | None
    judged_valid: torch.Tensor
    judged_raw: torch.Tensor


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def collect(ac: ActorCritic, samples: Sequence[RLSample], judge: Judge, cfg: RLConfig) -> Experience:
    """Sample answers with the current policy and turn them into advantages (PPO: GAE; GRPO: group-relative)."""
    model = ac.model
    prompts = encode_prompts(
        model, [s.image for s in samples], [s.prompt for s in samples], bool(cfg.inject_safety_tokens)
    )
    labels = [s.label for s in samples]
    if cfg.algorithm == "grpo":
        prompts = prompts.repeat(cfg.group_size)
        labels = [label for label in labels for _ in range(cfg.group_size)]
    responses = sample(model, prompts, cfg.max_new_tokens, cfg.temperature)
    old_logp, ref_logp, old_values = [], [], []
    for rows in _chunks(len(labels), cfg.per_device_batch_size):
        args = (prompts.embeds[rows], prompts.mask[rows], responses.ids[rows], responses.mask[rows])
        logp, ref, values = ac.rollout_logprobs(*args)
        old_logp.append(logp.float().cpu())
        ref_logp.append(ref.float().cpu())
        if values is not None:
            old_values.append(values.float().cpu())
    logp, ref = torch.cat(old_logp), torch.cat(ref_logp)
    values = torch.cat(old_values) if old_values else None
    judged = judge(responses.texts, labels)
    scores = shape_rewards(
        judged,
        responses.lengths,
        responses.finished,
        cfg.max_new_tokens,
        length_bonus=cfg.length_bonus,
        stop_penalty=cfg.stop_penalty,
        mask_na=cfg.mask_na,
    )
    mask = responses.mask.float()
    returns = None
    if cfg.algorithm == "ppo":
        kl = L.kl_k1(logp, ref) * mask
        rewards = L.token_rewards(scores, kl, mask, cfg.kl_coef) * cfg.reward_scale
        advantages, returns = L.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = L.whiten(advantages, mask)
    else:
        advantages = L.group_advantages(scores, cfg.group_size)
    return Experience(prompts, responses, logp, ref, values, scores, advantages, returns, judged.valid, judged.raw)


def minibatch_loss(ac, exp: Experience, rows: torch.Tensor, cfg: RLConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one micro-batch of the experience (``ac`` may be the accelerate-wrapped module)."""
    mask = exp.responses.mask[rows].float()
    logp, entropy, values = ac(
        exp.prompts.embeds[rows], exp.prompts.mask[rows], exp.responses.ids[rows], exp.responses.mask[rows]
    )
    device = logp.device
    mask = mask.to(device)
    old_logp, ref_logp = exp.old_logp[rows].to(device), exp.ref_logp[rows].to(device)
    entropy_mean = L.masked_mean(entropy, mask)
    stats: dict[str, float] = {"entropy": entropy_mean.item()}
    if cfg.algorithm == "ppo":
        pg, clipfrac = L.clipped_policy_loss(logp, old_logp, exp.advantages[rows].to(device), mask, cfg.cliprange)
        vf = L.clipped_value_loss(
            values, exp.old_values[rows].to(device), exp.returns[rows].to(device), mask, cfg.cliprange_value
        )
        loss = pg + cfg.vf_coef * vf - cfg.entropy_coef * entropy_mean
        stats.update(pg_loss=pg.item(), vf_loss=vf.item(), clipfrac=clipfrac.item())
    else:
        loss, clipfrac, kl = L.grpo_loss(
            logp, old_logp, ref_logp, exp.advantages[rows].to(device), mask, cfg.cliprange, cfg.kl_coef
        )
        loss = loss - cfg.entropy_coef * entropy_mean
        stats.update(pg_loss=loss.item(), clipfrac=clipfrac.item(), kl_k3=kl.item())
    return loss, stats
