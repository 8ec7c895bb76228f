"""PPO and GRPO maths against small cases worked out by hand (no model involved)."""

from __future__ import annotations

import math

import pytest
import torch

from safety_modules.training.rl import losses as L


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_gamma_lambda_one_gives_return_minus_value():
    # rewards 0, 0, 1 and values 0.5 everywhere: every advantage is 1 - 0.5, every return 1.
    adv, ret = L.gae(t([[0, 0, 1]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]]))
    assert adv.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert ret.flatten().tolist() == pytest.approx([1, 1, 1])


def test_gae_stops_at_the_last_real_token():
    # t1: delta = 1 + 0 (episode ends) - 0.4 = 0.6; t0: delta = 0 + 0.4 - 0.2 = 0.2, A0 = 0.2 + 0.6.
    # The padded position's value (9) and reward (5) must not leak in.
    adv, ret = L.gae(t([[0, 1, 5]]), t([[0.2, 0.4, 9.0]]), t([[1, 1, 0]]))
    assert adv.flatten().tolist() == pytest.approx([0.8, 0.6, 0.0])
    assert ret[0, :2].tolist() == pytest.approx([1.0, 1.0])


def test_gae_with_discounting():
    # gamma = lambda = 0.5: A1 = 1 - 0.4 = 0.6; delta0 = 0 + 0.5 * 0.4 - 0.2 = 0; A0 = 0 + 0.25 * 0.6 = 0.15.
    adv, _ = L.gae(t([[0, 1]]), t([[0.2, 0.4]]), t([[1, 1]]), gamma=0.5, lam=0.5)
    assert adv.flatten().tolist() == pytest.approx([0.15, 0.6])


def test_clipped_policy_loss_by_hand():
    # ratios 1.5, 1.5, 0.5, 0.5 with advantages +1, -1, +1, -1 and clip 0.2:
    # max(-1.5, -1.2) = -1.2; max(1.5, 1.2) = 1.5; max(-0.5, -0.8) = -0.5; max(0.5, 0.8) = 0.8 -> mean 0.15.
    old = torch.zeros(1, 4)
    logp = torch.log(t([[1.5, 1.5, 0.5, 0.5]]))
    loss, clipfrac = L.clipped_policy_loss(logp, old, t([[1, -1, 1, -1]]), torch.ones(1, 4), clip=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)


def test_clipped_policy_loss_ignores_padding():
    old = torch.zeros(1, 2)
    logp = torch.log(t([[1.0, 3.0]]))
    loss, _ = L.clipped_policy_loss(logp, old, t([[2.0, 100.0]]), t([[1, 0]]), clip=0.2)
    assert loss.item() == pytest.approx(-2.0)


def test_clipped_value_loss_by_hand():
    # V_old 0, V 0.5, return 1, clip 0.2: (0.5 - 1)^2 = 0.25, clipped (0.2 - 1)^2 = 0.64 -> 0.5 * 0.64.
    loss = L.clipped_value_loss(t([[0.5]]), t([[0.0]]), t([[1.0]]), t([[1]]), clip=0.2)
    assert loss.item() == pytest.approx(0.32)
    # inside the clip range both terms agree: 0.5 * (0.1 - 1)^2
    assert L.clipped_value_loss(t([[0.1]]), t([[0.0]]), t([[1.0]]), t([[1]]), 0.2).item() == pytest.approx(0.405)


def test_kl_estimators():
    logp, ref = t([[-1.0, -2.0]]), t([[-2.0, -1.0]])
    assert L.kl_k1(logp, ref).flatten().tolist() == pytest.approx([1.0, 0.0])  # clamped at 0 as published
    assert L.kl_k1(logp, ref, clamp=False).flatten().tolist() == pytest.approx([1.0, -1.0])
    # k3 = exp(r) - r - 1, r = ref - logp: r = -1 -> e^-1; r = 1 -> e - 2
    assert L.kl_k3(logp, ref).flatten().tolist() == pytest.approx([math.exp(-1), math.e - 2])
    assert L.kl_k3(ref, ref).abs().max().item() == 0.0


def test_token_rewards_put_the_score_on_the_last_real_token():
    rewards = L.token_rewards(t([2.0, -1.0]), t([[0.5, 1.0, 0.3], [0.2, 0.0, 0.0]]), t([[1, 1, 0], [1, 0, 0]]), 0.1)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 1.9, 0.0, -1.02, 0.0, 0.0])


def test_whiten():
    x = whitened = L.whiten(t([[1, 2, 3, 100]]), t([[1, 1, 1, 0]]))
    assert whitened[0, 3].item() == 0.0
    assert L.masked_mean(x, t([[1, 1, 1, 0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert whitened[0, :3].tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rel=1e-4)


def test_entropy():
    assert L.entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert L.entropy_from_logits(t([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_group_advantages_by_hand():
    # group 1: mean 0.5, sample std sqrt(1/3) -> +-0.5 / 0.57735 = +-0.866; group 2 all equal -> 0.
    adv = L.group_advantages(t([1, 0, 0, 1, 1, 1, 1, 1]), 4)
    assert adv.tolist() == pytest.approx([0.866, -0.866, -0.866, 0.866, 0, 0, 0, 0], abs=1e-3)
    assert L.group_advantages(t([1, 0]), 2, scale_by_std=False).tolist() == pytest.approx([0.5, -0.5])
    with pytest.raises(ValueError, match="groups of 3"):
        L.group_advantages(t([1, 0, 1, 0]), 3)


def test_grpo_loss_by_hand():
    # on-policy (ratio 1) and at the reference (KL 0): loss = -mean advantage over real tokens.
    logp = t([[-1.0, -2.0], [-0.5, -0.5]])
    mask = t([[1, 1], [1, 0]])
    loss, clipfrac, kl = L.grpo_loss(logp, logp, logp, t([1.0, -2.0]), mask, 0.2, 0.1)
    assert loss.item() == pytest.approx(-(1 + 1 - 2) / 3)
    assert kl.item() == 0.0 and clipfrac.item() == 0.0
    # a reference 1 nat below on every token: k3 = e^-1 per token -> + 0.1 e^-1
    loss2, _, kl2 = L.grpo_loss(logp, logp, logp - 1, t([1.0, -2.0]), mask, 0.2, 0.1)
    assert kl2.item() == pytest.approx(math.exp(-1))
    assert loss2.item() == pytest.approx(loss.item() + 0.1 * math.exp(-1))
