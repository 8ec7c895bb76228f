"""The foundation's command line: make-tiny and assess."""

from __future__ import annotations

import json

from PIL import Image

from safety_modules.cli import main


def test_make_tiny_then_assess_json(tmp_path, capsys, photos):
    assert main(["make-tiny", str(tmp_path / "tiny")]) == 0
    photos[0].save(tmp_path / "a.png")
    photos[1].save(tmp_path / "b.jpg")
    capsys.readouterr()
    assert (
        main(
            [
                "assess",
                str(tmp_path / "a.png"),
                str(tmp_path / "b.jpg"),
                "--base",
                str(tmp_path / "tiny"),
                "--prompt",
                "what is this?",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    for row in rows:
        assert set(row["levels"]) == {"safe_to_answer", "answer_carefully", "answer_or_reject", "reject"}
        assert abs(sum(row["types"].values()) - 1.0) < 1e-5


def test_missing_base_is_one_clear_line(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")  # the images are decoded first: this one is fine
    assert main(["assess", str(tmp_path / "x.png"), "--base", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "model folder not found" in err and "Traceback" not in err
