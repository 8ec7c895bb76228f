"""What a new user hits first: untrained modules are named as such, empty results fail, the scan's resume
refusal names the setting that differs, and the model card written by training says what the run knows."""

from __future__ import annotations

import pytest

from safety_modules.cli import main
from safety_modules.data.format import read_records, write_records
from safety_modules.scan.output import ScanOutput
from safety_modules.taxonomy import Taxonomy
from safety_modules.testing.synth import synthesize
from safety_modules.training import TrainConfig, train

from ..benchmark_fixtures import write_rtvlm_snapshot
from ..scan_corpus import plain_images, write_folder


@pytest.fixture(scope="module")
def stage1(tiny_dir, tmp_path_factory):
    """A few stage-1 steps on a small synthetic corpus with a held-out file: modules that record their run."""
    root = tmp_path_factory.mktemp("first-run")
    synthesize(root / "corpus", 48, seed=0, size=96)
    train_file, val_file = root / "corpus" / "train.jsonl", root / "corpus" / "val.jsonl"
    write_records(read_records(train_file)[:16], root / "corpus" / "small.jsonl")
    cfg = TrainConfig(
        stage=1,
        base=str(tiny_dir),
        train_data=[str(root / "corpus" / "small.jsonl")],
        eval_data=[str(val_file)],
        output_dir=str(root / "run"),
        max_steps=2,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        logging_steps=1,
        num_workers=0,
        progress_bar=False,
    )
    return root, train(cfg).safety_dir


def test_the_card_written_by_training_and_calibration_says_what_the_run_knows(tiny_dir, stage1, tmp_path):
    root, safety_dir = stage1
    card = (safety_dir / "README.md").read_text()
    val_count = len(read_records(root / "corpus" / "val.jsonl"))
    assert "small.jsonl`: 16 records, training" in card
    assert f"val.jsonl`: {val_count} records, held out (evaluation)" in card
    assert "Stage 1, 2 optimizer steps." in card
    assert "| held-out.risk_auroc |" in card and "| held-out.level_ece |" in card
    assert "Not given" not in card and "Not calibrated" in card
    assert "`safe_to_answer`" in card and "| projector_digest |" in card  # taxonomy and fingerprint

    out = tmp_path / "calibrated"
    args = ["calibrate", "--base", tiny_dir, "--safety", safety_dir, "--data", root / "corpus" / "val.jsonl"]
    assert main([str(a) for a in [*args, "--out", out, "--target", "recall=0.5"]]) == 0
    card = (out / "README.md").read_text()
    assert "Temperature scaling (`safevlm calibrate`)" in card and "Not calibrated" not in card
    assert "| calibration.validation.level_ece |" in card and "small.jsonl`: 16 records" in card


def test_assess_warns_about_untrained_modules(tiny_dir, stage1, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(plain_images(1)["img_000.png"])
    assert main(["assess", str(image), "--base", str(tiny_dir)]) == 0
    assert "UNTRAINED safety modules" in capsys.readouterr().err
    assert main(["assess", str(image), "--base", str(tiny_dir), "--safety", str(stage1[1])]) == 0
    assert "warning" not in capsys.readouterr().err


def test_convert_folders_without_mapping_says_what_to_give(tmp_path, capsys):
    root = write_folder(tmp_path / "folders", {f"violence/{k}": v for k, v in plain_images(2).items()})
    assert main(["data", "convert", "folders", str(root), "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "give --mapping FILE" in err and "known: []" not in err
    assert "built-in table" not in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["data", "convert", "folders", "--help"])
    assert "built-in table" not in " ".join(capsys.readouterr().out.split())


def test_a_conversion_that_writes_nothing_fails(tmp_path, capsys):
    (tmp_path / "folders" / "safe").mkdir(parents=True)  # a folder with no image in it
    assert main(["data", "convert", "folders", str(tmp_path / "folders"), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "no record was written" in capsys.readouterr().out


def test_an_rtvlm_recipe_that_selects_nothing_is_an_error(tiny_dir, tmp_path, capsys):
    snapshot = write_rtvlm_snapshot(tmp_path / "snap")
    args = ["eval", "rtvlm", "--data", str(snapshot), "--base", str(tiny_dir), "--out", str(tmp_path / "out")]
    assert (
        main([*args, "--judge", "rules", "--split", "test", "--subtasks", "order_correct_wrong"]) == 2
    )  # 1 item: train
    assert "selects no RTVLM item" in capsys.readouterr().err


def test_the_resume_refusal_names_the_setting_that_differs(tmp_path):
    taxonomy = Taxonomy()
    settings = {"input": {"path": "/data/a"}, "policy": {"rules": {"privacy": {"hint": 0.5}}}, "part_size": 3}
    ScanOutput(tmp_path, settings, taxonomy)
    changed = {"input": {"path": "/data/a"}, "policy": {"rules": {"privacy": {"hint": 0.7}}}, "part_size": 4}
    with pytest.raises(ValueError) as caught:
        ScanOutput(tmp_path, changed, taxonomy)
    assert "policy.rules.privacy.hint was 0.5, now 0.7; part_size was 3, now 4" in str(caught.value)
    assert "input" not in str(caught.value).split("settings:")[1]
