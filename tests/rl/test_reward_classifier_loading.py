"""A reward classifier that cannot be loaded is one clear error naming its folder and the problem."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from safety_modules.cli import main
from safety_modules.testing.rl_tiny_task import make_rl_corpus
from safety_modules.training.rl.rewards import RewardClassifierError, make_judge


def _truncate(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _pickle_only(folder):
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


@pytest.mark.parametrize(
    "damage,problem",
    [
        (_truncate, "model.safetensors: unreadable safetensors file (truncated or not one"),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "unreadable safetensors file"),
        (lambda d: (d / "model.safetensors").write_bytes(b"<html>not found</html>" * 20), "unreadable safetensors"),
        (_pickle_only, "holds only pickle weights ['pytorch_model.bin']; only .safetensors are loaded"),
        (lambda d: (d / "config.json").unlink(), "no config.json in the folder"),
        (lambda d: shutil.rmtree(d), "no such folder"),
    ],
)
def test_a_broken_classifier_folder_is_one_clear_error(classifier_dir, tmp_path, damage, problem):
    folder = tmp_path / "classifier"
    shutil.copytree(classifier_dir, folder)
    damage(folder)
    with pytest.raises(RewardClassifierError) as info:
        make_judge("classifier", str(folder))
    message = str(info.value)
    assert str(folder) in message and problem in message and "\n" not in message


def test_published_layout_weights_are_checked_before_loading(classifier_dir, tmp_path):
    weights = tmp_path / "alignment.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a header that promises more than the file holds
    with pytest.raises(RewardClassifierError, match=f"weights {weights}: unreadable safetensors"):
        make_judge("classifier", str(classifier_dir), classifier_weights=str(weights))
    torch.save({"fc.weight": torch.zeros(3, 32)}, tmp_path / "epoch_10.pt")
    with pytest.raises(RewardClassifierError, match="only .safetensors weights are loaded"):
        make_judge("classifier", str(classifier_dir), classifier_weights=str(tmp_path / "epoch_10.pt"))
    with pytest.raises(RewardClassifierError, match=f"encoder {tmp_path / 'missing'}: no such folder"):
        make_judge("classifier", str(tmp_path / "missing"), classifier_weights=str(weights))


def test_train_rl_with_a_missing_classifier_folder_prints_one_line(tmp_path, capsys):
    train, _ = make_rl_corpus(tmp_path / "corpus", total=18)
    missing = tmp_path / "no" / "classifier"
    recipe = tmp_path / "rl.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "base": str(tmp_path / "never-loaded"),
                "train_data": [str(train)],
                "output_dir": str(tmp_path / "run"),
                "reward": "classifier",
                "reward_classifier": str(missing),
                "progress_bar": False,
            }
        )
    )
    assert main(["train", "rl", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"safevlm train: error: reward classifier {missing}: no such folder"]
