"""Acceptance on the synthetic corpus after a short stage-1 run: temperature scaling lowers ECE (and NLL) on
the held-out test split, and the calibrated modules carry their temperatures into the scan's scorer."""

from __future__ import annotations

import json

import pytest
import torch

from safety_modules import SafeLlava, SafetyModules
from safety_modules.cli import main
from safety_modules.data.format import read_records, write_records
from safety_modules.data.synth import synthesize
from safety_modules.images import decode_image
from safety_modules.scan.scorer import VisionScorer
from safety_modules.training import TrainConfig, train

pytestmark = pytest.mark.slow  # one short stage-1 run (~1-2 min on 2 shared CPU cores)


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """Stage 1 on 32 synthetic images, 15 steps at a high learning rate: a head that fits its few training
    images and is miscalibrated on new ones (val and test: 53 images each, never trained on)."""
    root = tmp_path_factory.mktemp("stage1")
    synthesize(root / "corpus", 360, seed=0, size=224)
    write_records(read_records(root / "corpus" / "train.jsonl")[:32], root / "corpus" / "small.jsonl")
    cfg = TrainConfig(
        stage=1,
        base=str(tiny_dir),
        train_data=[str(root / "corpus" / "small.jsonl")],
        output_dir=str(root / "run"),
        seed=0,
        max_steps=15,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=3e-2,
        warmup_steps=3,
        logging_steps=5,
        num_workers=0,
        progress_bar=False,
    )
    return root, train(cfg).safety_dir


def test_temperature_scaling_lowers_ece_on_the_held_out_test_split(tiny_dir, trained, tmp_path):
    root, safety_dir = trained
    out = tmp_path / "calibrated"
    assert (
        main(
            [
                "calibrate",
                "--base",
                str(tiny_dir),
                "--safety",
                str(safety_dir),
                "--data",
                str(root / "corpus" / "val.jsonl"),
                "--test",
                str(root / "corpus" / "test.jsonl"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "calibration.json").read_text())
    test = report["splits"]["test"]
    print("test split:", test["before"], "->", test["after"], report["temperatures"])
    assert test["n"] > 40
    for head in ("level", "type"):
        assert test["after"][f"{head}_ece"] < test["before"][f"{head}_ece"], head
        assert test["after"][f"{head}_nll"] < test["before"][f"{head}_nll"], head

    # The temperatures round-trip through the saved modules and reach the scan's scorer.
    modules = SafetyModules.from_pretrained(out)
    assert modules.config.level_temperature == report["temperatures"]["level"]["temperature"]
    assert modules.config.type_temperature == report["temperatures"]["type"]["temperature"]
    images = [decode_image(root / "corpus" / r["image"]) for r in read_records(root / "corpus" / "test.jsonl")[:3]]
    model = SafeLlava.from_pretrained(tiny_dir, out, device="cpu", dtype=torch.float32)
    expected = model.assess(images)  # image only, as the scan scores
    scorer = VisionScorer.from_pretrained(tiny_dir, out, device="cpu", dtype=torch.float32)
    pixels = scorer.image_processor(images=images, return_tensors="pt")["pixel_values"]
    level_probs, type_probs = scorer.score(pixels)
    torch.testing.assert_close(torch.from_numpy(level_probs), expected.level_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(type_probs), expected.type_probs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected.level_probs, expected.uncalibrated().level_probs, atol=1e-3)
