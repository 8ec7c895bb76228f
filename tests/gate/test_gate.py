"""Gate.score and Gate.decide: the same scores and decisions as generate, without the language model."""

from __future__ import annotations

import pytest
import torch

from safety_modules import Gate, SafetyPolicy
from safety_modules.policy import PolicyError
from safety_modules.taxonomy import Taxonomy

HINT_ALL = {"name": "hint_all", "defaults": {"hint": 0.0, "refuse": None}}
REFUSE_ALL = {"name": "refuse_all", "defaults": {"hint": None, "refuse": 0.0}}


def lm_calls(model) -> list[int]:
    calls: list[int] = []
    model.language_model.register_forward_hook(lambda m, args, out: calls.append(1))
    return calls


@pytest.mark.device_sensitive
def test_decide_matches_generate_and_never_runs_the_language_model(tiny_model, photos, tol):
    policies = [SafetyPolicy.allow_all(), SafetyPolicy.from_dict(HINT_ALL), SafetyPolicy.from_dict(REFUSE_ALL)]
    prompts = ["What is this?", "Describe it.", "Read the sign."]
    gate = Gate(tiny_model)
    calls = lm_calls(tiny_model)
    decisions = gate.decide(photos, prompts, policies)
    assert calls == []
    assert [d.action for d in decisions] == ["allow", "hint", "refuse"]
    assert [d.policy for d in decisions] == ["allow_all", "hint_all", "refuse_all"]
    assert all(set(d.timings) == {"vision_s", "scoring_s", "generation_s", "total_s"} for d in decisions)
    answers = gate.generate(photos, prompts, policies, do_sample=False, max_new_tokens=2)
    for decision, answer in zip(decisions, answers):
        assert (decision.action, decision.rule, decision.level, decision.type, decision.hint) == (
            answer.decision.action,
            answer.decision.rule,
            answer.decision.level,
            answer.decision.type,
            answer.decision.hint,
        )
        for key, value in decision.level_probs.items():
            assert value == pytest.approx(answer.decision.level_probs[key], abs=tol["atol"] * 10)
    # score is the head alone: the probabilities the decisions were made from (score goes through
    # SafeLlava.assess, decide through the gate's own scoring, so this compares two paths)
    scores = gate.score(photos, prompts)
    decided = torch.tensor([list(d.level_probs.values()) for d in decisions])
    torch.testing.assert_close(scores.level_probs.cpu(), decided, **tol)
    assert gate.score(photos).level_probs.shape == (3, 4)
    assert calls  # only generate ran it


def test_the_gate_policy_is_the_default_and_a_call_can_override_it(tiny_model, photos):
    assert Gate(tiny_model).policy.name == "default"
    gate = Gate(tiny_model, SafetyPolicy.from_dict(REFUSE_ALL))
    assert [d.action for d in gate.decide(photos[:2], ["a", "b"])] == ["refuse", "refuse"]
    assert [d.action for d in gate.decide(photos[:2], ["a", "b"], SafetyPolicy.allow_all())] == ["allow", "allow"]
    assert gate.decide(photos[0], "a")[0].action == "refuse"  # one image, one prompt


def test_decide_fails_closed_when_scoring_breaks(tiny_model, photos):
    tiny_model.safety.head.query = torch.nn.Parameter(torch.zeros(1, 1, 3))  # wrong width: the head raises
    closed = Gate(tiny_model).decide(photos[:1], ["a"])[0]
    assert (closed.action, closed.rule, closed.scoring_failed) == ("refuse", "scoring_failed", True)
    opened = Gate(tiny_model, SafetyPolicy.from_dict({"fail_closed": False})).decide(photos[:1], ["a"])[0]
    assert (opened.action, opened.scoring_failed) == ("allow", True)


def test_bad_gate_requests_get_clear_errors(tiny_model, photos):
    gate = Gate(tiny_model)
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        gate.decide(photos[:2], ["a"])
    with pytest.raises(ValueError, match="3 policies for 2 samples"):
        gate.decide(photos[:2], ["a", "b"], [SafetyPolicy.default()] * 3)
    with pytest.raises(PolicyError, match="was built for"):
        Gate(tiny_model, SafetyPolicy.default(Taxonomy(types=("hate", "safe"))))
