"""The model card written by save_pretrained, and `safevlm push`: what is staged, what is refused, a failed upload."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from safety_modules import SafeLlava, SafetyModules
from safety_modules.checkpoints import CardData, known_base
from safety_modules.cli import main

from ..conftest import random_image


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_save_pretrained_writes_a_card_from_the_config_and_the_card_data(tiny_model, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"auroc": 0.91234, "per_type_recall": {"privacy": 0.5}}))
    folder = tiny_model.safety.save_pretrained(
        tmp_path / "mods",
        card_data={
            "name": "Tiny safety modules",
            "training_data": ["VLGuard train (balanced, 3000 clean)", "synth 300"],
            "metrics": str(metrics),
            "license": "apache-2.0",
        },
    )
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "# Tiny safety modules" in card
    assert _front_matter(card) == {
        "library_name": "safety_modules",
        "tags": ["safety", "llava", "vision-language"],
        "license": "apache-2.0",
    }  # no base_model: the tiny base is no known base
    config = tiny_model.safety.config
    assert all(f"`{name}`" in card for name in config.level_names + config.type_names)
    assert "- VLGuard train (balanced, 3000 clean)\n- synth 300" in card
    assert "| auroc | 0.9123 |" in card and "| per_type_recall.privacy | 0.5000 |" in card
    assert config.base_fingerprint["projector_digest"] in card
    assert "matches no known base" in card


def test_card_without_data_says_what_is_missing_and_names_a_known_base(tiny_model, tmp_path):
    made_for = dict(known_base("llava-hf/llava-1.5-7b-hf").fingerprint)
    config = dataclasses.replace(tiny_model.safety.config, base_fingerprint=made_for)
    bare = SafetyModules(config).save_pretrained(tmp_path / "bare")
    card = (bare / "README.md").read_text()
    assert "Not given, and the modules record no training run." in card and card.count("Not given.") == 1  # metrics
    assert "Not calibrated" in card
    assert "geometry of `liuhaotian/llava-v1.5-7b`, `llava-hf/llava-1.5-7b-hf`" in card
    named = SafetyModules(config).save_pretrained(tmp_path / "named", CardData(base_model="llava-hf/llava-1.5-7b-hf"))
    assert _front_matter((named / "README.md").read_text())["base_model"] == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(ValueError, match="unknown model-card settings"):
        tiny_model.safety.save_pretrained(tmp_path / "x", card_data={"metric": 1})
    tiny_model.safety.save_pretrained(tmp_path / "no-card", write_card_file=False)
    assert not (tmp_path / "no-card" / "README.md").exists()


def _training_folder(tiny_model, tmp_path):
    """A stage-1 output folder: the modules and their card, plus what training leaves beside them."""
    folder = tiny_model.safety.save_pretrained(tmp_path / "run" / "safety_modules", {"name": "From training"})
    (folder / "optimizer.pt").write_bytes(b"\0" * 64)
    (folder / "log.jsonl").write_text("{}\n")
    return folder


def test_push_dry_run_stages_exactly_the_modules_and_card(tiny_model, tiny_dir, tmp_path, capsys):
    folder = _training_folder(tiny_model, tmp_path)
    staged = tmp_path / "staged"
    assert main(["push", str(folder), "--repo-id", "me/tiny-modules", "--dry-run", "--local-dir", str(staged)]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (staged / "README.md").read_text() == (folder / "README.md").read_text()  # the folder's own card
    # What would go up attaches to the base and scores exactly as the original modules.
    images = [random_image(3), random_image(4)]
    expected = tiny_model.assess(images, ["what is this?"] * 2).level_logits
    got = SafeLlava.from_pretrained(tiny_dir, staged).assess(images, ["what is this?"] * 2).level_logits
    assert torch.equal(expected, got)

    # --card-data rewrites the card, and the example code names the repo.
    card_yaml = tmp_path / "card.yaml"
    card_yaml.write_text(yaml.safe_dump({"name": "Published", "training_data": "synth 300"}))
    assert (
        main(
            [
                "push",
                str(folder),
                "--repo-id",
                "me/tiny-modules",
                "--card-data",
                str(card_yaml),
                "--dry-run",
                "--local-dir",
                str(tmp_path / "staged2"),
            ]
        )
        == 0
    )
    card = (tmp_path / "staged2" / "README.md").read_text()
    assert "# Published" in card and "- synth 300" in card and '"me/tiny-modules"' in card


def test_push_refuses_incomplete_folders_and_used_staging_folders(tiny_model, tmp_path, capsys):
    folder = _training_folder(tiny_model, tmp_path)
    assert main(["push", str(folder), "--repo-id", "me/x", "--dry-run", "--local-dir", str(folder)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["push", str(folder), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "--local-dir" in capsys.readouterr().err
    (folder / "model.safetensors").unlink()
    assert main(["push", str(folder), "--repo-id", "me/x", "--dry-run", "--local-dir", str(tmp_path / "s")]) == 2
    assert "model.safetensors" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_a_failed_upload_is_a_clear_error_and_changes_nothing(tiny_model, tmp_path):
    folder = _training_folder(tiny_model, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with socket.socket() as probe:  # a port on which nothing listens: the "hub" refuses the connection
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(
        os.environ, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="hf_not_a_real_token", HF_HUB_DISABLE_TELEMETRY="1"
    )
    run = subprocess.run(
        [sys.executable, "-m", "safety_modules.cli", "push", str(folder), "--repo-id", "me/x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "upload to me/x failed" in run.stderr and "nothing published" in run.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
