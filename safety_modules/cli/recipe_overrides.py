"""Command-line overrides of a training recipe, shared by ``train stage1|stage2`` and ``train rl``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


def add_recipe_arguments(p: argparse.ArgumentParser, steps: str, example: str) -> None:
    """The recipe path and the override flags that `recipe_overrides` reads (``steps`` names what max_steps counts,
    ``example`` is a ``--set`` example)."""
    p.add_argument("config", type=Path)
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument(
        "--resume-from",
        help="a checkpoint folder, or 'latest': the newest complete checkpoint in output_dir (incomplete ones are "
        "skipped with a warning; with none, training starts from step 0 with a warning)",
    )
    p.add_argument("--max-steps", type=int, help=f"override max_steps ({steps})")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override any setting, value read as YAML (e.g. --set {example})",
    )


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
