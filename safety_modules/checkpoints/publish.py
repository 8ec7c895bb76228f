"""Publishing a safety-modules folder: stage exactly the files to upload, then hand them to huggingface_hub.

The upload itself is ``huggingface_hub``'s (``HfApi.create_repo`` + ``HfApi.upload_folder``); this
module decides *what* goes up. A training run's folder also holds optimizer states, logs and
checkpoints, so only the named files are copied into a fresh staging folder, and that folder is what
is uploaded (``safevlm push --dry-run --local-dir D`` leaves it in ``D`` to inspect).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, RemoteError

logger = logging.getLogger(__name__)


class PublishError(RemoteError):
    """The hub refused or could not be reached; the local folder is unchanged."""


class PublishInputError(ConfigError):
    """What was asked cannot be published: an invalid repo id, or a file that a symlink leads out of the folder."""


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a hub model id ``owner/name`` (huggingface_hub's own rules: no ``..``, no path)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PublishInputError(f"--repo-id {repo_id!r} is not a hub repository id: {exc}") from None
    if repo_id.count("/") != 1:
        raise PublishInputError(f"--repo-id must look like 'owner/name', got {repo_id!r}")
    return repo_id


def files_inside(source: str | Path, files: Sequence[str]) -> dict[str, Path]:
    """Each of ``files`` that exists in ``source``, as the real path it names; refuses a file that a symlink
    leads out of ``source`` (it would publish whatever it points at)."""
    source = Path(source)
    root = source.resolve()
    found = {}
    for name in files:
        path = source / name
        if not (path.exists() or path.is_symlink()):
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            raise PublishInputError(
                f"{path} is a symlink to {real}, outside {source}: refusing to publish it "
                "(copy the file into the folder if it is meant to go up)"
            )
        found[name] = real
    return found


def stage_files(source: str | Path, dest: str | Path, files: Sequence[str]) -> list[Path]:
    """Copy exactly ``files`` from ``source`` into ``dest`` (created; it must not hold anything yet). No symlink
    is followed out of ``source`` (`files_inside`)."""
    source, dest = Path(source), Path(dest)
    real = files_inside(source, files)
    missing = [name for name in files if name not in real or not real[name].is_file()]
    if missing:
        raise FileNotFoundError(f"{source} lacks {missing}: not a complete safety-modules folder")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"staging folder {dest} exists and is not empty; give a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(real[name], dest / name)) for name in files]


def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload safety modules",
) -> str:
    """Create ``repo_id`` (if needed) and upload the files of ``folder`` (its top level only, none of its
    sub-folders or hidden files); returns the commit URL."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    names = [p.name for p in Path(folder).iterdir() if p.is_file() and not p.is_symlink()]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        logger.info("uploading %s to %s", folder, url)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message,
            allow_patterns=names,  # exactly the staged files, even if something else appeared in the folder
        )
    except Exception as exc:  # network, auth and hub errors all mean the same to the caller: nothing published
        raise PublishError(f"upload to {repo_id} failed: {type(exc).__name__}: {exc}") from exc
    return str(commit)
