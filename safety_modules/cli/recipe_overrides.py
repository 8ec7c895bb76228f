"""Command-line overrides of a training recipe, shared by ``train stage1|stage2`` and ``train rl``."""

from __future__ import annotations

import argparse
from typing import Any

import yaml


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """A training recipe's overrides from the command line: the common flags, then each ``--set KEY=VALUE``
    (the value read as YAML). Shared by ``train stage1|stage2`` and ``train rl``."""
    overrides: dict[str, Any] = dict(output_dir=args.output_dir, resume_from=args.resume_from, max_steps=args.max_steps)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
