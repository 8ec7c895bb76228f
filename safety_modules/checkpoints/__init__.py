"""Known bases, model cards and publishing: the library side of the top-level ``checkpoints/`` folder.

The manifests (``bases/*.yaml``) and the card template (``model_card.md``) are package data so an
installed package has them; ``checkpoints/README.md`` at the repository top level points here.
This package sits beside ``config``: it imports nothing above it.
"""

from .bases import KnownBase, ManifestError, known_base, known_bases, matching_bases, name_base
from .card import CARD_NAME, CardData, render_card, write_card
from .publish import PublishError, PublishInputError, check_repo_id, files_inside, stage_files, upload_folder

__all__ = [
    "CARD_NAME",
    "CardData",
    "KnownBase",
    "ManifestError",
    "PublishError",
    "PublishInputError",
    "check_repo_id",
    "files_inside",
    "known_base",
    "known_bases",
    "matching_bases",
    "name_base",
    "render_card",
    "stage_files",
    "upload_folder",
    "write_card",
]
