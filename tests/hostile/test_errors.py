"""One error family: what a user can cause is one line (exit 2, the traceback with -v); anything else is a bug."""

from __future__ import annotations

import pytest

from safety_modules.cli import base_commands
from safety_modules.errors import ConfigError, InputError, ModelError, RemoteError, SafeVLMError
from safety_modules.output_lock import OutputLock

from .conftest import cli, one_line_error


def test_every_user_facing_error_is_a_safevlm_error():
    from safety_modules.checkpoints.bases import ManifestError
    from safety_modules.checkpoints.publish import PublishError, PublishInputError
    from safety_modules.data.format import RecordError
    from safety_modules.data.rtvlm.loader import RTVLMFormatError
    from safety_modules.evaluation.judge import JudgeError, JudgeUnavailable
    from safety_modules.images import ImageDecodeError
    from safety_modules.modeling.safety_modules import CheckpointError, IncompatibleBaseError
    from safety_modules.output_lock import OutputLockedError
    from safety_modules.policy.spec import PolicyError
    from safety_modules.scan.readers import ItemError
    from safety_modules.serve.protocol import ApiError
    from safety_modules.training.checkpoint import CheckpointError as TrainingCheckpointError
    from safety_modules.training.rl.rewards import RewardClassifierError

    family = {
        ManifestError: ConfigError,
        PolicyError: ConfigError,
        RecordError: InputError,
        RTVLMFormatError: InputError,
        ImageDecodeError: InputError,
        ItemError: InputError,
        CheckpointError: ModelError,
        IncompatibleBaseError: ModelError,
        TrainingCheckpointError: ModelError,
        RewardClassifierError: ModelError,
        PublishError: RemoteError,
        PublishInputError: ConfigError,
        JudgeError: RemoteError,
        JudgeUnavailable: RemoteError,
        OutputLockedError: SafeVLMError,
        ApiError: SafeVLMError,
    }
    for error, area in family.items():
        assert issubclass(error, area), error


def test_a_scan_refused_by_the_lock_is_one_line(tiny_dir, modules_dir, photo_file, tmp_path, capsys):
    out = tmp_path / "scan"
    with OutputLock(out):  # another scan holds the folder
        rc, err = cli(capsys, "scan", photo_file.parent, "--base", tiny_dir, "--safety", modules_dir, "--out", out)
    one_line_error(rc, err, "is being written by another scan")


def test_verbose_brings_the_traceback_back(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train_data: [d.jsonl]\nlearning_rat: 0.1\n")
    rc, err = cli(capsys, "train", "stage1", recipe)
    one_line_error(rc, err, "unknown training settings ['learning_rat']")
    rc, err = cli(capsys, "-v", "train", "stage1", recipe)
    assert rc == 2 and "Traceback" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("safevlm train: error: ")


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), ValueError("an internal check")])
def test_anything_else_is_a_bug_with_its_traceback(bug, tmp_path, capsys, monkeypatch):
    """A plain ValueError is no longer taken for a user error: it is a bug, shown with its traceback."""

    def command_with_a_bug(args):
        raise bug

    monkeypatch.setattr(base_commands, "cmd_make_tiny", command_with_a_bug)
    rc, err = cli(capsys, "make-tiny", tmp_path / "t")
    assert rc == 1
    assert "Traceback" in err and str(bug) in err
    assert "this is a bug in safevlm" in err.splitlines()[-1]
