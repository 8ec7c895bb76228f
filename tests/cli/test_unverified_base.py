"""`--allow-unverified-base` wherever modules attach to a base: the scan and the server take it too.

Modules whose config names no base are refused with one line naming the flag; every command that can
load modules must then have that flag (the error would otherwise name an option the command lacks).
"""

from __future__ import annotations

import json

import pytest

from safety_modules.cli import build_parser, main
from safety_modules.errors import SafeVLMError
from safety_modules.scan import read_parts

from ..conftest import random_image

MODULE_COMMANDS = [["assess"], ["generate"], ["calibrate"], ["eval", "rtvlm"], ["scan"], ["serve"]]


def _unverified_modules(tiny_model, tmp_path):
    modules = tiny_model.safety.save_pretrained(tmp_path / "mods")
    config = json.loads((modules / "config.json").read_text())
    config["base_fingerprint"] = None
    (modules / "config.json").write_text(json.dumps(config))
    return modules


@pytest.mark.parametrize("command", MODULE_COMMANDS, ids=" ".join)
def test_every_command_that_loads_modules_has_the_flag(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command[0]]
    if len(command) > 1:
        sub = sub._subparsers._group_actions[0].choices[command[1]]
    assert "--allow-unverified-base" in sub.format_help()


def test_scan_refuses_unverified_modules_in_one_line_and_takes_the_flag(tiny_model, tiny_dir, tmp_path, capsys):
    modules = _unverified_modules(tiny_model, tmp_path)
    corpus = tmp_path / "images"
    corpus.mkdir()
    for i in range(3):
        random_image(40 + i).save(corpus / f"{i}.png")
    command = ["scan", str(corpus), "--base", str(tiny_dir), "--safety", str(modules), "--workers", "0"]
    capsys.readouterr()
    assert main([*command, "--out", str(tmp_path / "refused")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--allow-unverified-base" in line
    assert main([*command, "--out", str(tmp_path / "out"), "--allow-unverified-base"]) == 0
    assert read_parts(tmp_path / "out").num_rows == 3


def test_server_runners_refuse_unverified_modules_unless_allowed(tiny_model, tiny_dir, tmp_path):
    pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
    from safety_modules.serve import LlavaRunner, VisionRunner

    modules = _unverified_modules(tiny_model, tmp_path)
    for runner in (LlavaRunner, VisionRunner):
        with pytest.raises(SafeVLMError, match="--allow-unverified-base"):
            runner.load(tiny_dir, modules)
        assert runner.load(tiny_dir, modules, allow_unverified_base=True) is not None
