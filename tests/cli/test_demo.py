"""`make demo` end to end on a small budget: every step runs and leaves its outputs."""

from __future__ import annotations

import json

from safety_modules.modeling import SafetyModules
from safety_modules.testing.demo import run_demo


def test_demo_runs_every_step(tmp_path, capsys):
    assert run_demo(tmp_path, steps=6, corpus_size=60) == 0
    out = capsys.readouterr().out
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "risk_auroc=" in out
    # The training lines come in step order: the loss at each logged step, then the eval at the last one.
    training = [line.strip() for line in out.split("[3/6]")[1].split("[4/6]")[0].splitlines()]
    order = [line for line in training if line.startswith(("step ", "eval @ step"))]
    assert order[-1].startswith("eval @ step 6:") and order[0].startswith("step ")
    assert [int(line.split()[1].rstrip(":")) for line in order if line.startswith("step ")] == sorted(
        int(line.split()[1].rstrip(":")) for line in order if line.startswith("step ")
    )
    assert "ECE level" in out and "thresholds (hint / refuse)" in out  # calibration on the val split
    assert (tmp_path / "calibrated" / "policy.yaml").is_file() and (
        tmp_path / "calibrated" / "calibration.md"
    ).is_file()
    assert out.count("answer: ") == 2 and out.count(" (rule ") == 2
    SafetyModules.from_pretrained(tmp_path / "stage1" / "safety_modules")
    manifest = json.loads((tmp_path / "scan" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["items"] == 60
    assert (tmp_path / "scan" / "report.html").stat().st_size > 0
