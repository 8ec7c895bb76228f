"""SafetyPolicy: the argmax rule, the threshold rule, texts from YAML, fail_closed, vectorised flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from safety_modules.policy import PolicyError, SafetyPolicy
from safety_modules.taxonomy import DEFAULT_LEVELS, DEFAULT_TYPES, Taxonomy

SHIPPED = yaml.safe_load((Path(__file__).parents[2] / "safety_modules/policies/default.yaml").read_text())
RISK_TYPES = DEFAULT_TYPES[:-1]


def peaked(n: int, index: int, top: float = 0.7) -> list[float]:
    """A probability vector of length n whose argmax is ``index``."""
    rest = (1.0 - top) / (n - 1)
    return [top if i == index else rest for i in range(n)]


def shipped_hint(level: str, type_: str) -> str:
    return SHIPPED["hints"][level][type_].format(type=SHIPPED["labels"][type_])


# ---------------------------------------------------------------- argmax mode: the reference's rule

# Hand-computed: level 0 or type "safe" -> allow; every other pair -> the hint for (level, type).
ARGMAX_TABLE = """
level \\ type     politics illegal_risk insults_bullying fairness privacy misleading safe
safe_to_answer    allow    allow        allow            allow    allow   allow      allow
answer_carefully  hint     hint         hint             hint     hint    hint       allow
answer_or_reject  hint     hint         hint             hint     hint    hint       allow
reject            hint     hint         hint             hint     hint    hint       allow
"""


def argmax_cases():
    lines = [line.split() for line in ARGMAX_TABLE.strip().splitlines()]
    types = lines[0][3:]
    for row in lines[1:]:
        for type_, action in zip(types, row[1:]):
            yield row[0], type_, action


def test_argmax_table_covers_all_28_pairs():
    cases = list(argmax_cases())
    assert len(cases) == 28
    assert {(lvl, t) for lvl, t, _ in cases} == {(lvl, t) for lvl in DEFAULT_LEVELS for t in DEFAULT_TYPES}


@pytest.mark.parametrize("level,type_,action", list(argmax_cases()))
def test_argmax_mode_matches_reference(level, type_, action):
    policy = SafetyPolicy.argmax()
    decision = policy.decide(peaked(4, DEFAULT_LEVELS.index(level)), peaked(7, DEFAULT_TYPES.index(type_)))
    assert decision.action == action
    assert (decision.level, decision.type) == (level, type_)
    if action == "allow":
        assert decision.hint is None
        assert decision.rule == ("argmax_safe_level" if level == "safe_to_answer" else "argmax_safe_type")
    else:
        assert decision.rule == "argmax_hint"
        assert decision.hint == shipped_hint(level, type_)
    assert decision.refusal is None  # the reference never refuses, it generates with the hint


def test_argmax_ties_take_the_first_index_and_disabled_types_allow():
    policy = SafetyPolicy.argmax()
    decision = policy.decide([0.1, 0.1, 0.4, 0.4], [0.3, 0.3, 0.1, 0.1, 0.1, 0.1, 0.0])
    assert (decision.level, decision.type) == ("answer_or_reject", "politics")
    muted = SafetyPolicy.from_dict({"mode": "argmax", "types": {"politics": {"enabled": False}}})
    decision = muted.decide([0.1, 0.1, 0.4, 0.4], [0.3, 0.3, 0.1, 0.1, 0.1, 0.1, 0.0])
    assert (decision.action, decision.rule, decision.type) == ("allow", "type_disabled", "politics")


# ---------------------------------------------------------------- thresholds mode

# Each row: policy override, level probs, type probs -> action, rule, level, type.
# p_risky_type[t] = q[t] * (1 - p[0]); p_severe_type[t] = q[t] * p[reject]; defaults: hint 0.5, refuse 0.5.
POLITICS, ILLEGAL, BULLYING, FAIRNESS, PRIVACY, MISLEADING, SAFE = range(7)


def types_(**probs: float) -> list[float]:
    vec = [0.0] * 7
    for name, p in probs.items():
        vec[DEFAULT_TYPES.index(name)] = p
    return vec


THRESHOLD_CASES = [
    # severe(illegal) = 0.9 * 0.6 = 0.54 >= 0.5 -> refuse at the top level
    (
        "refuse",
        {},
        [0.1, 0.1, 0.2, 0.6],
        types_(illegal_risk=0.9, safe=0.1),
        "refuse",
        "refuse_threshold",
        "reject",
        "illegal_risk",
    ),
    # severe = 0.9 * 0.3 = 0.27 < 0.5; risk = 0.9 * 0.9 = 0.81 >= 0.5 -> hint, level = argmax of p[1:]
    (
        "hint",
        {},
        [0.1, 0.1, 0.5, 0.3],
        types_(illegal_risk=0.9, safe=0.1),
        "hint",
        "hint_threshold",
        "answer_or_reject",
        "illegal_risk",
    ),
    # risk = 0.9 * 0.4 = 0.36 < 0.5 -> allow; level/type are the argmax ones
    (
        "allow",
        {},
        [0.6, 0.2, 0.1, 0.1],
        types_(privacy=0.9, safe=0.1),
        "allow",
        "below_thresholds",
        "safe_to_answer",
        "privacy",
    ),
    # the safe type is never a risk: 0.1 * 0.6 = 0.06 everywhere
    (
        "safe type",
        {},
        [0.1, 0.1, 0.2, 0.6],
        types_(politics=0.05, privacy=0.05, safe=0.9),
        "allow",
        "below_thresholds",
        "reject",
        "safe",
    ),
    # equality fires: 0.5 * 1.0 >= 0.5
    (
        "boundary",
        {},
        [0.0, 0.0, 0.0, 1.0],
        types_(politics=0.5, safe=0.5),
        "refuse",
        "refuse_threshold",
        "reject",
        "politics",
    ),
    # privacy disabled: its refuse would fire (0.54), nothing else does -> allow, rule names it
    (
        "disabled",
        {"types": {"privacy": {"enabled": False}}},
        [0.1, 0.1, 0.2, 0.6],
        types_(privacy=0.9, safe=0.1),
        "allow",
        "type_disabled",
        "reject",
        "privacy",
    ),
    # privacy (risk 0.6 * 0.9 = 0.54, the larger) is disabled; fairness risk 0.4 * 0.9 = 0.36 >= its hint 0.3
    (
        "disabled + other hint",
        {"types": {"privacy": {"enabled": False}, "fairness": {"hint": 0.3}}},
        [0.1, 0.1, 0.2, 0.6],
        types_(privacy=0.6, fairness=0.4),
        "hint",
        "hint_threshold",
        "reject",
        "fairness",
    ),
    # per-type refuse: privacy lenient (0.9: 0.54 < 0.9 -> only a hint), illegal strict (0.3)
    (
        "lenient type",
        {"types": {"privacy": {"refuse": 0.9}}},
        [0.1, 0.1, 0.2, 0.6],
        types_(privacy=0.9, safe=0.1),
        "hint",
        "hint_threshold",
        "reject",
        "privacy",
    ),
    (
        "strict type",
        {"types": {"illegal_risk": {"refuse": 0.3}}},
        [0.1, 0.1, 0.2, 0.6],
        types_(illegal_risk=0.6, safe=0.4),
        "refuse",
        "refuse_threshold",
        "reject",
        "illegal_risk",
    ),
    # hint: null -> never hint for that type (risk 0.9 * 0.9 = 0.81 ignored)
    (
        "hint null",
        {"types": {"privacy": {"hint": None}}},
        [0.1, 0.8, 0.05, 0.05],
        types_(privacy=0.9, safe=0.1),
        "allow",
        "below_thresholds",
        "answer_carefully",
        "privacy",
    ),
    # two types cross their refuse thresholds: the larger severe score wins (0.5 vs 0.45)
    (
        "two refuse",
        {"types": {"illegal_risk": {"refuse": 0.4}}},
        [0.0, 0.0, 0.0, 1.0],
        types_(politics=0.5, illegal_risk=0.45, safe=0.05),
        "refuse",
        "refuse_threshold",
        "reject",
        "politics",
    ),
    # refuse beats hint: politics hints (risk 0.9 * 0.5 = 0.45 >= 0.4), illegal refuses (0.1 * 0.5 >= 0.05)
    (
        "refuse beats hint",
        {"types": {"politics": {"hint": 0.4, "refuse": None}, "illegal_risk": {"refuse": 0.05}}},
        [0.5, 0.0, 0.0, 0.5],
        types_(politics=0.9, illegal_risk=0.1),
        "refuse",
        "refuse_threshold",
        "reject",
        "illegal_risk",
    ),
    # defaults apply to every type
    (
        "defaults",
        {"defaults": {"hint": 0.1, "refuse": None}},
        [0.7, 0.1, 0.1, 0.1],
        types_(misleading=0.4, safe=0.6),
        "hint",
        "hint_threshold",
        "answer_carefully",
        "misleading",
    ),
]


@pytest.mark.parametrize("case", THRESHOLD_CASES, ids=[c[0] for c in THRESHOLD_CASES])
def test_threshold_rule(case):
    _, override, lp, tp, action, rule, level, type_ = case
    policy = SafetyPolicy.from_dict(override)
    decision = policy.decide(lp, tp)
    assert (decision.action, decision.rule, decision.level, decision.type) == (action, rule, level, type_)
    if action == "hint":
        assert decision.hint == shipped_hint(level, type_)
    if action == "refuse":
        assert decision.refusal == SHIPPED["refusals"][type_].format(type=SHIPPED["labels"][type_])
        assert decision.hint == shipped_hint("reject", type_)  # what refusal="generate" would use
    assert policy.flagged(lp, tp) == (action != "allow")


def test_allow_all_allows_everything():
    policy = SafetyPolicy.allow_all()
    decision = policy.decide([0.0, 0.0, 0.0, 1.0], types_(illegal_risk=1.0))
    assert (decision.action, decision.rule, decision.policy) == ("allow", "allow_all", "allow_all")


def test_default_policy_leaves_an_untrained_head_alone():
    # a near-uniform head (what fresh modules give): risk ~ 1/7 * 3/4, far below 0.5
    decision = SafetyPolicy.default().decide([0.25] * 4, [1 / 7] * 7)
    assert decision.action == "allow" and decision.policy == "default"


# ---------------------------------------------------------------- fail_closed


@pytest.mark.parametrize("fail_closed,action", [(True, "refuse"), (False, "allow")])
def test_fail_closed_both_ways(fail_closed, action):
    policy = SafetyPolicy.from_dict({"fail_closed": fail_closed})
    decision = policy.decide([float("nan")] * 4, [1 / 7] * 7)
    assert decision.action == action
    assert decision.scoring_failed and decision.rule == "scoring_failed"
    assert decision.refusal == (SHIPPED["scoring_failure_refusal"] if fail_closed else None)
    raised = policy.on_scoring_error("RuntimeError: broken head")
    assert (raised.action, raised.scoring_failed, raised.error) == (action, True, "RuntimeError: broken head")
    json.dumps(decision.to_dict(), allow_nan=False)  # NaN becomes null: valid JSON
    assert decision.to_dict()["level_probs"]["reject"] is None


# ---------------------------------------------------------------- vectorised flags


@pytest.mark.parametrize(
    "policy",
    [
        SafetyPolicy.default(),
        SafetyPolicy.argmax(),
        SafetyPolicy.allow_all(),
        SafetyPolicy.from_dict(
            {"fail_closed": False, "defaults": {"hint": 0.2, "refuse": 0.3}, "types": {"privacy": {"enabled": False}}}
        ),
    ],
    ids=["default", "argmax", "allow_all", "custom"],
)
def test_flag_batch_agrees_with_decide(policy):
    gen = torch.Generator().manual_seed(0)
    lp = (torch.randn(300, 4, generator=gen) * 3).softmax(-1)
    tp = (torch.randn(300, 7, generator=gen) * 3).softmax(-1)
    lp[::37] = float("nan")  # some failed rows
    flags = policy.flag_batch(lp, tp)
    assert flags.dtype == torch.bool and flags.shape == (300,)
    expected = [policy.decide(lp[i], tp[i]).action != "allow" for i in range(300)]
    assert flags.tolist() == expected
    assert [d.action != "allow" for d in policy.decide_batch(lp, tp)] == expected
    as_numpy = policy.flag_batch(lp.numpy(), tp.numpy())
    assert isinstance(as_numpy, np.ndarray) and as_numpy.tolist() == expected


def test_flag_batch_checks_shapes():
    with pytest.raises(ValueError, match=r"\(B, 7\)"):
        SafetyPolicy.default().flag_batch(torch.rand(2, 4), torch.rand(2, 6))
    with pytest.raises(ValueError, match="one sample"):
        SafetyPolicy.default().decide(torch.rand(2, 4), torch.rand(2, 7))


# ---------------------------------------------------------------- YAML files


def test_shipped_default_has_18_own_hints_and_a_refusal_per_type():
    for level in DEFAULT_LEVELS[1:]:
        for type_ in RISK_TYPES:
            assert "{type}" in SHIPPED["hints"][level][type_]
    hints = {SHIPPED["hints"][lvl][t] for lvl in DEFAULT_LEVELS[1:] for t in RISK_TYPES}
    assert len(hints) == 18
    assert set(RISK_TYPES) <= set(SHIPPED["refusals"])


def test_user_file_overrides_a_subset(tmp_path):
    path = tmp_path / "strict.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "fail_closed": False,
                "types": {"privacy": {"refuse": 0.2}},
                "hints": {"answer_carefully": {"privacy": "Mind the {type}."}},
                "labels": {"privacy": "personal data"},
            }
        )
    )
    policy = SafetyPolicy.from_yaml(path)
    assert policy.name == "strict" and policy.mode == "thresholds" and policy.fail_closed is False
    assert policy.rules["privacy"].refuse == 0.2 and policy.rules["privacy"].hint == 0.5
    assert policy.rules["politics"].refuse == 0.5
    assert policy.hint_text("answer_carefully", "privacy") == "Mind the personal data."
    assert policy.hint_text("reject", "politics") == shipped_hint("reject", "politics")


@pytest.mark.parametrize(
    "content,names",
    [
        ({"types": {"pornography": {"hint": 0.3}}}, ["pornography"]),
        ({"hints": {"answer_carefully": {"violence": "x"}}}, ["violence"]),
        ({"refusals": {"nudity": "no"}}, ["nudity"]),
        ({"types": {"safe": {"hint": 0.3}}}, ["safe"]),  # the safe type is not a risk type
        ({"hints": {"severe": {"privacy": "x"}}}, ["severe"]),
        ({"thresholds": 0.5, "typos": {}}, ["thresholds", "typos"]),
        ({"types": {"privacy": {"hint": 0.3, "refuse_at": 0.2}}}, ["refuse_at"]),
    ],
)
def test_unknown_names_in_a_policy_file_are_errors_naming_them(tmp_path, content, names):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(PolicyError) as info:
        SafetyPolicy.from_yaml(path)
    for name in names:
        assert repr(name) in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content,message",
    [
        ({"mode": "majority"}, "mode must be one of"),
        ({"defaults": {"hint": 1.5}}, r"defaults.hint must be a probability"),
        ({"types": {"privacy": {"enabled": "no"}}}, "types.privacy.enabled must be true or false"),
        ({"hints": {"reject": {"privacy": "Refuse {reason}"}}}, r"unknown placeholders \['reason'\]"),
        ({"fail_closed": "yes"}, "fail_closed must be true or false"),
    ],
)
def test_bad_values_are_errors(content, message):
    with pytest.raises(PolicyError, match=message):
        SafetyPolicy.from_dict(content)


def test_missing_policy_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        SafetyPolicy.from_yaml(tmp_path / "nope.yaml")


def test_another_taxonomy_uses_the_fallback_texts():
    taxonomy = Taxonomy(levels=DEFAULT_LEVELS, types=("hate", "violence", "safe"))
    policy = SafetyPolicy.default(taxonomy)
    decision = policy.decide([0.0, 0.0, 0.0, 1.0], [0.1, 0.9, 0.0])
    assert (decision.action, decision.type) == ("refuse", "violence")
    assert decision.refusal == SHIPPED["refusals"]["*"].format(type="violence")
    with pytest.raises(PolicyError, match="types"):
        policy.check_taxonomy(Taxonomy())
