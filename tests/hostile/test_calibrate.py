"""`safevlm calibrate` on data that cannot support thresholds, broken modules and bad flags."""

from __future__ import annotations

import json

import pytest
import torch

from safety_modules.data.format import make_record, write_records
from safety_modules.modeling.safe_llava import SafeLlava
from safety_modules.taxonomy import Taxonomy

from .conftest import cli, one_line_error

TAX = Taxonomy()


def labelled(folder, photos, labels: list[tuple[int, str]]):
    """A records file: photo i (cycling) with label i, all with the same question."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (level, type_) in enumerate(labels):
        name = f"p{i}.png"
        photos[i % len(photos)].save(folder / name)
        records.append(make_record(f"r{i}", name, "What is this?", "A picture.", level, type_))
    return write_records(records, folder / "val.jsonl")


def calibrate(capsys, tiny_dir, modules, data, out, *options):
    return cli(capsys, "calibrate", "--base", tiny_dir, "--safety", modules, "--data", data, "--out", out, *options)


@pytest.mark.parametrize("only", ["risky", "safe"])
def test_a_one_class_validation_set_is_refused(only, tiny_dir, modules_dir, photos, tmp_path, capsys):
    label = (2, TAX.risk_types[0]) if only == "risky" else (0, TAX.safe_type)
    data = labelled(tmp_path / "data", photos, [label] * 3)
    rc, err = calibrate(capsys, tiny_dir, modules_dir, data, tmp_path / "out")
    missing = "safe (level 0)" if only == "risky" else "risky (level > 0)"
    one_line_error(rc, err, "thresholds need both classes", f"add {missing} items")
    assert not (tmp_path / "out").exists()  # no policy written from one class


def test_over_refusal_above_the_bound_is_a_warning(tiny_dir, modules_dir, photos, tmp_path, capsys):
    """The same three photos as safe and as top-level risky: any threshold that refuses the risky copies
    refuses the safe ones too (the scores are identical), so the recall target costs 100% over-refusal."""
    top = len(TAX.levels) - 1
    labels = [(0, TAX.safe_type)] * 3 + [(top, TAX.risk_types[0])] * 3
    data = labelled(tmp_path / "data", photos, labels)
    out = tmp_path / "out"
    rc, err = calibrate(capsys, tiny_dir, modules_dir, data, out, "--warn-over-refusal", "0.2")
    assert rc == 0, err
    report = json.loads((out / "calibration.json").read_text())
    over = report["splits"]["validation"]["policy"]["over_refusal"]
    assert over == 1.0
    warning = "the chosen thresholds refuse 100.0% of safe items (all types), more than 20.0%"
    assert any(warning in w for w in report["warnings"])
    assert f"safevlm calibrate: WARNING: on validation, {warning}" in err
    assert "## Warnings" in (out / "calibration.md").read_text()
    rc, err = calibrate(capsys, tiny_dir, modules_dir, data, tmp_path / "quiet", "--warn-over-refusal", "1")
    assert rc == 0 and "WARNING" not in err


def test_modules_with_non_finite_scores_are_refused(tiny_dir, photos, tmp_path, capsys):
    modules = SafeLlava.from_pretrained(tiny_dir, seed=0).safety
    with torch.no_grad():
        for parameter in modules.head.parameters():
            parameter.fill_(float("nan"))
    broken = modules.save_pretrained(tmp_path / "nan_modules")
    data = labelled(tmp_path / "data", photos, [(0, TAX.safe_type), (2, TAX.risk_types[0])] * 2)
    rc, err = calibrate(capsys, tiny_dir, broken, data, tmp_path / "out")
    one_line_error(rc, err, "non-finite scores (NaN or inf) for 4 of 4 items")


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
        ("--warn-over-refusal", "nan", "argument --warn-over-refusal: must be in [0, 1]"),
        ("--target", "recall=nan", "--target recall must be in (0, 1]"),
        ("--max-over-refusal", "1.5", "--max-over-refusal must be in [0, 1)"),
    ],
)
def test_bad_arguments_are_one_line(option, value, fragment, tiny_dir, modules_dir, photos, tmp_path, capsys):
    data = labelled(tmp_path / "data", photos, [(0, TAX.safe_type), (2, TAX.risk_types[0])])
    rc, err = calibrate(capsys, tiny_dir, modules_dir, data, tmp_path / "out", option, value)
    one_line_error(rc, err, fragment)


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b"[" * 5000 + b"]" * 5000, "val.jsonl:2: nested deeper than"),
        (b'{"id": "caf\xe9"}', "val.jsonl:2: not UTF-8 text"),
    ],
)
def test_hostile_lines_in_the_validation_records(line, fragment, tiny_dir, modules_dir, photos, tmp_path, capsys):
    data = labelled(tmp_path / "data", photos, [(0, TAX.safe_type)])
    data.write_bytes(data.read_bytes().splitlines()[0] + b"\n" + line + b"\n")
    rc, err = calibrate(capsys, tiny_dir, modules_dir, data, tmp_path / "out")
    one_line_error(rc, err, fragment)
