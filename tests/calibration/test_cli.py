"""`safevlm calibrate` end to end on the tiny model: outputs, the untouched input, the policy it writes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from safety_modules import SafeLlava, SafetyModules, SafetyPolicy
from safety_modules.calibration import Target, policy_metrics, unmet_targets
from safety_modules.calibration_report import score_labelled
from safety_modules.evaluation.head import load_labelled
from safety_modules.images import decode_image
from safety_modules.testing.synth import synthesize

from .conftest import calibrate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, 60, seed=1, size=224)
    return out


@pytest.fixture(scope="module")
def modules_dir(tiny_dir, tmp_path_factory):
    return SafeLlava.from_pretrained(tiny_dir, seed=0).safety.save_pretrained(tmp_path_factory.mktemp("mods"))


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_calibrate_writes_modules_policy_and_report(tiny_dir, corpus, modules_dir, tmp_path, capsys):
    before = digest(modules_dir)
    out = tmp_path / "calibrated"
    assert (
        calibrate(
            tiny_dir,
            modules_dir,
            corpus / "val.jsonl",
            out,
            "--test",
            corpus / "test.jsonl",
            "--per-type",
            "--target",
            "recall=0.9",
            "--batch-size",
            "8",
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "level temperature:" in printed and "ECE level" in printed and "thresholds (hint / refuse)" in printed
    assert digest(modules_dir) == before  # the input folder is never modified
    assert (out / "model.safetensors").read_bytes() == (modules_dir / "model.safetensors").read_bytes()
    assert (out / "README.md").is_file()  # the model card of a saved modules folder
    report = json.loads((out / "calibration.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["level_temperature"] == report["temperatures"]["level"]["temperature"]
    assert config["type_temperature"] == report["temperatures"]["type"]["temperature"]
    assert set(report["splits"]) == {"validation", "test"}
    text = (out / "calibration.md").read_text()
    for heading in (
        "Temperatures",
        "ECE before",
        "Thresholds",
        "Policy at the chosen thresholds: validation",
        "Policy at the chosen thresholds: test",
    ):
        assert heading in text
    for png in ("reliability_validation.png", "reliability_test.png"):
        assert decode_image(out / png).size[0] > 300

    # The written policy, used with the written modules, meets the target on the validation items.
    model = SafeLlava.from_pretrained(tiny_dir, out)
    policy = SafetyPolicy.from_yaml(out / "policy.yaml", model.config.taxonomy)
    assert set(policy.rules) == set(model.config.taxonomy.risk_types)
    val = score_labelled(model, load_labelled(corpus / "val.jsonl"), batch_size=8)
    metrics = policy_metrics(policy, val.probs("level"), val.probs("type"), val.levels, val.types)
    assert unmet_targets(metrics, Target(recall=0.9), per_type=True) == []
    assert metrics == report["splits"]["validation"]["policy"]
    # and the calibrated model's probabilities are the raw head's logits read with the temperatures
    raw = SafeLlava.from_pretrained(tiny_dir, modules_dir)
    raw_val = score_labelled(raw, load_labelled(corpus / "val.jsonl"), batch_size=8)
    temperature = torch.as_tensor(config["level_temperature"])
    assert np.allclose(val.probs("level"), (raw_val.scores.level_logits / temperature).softmax(-1).numpy(), atol=1e-6)


def test_over_refusal_budget_and_bad_arguments(tiny_dir, corpus, modules_dir, tmp_path, capsys):
    out = tmp_path / "budget"
    assert calibrate(tiny_dir, modules_dir, corpus / "val.jsonl", out, "--max-over-refusal", "0.1") == 0
    report = json.loads((out / "calibration.json").read_text())
    assert report["splits"]["validation"]["policy"]["over_refusal"] <= 0.1
    assert report["target"] == {"recall": 0.95, "max_over_refusal": 0.1}
    capsys.readouterr()
    assert calibrate(tiny_dir, modules_dir, corpus / "val.jsonl", modules_dir) == 2
    assert "never modifies its input" in capsys.readouterr().err
    assert calibrate(tiny_dir, modules_dir, corpus / "val.jsonl", out, "--target", "precision=0.9") == 2
    assert "recall=0.95" in capsys.readouterr().err
    assert SafetyModules.from_pretrained(modules_dir).config.level_temperature is None
