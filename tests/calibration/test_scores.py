"""Temperatures in `SafetyScores` and `SafetyConfig`: applied where probabilities are read, saved and loaded
with the modules, and absent = exactly today's softmax."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from safety_modules import SafeLlava, SafetyConfig, SafetyModules, SafetyScores
from safety_modules.modeling.safe_llava import SafetyScores as WrapperScores


def test_scores_import_from_every_old_place():
    from safety_modules.modeling import SafetyScores as ModelingScores

    assert SafetyScores is WrapperScores is ModelingScores


def test_without_temperatures_the_probabilities_are_todays_softmax():
    torch.manual_seed(0)
    level, type_ = torch.randn(5, 4) * 3, torch.randn(5, 7) * 3
    scores = SafetyScores(level, type_)
    assert not scores.calibrated
    assert torch.equal(scores.level_probs, level.float().softmax(-1))
    assert torch.equal(scores.type_probs, type_.float().softmax(-1))


def test_temperatures_scale_the_logits_and_leave_them_raw():
    torch.manual_seed(1)
    level, type_ = torch.randn(5, 4), torch.randn(5, 7)
    vector = [0.5, 1.0, 2.0, 4.0, 1.0, 1.0, 3.0]
    scores = SafetyScores(level, type_, 2.0, vector)
    assert scores.calibrated and scores.level_logits is level  # the raw logits stay available
    torch.testing.assert_close(scores.level_probs, (level / 2.0).softmax(-1))
    torch.testing.assert_close(scores.type_probs, (type_ / torch.tensor(vector)).softmax(-1))
    assert torch.equal(scores.uncalibrated().level_probs, level.softmax(-1))
    both = SafetyScores.cat([scores, scores])
    assert both.level_logits.shape == (10, 4) and both.level_temperature == 2.0


def test_temperatures_round_trip_through_save_and_load(tmp_path, tiny_model):
    config = dataclasses.replace(tiny_model.config, level_temperature=1.7, type_temperature=[0.5] * 6 + [2.0])
    config.save(tmp_path / "config.json")
    loaded = SafetyConfig.load(tmp_path / "config.json")
    assert loaded.level_temperature == 1.7 and loaded.type_temperature == [0.5] * 6 + [2.0]
    assert loaded == config


def test_an_old_config_without_the_fields_loads_uncalibrated(tmp_path, tiny_model):
    tiny_model.safety.save_pretrained(tmp_path / "mods")
    data = json.loads((tmp_path / "mods" / "config.json").read_text())
    assert data["level_temperature"] is None and data["type_temperature"] is None
    del data["level_temperature"], data["type_temperature"]  # as written before calibration existed
    (tmp_path / "mods" / "config.json").write_text(json.dumps(data))
    modules = SafetyModules.from_pretrained(tmp_path / "mods")
    assert modules.config.level_temperature is None and modules.config.type_temperature is None


@pytest.mark.parametrize(
    "bad, match",
    [
        (0.0, "positive"),
        (-1.0, "positive"),
        (float("nan"), "positive"),
        ([1.0, 2.0], "2 values for 4 classes"),
        ("hot", "positive"),
    ],
)
def test_bad_temperatures_are_refused_by_name(tiny_model, bad, match):
    with pytest.raises(ValueError, match=f"level_temperature.*{match}|{match}.*"):
        dataclasses.replace(tiny_model.config, level_temperature=bad)


@pytest.mark.device_sensitive
def test_the_gate_and_assess_read_the_modules_temperatures(tmp_path, tiny_dir, tiny_model, photos, tol):
    plain = tiny_model.assess(photos[:2], ["What is this?", "Describe it."])
    modules = tiny_model.safety
    calibrated = SafetyModules(dataclasses.replace(modules.config, level_temperature=3.0, type_temperature=0.5))
    calibrated.load_state_dict(modules.state_dict())
    calibrated.save_pretrained(tmp_path / "calibrated")
    model = SafeLlava.from_pretrained(
        tiny_dir, tmp_path / "calibrated", device=tiny_model.device, dtype=tiny_model.dtype
    )
    scores = model.assess(photos[:2], ["What is this?", "Describe it."])
    torch.testing.assert_close(scores.level_logits, plain.level_logits, **tol)  # same raw head
    torch.testing.assert_close(scores.level_probs, (plain.level_logits.float() / 3.0).softmax(-1), **tol)
    torch.testing.assert_close(scores.type_probs, (plain.type_logits.float() / 0.5).softmax(-1), **tol)


@pytest.mark.parametrize("train_modules", [True, False])
def test_training_calibrated_modules_drops_their_temperatures(tmp_path, tiny_dir, tiny_model, train_modules):
    from safety_modules.training import TrainConfig
    from safety_modules.training.trainer import build_model

    config = dataclasses.replace(tiny_model.config, level_temperature=2.0, type_temperature=0.5)
    modules = SafetyModules(config)
    modules.load_state_dict(tiny_model.safety.state_dict())
    modules.save_pretrained(tmp_path / "calibrated")
    cfg = TrainConfig(
        stage=2,
        base=str(tiny_dir),
        safety=str(tmp_path / "calibrated"),
        train_data=["x.jsonl"],
        output_dir=str(tmp_path / "run"),
        train_safety_modules=train_modules,
    )
    model = build_model(cfg, torch.device("cpu"))
    kept = (model.config.level_temperature, model.config.type_temperature)
    assert kept == ((None, None) if train_modules else (2.0, 0.5))
