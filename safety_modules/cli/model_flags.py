"""Command-line options shared by every command that attaches safety modules to a base."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..modeling import SafeLlava


def add_allow_unverified_base(parser: argparse.ArgumentParser) -> None:
    """``--allow-unverified-base``: the one opt-in named by the error for modules whose config names no base."""
    parser.add_argument(
        "--allow-unverified-base",
        action="store_true",
        help="accept safety modules whose config names no base (base_fingerprint null): they cannot be checked",
    )


def load_model(args: argparse.Namespace, **overrides: Any) -> SafeLlava:
    """`SafeLlava.from_pretrained` from the shared flags (``--base``, ``--safety``, ``--dtype``, ``--device``,
    ``--lora`` where the command has it, ``--allow-unverified-base``); ``overrides`` win (e.g. ``seed=0``)."""
    from ..modeling import SafeLlava

    kwargs: dict[str, Any] = {
        "dtype": args.dtype,
        "device": args.device,
        "lora": getattr(args, "lora", None),
        "allow_unverified_base": args.allow_unverified_base,
        **overrides,
    }
    return SafeLlava.from_pretrained(args.base, args.safety, **kwargs)
