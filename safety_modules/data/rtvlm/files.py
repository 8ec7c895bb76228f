"""RTVLM's image zips: extracted once into a cache folder, images found by file name whatever the zip's top folder."""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


def extract_zip(zip_path: Path, target: Path) -> None:
    """Extract once (a marker file records completion); members that would escape ``target`` are skipped."""
    marker = target / ".extracted"
    if marker.exists():
        return
    if target.exists():
        shutil.rmtree(target)  # an earlier extraction was interrupted
    target.mkdir(parents=True)
    root = target.resolve()
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.infolist():
            if member.is_dir() or member.filename.startswith("__MACOSX/"):
                continue
            destination = (target / member.filename).resolve()
            if root not in destination.parents:
                logger.warning("skipping zip member outside the extraction folder: %s", member.filename)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst)
    marker.write_text(str(zip_path) + "\n")


class ImageIndex:
    """File lookup by name (``x.jpg``) and by parent/name (``flags/x.jpg``) over one or more folders (first wins)."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.by_name: dict[str, Path] = {}
        self.by_parent: dict[str, Path] = {}
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    self.by_name.setdefault(path.name, path)
                    self.by_parent.setdefault(f"{path.parent.name}/{path.name}", path)

    def find(self, candidates: Iterable[str]) -> Path | None:
        for name in candidates:
            found = self.by_parent.get(name) if "/" in name else self.by_name.get(name)
            if found is not None:
                return found
        return None


def find_file(snapshot: Path, relative: str, own_folder: str, suffix: str) -> Path | None:
    """The documented path, else the only file with that suffix in the subset's own folder."""
    path = snapshot / relative
    if path.is_file():
        return path
    folder = snapshot / own_folder
    found = sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file()) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None
