"""`safevlm push` stays inside the folder: symlinks out of it are refused, the repo id is checked first."""

from __future__ import annotations

import shutil

import pytest

from safety_modules.checkpoints import PublishInputError, upload_folder
from safety_modules.cli import main


@pytest.fixture()
def modules(tiny_model, tmp_path):
    return tiny_model.safety.save_pretrained(tmp_path / "modules", {"name": "Mine"})


@pytest.mark.parametrize("name", ["README.md", "config.json", "model.safetensors"])
def test_a_symlink_out_of_the_folder_is_refused_and_nothing_is_staged(modules, tmp_path, capsys, name):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(modules, elsewhere)  # a valid file: only where it lives is wrong
    (elsewhere / "README.md").write_text("secret notes that must not be published\n")
    (modules / name).unlink()
    (modules / name).symlink_to(elsewhere / name)
    staged = tmp_path / "staged"
    assert main(["push", str(modules), "--repo-id", "me/x", "--dry-run", "--local-dir", str(staged)]) == 2
    err = capsys.readouterr().err
    assert f"{modules / name} is a symlink to {elsewhere / name}, outside {modules}" in err
    assert len(err.strip().splitlines()) == 1 and not staged.exists()


def test_a_symlink_that_stays_inside_the_folder_is_staged_as_a_file(modules, tmp_path, capsys):
    (modules / "README.md").rename(modules / "card.md")
    (modules / "README.md").symlink_to("card.md")
    staged = tmp_path / "staged"
    assert main(["push", str(modules), "--repo-id", "me/x", "--dry-run", "--local-dir", str(staged)]) == 0
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not (staged / "README.md").is_symlink()
    assert (staged / "README.md").read_text() == (modules / "card.md").read_text()


@pytest.mark.parametrize("repo_id", ["../../etc", "me/../etc", "a/b/c", "me/x y", "/etc"])
def test_the_repo_id_is_checked_before_anything_else(modules, tmp_path, capsys, repo_id):
    staged = tmp_path / "staged"
    assert main(["push", str(modules), "--repo-id", repo_id, "--dry-run", "--local-dir", str(staged)]) == 2
    err = capsys.readouterr().err
    assert "not a hub repository id" in err and repr(repo_id) in err and not staged.exists()
    # Checked first: a missing folder is not what it complains about.
    assert main(["push", str(tmp_path / "missing"), "--repo-id", repo_id, "--dry-run"]) == 2
    assert "not a hub repository id" in capsys.readouterr().err
    with pytest.raises(PublishInputError, match="not a hub repository id"):
        upload_folder(modules, repo_id)
