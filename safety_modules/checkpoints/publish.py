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


def stage_files(source: str | Path, dest: str | Path, files: Sequence[str]) -> list[Path]:
    """Copy exactly ``files`` from ``source`` into ``dest`` (created; it must not hold anything yet)."""
    source, dest = Path(source), Path(dest)
    missing = [name for name in files if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} lacks {missing}: not a complete safety-modules folder")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"staging folder {dest} exists and is not empty; give a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(source / name, dest / name)) for name in files]


def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload safety modules",
) -> str:
    """Create ``repo_id`` (if needed) and upload every file of ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    if repo_id.count("/") != 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ConfigError(f"repo id must look like 'owner/name', got {repo_id!r}")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        logger.info("uploading %s to %s", folder, url)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
        )
    except Exception as exc:  # network, auth and hub errors all mean the same to the caller: nothing published
        raise PublishError(f"upload to {repo_id} failed: {type(exc).__name__}: {exc}") from exc
    return str(commit)
