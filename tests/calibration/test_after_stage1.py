"""Acceptance on the synthetic corpus after a short stage-1 run: temperature scaling lowers ECE (and NLL) on
the held-out test split, and the calibrated modules carry their temperatures into the scan's scorer."""

from __future__ import annotations

import json

import pytest
import torch

from safety_modules import SafeLlava, SafetyModules
from safety_modules.data.format import read_records, write_records
from safety_modules.gate.vision_scorer import VisionScorer
from safety_modules.images import decode_image
from safety_modules.testing.synth import synthesize
from safety_modules.training import TrainConfig, train

from .conftest import calibrate

pytestmark = pytest.mark.slow  # a 1080-image corpus and one 100-step stage-1 run (~1 min on 2 shared CPU cores)


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """Stage 1 on 60 synthetic images (10 of each kind) for 100 steps (~13 epochs): a head that fits its training
    images and is overconfident on new ones. Every kind is in the sample, so the errors are not one kind the head
    never saw (a miscalibration no temperature fixes). Val and test hold 163 images each, never trained on, so
    their ECE is not dominated by sampling noise (the noise floor is measured and asserted below)."""
    root = tmp_path_factory.mktemp("stage1")
    synthesize(root / "corpus", 1080, seed=0, size=224)
    by_kind: dict[str, list[dict]] = {}
    for record in read_records(root / "corpus" / "train.jsonl"):  # ids are synth-<kind>-<index>
        by_kind.setdefault(record["id"].split("-")[1], []).append(record)
    write_records([r for records in by_kind.values() for r in records[:10]], root / "corpus" / "small.jsonl")
    cfg = TrainConfig(
        stage=1,
        base=str(tiny_dir),
        train_data=[str(root / "corpus" / "small.jsonl")],
        output_dir=str(root / "run"),
        seed=0,
        max_steps=100,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=3e-3,
        warmup_steps=3,
        logging_steps=50,
        num_workers=0,
        progress_bar=False,
    )
    return root, train(cfg).safety_dir


def test_temperature_scaling_lowers_ece_on_the_held_out_test_split(tiny_dir, trained, tmp_path):
    root, safety_dir = trained
    out = tmp_path / "calibrated"
    val_data, test_data = root / "corpus" / "val.jsonl", root / "corpus" / "test.jsonl"
    assert calibrate(tiny_dir, safety_dir, val_data, out, "--test", test_data) == 0
    report = json.loads((out / "calibration.json").read_text())
    test = report["splits"]["test"]
    print("test split:", test["before"], "->", test["after"], report["temperatures"])
    assert test["n"] >= 150
    for head in ("level", "type"):
        fit = report["temperatures"][head]
        assert not fit["at_bound"] and fit["temperature"] > 1, fit  # overconfident: softened
        # the head is miscalibrated beyond what sampling noise alone shows on this many items ...
        assert test["before"][f"{head}_ece"] > 2 * test["before"][f"{head}_ece_floor"], head
        # ... and temperature scaling, fitted on val, lowers both ECE and NLL on the held-out test split
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
