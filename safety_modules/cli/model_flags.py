"""Command-line options shared by every command that attaches safety modules to a base."""

from __future__ import annotations

import argparse


def add_allow_unverified_base(parser: argparse.ArgumentParser) -> None:
    """``--allow-unverified-base``: the one opt-in named by the error for modules whose config names no base."""
    parser.add_argument(
        "--allow-unverified-base",
        action="store_true",
        help="accept safety modules whose config names no base (base_fingerprint null): they cannot be checked",
    )
