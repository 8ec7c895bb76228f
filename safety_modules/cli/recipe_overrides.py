"""Command-line overrides of a training recipe, shared by ``train stage1|stage2`` and ``train rl``."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError


class _HelpWithDefaults(argparse.Action):
    """``-h``: the usual help, then every recipe setting with its default, read from the settings class
    (imported only now, so that building the parser stays light)."""

    def __init__(self, option_strings: list[str], dest: str, settings: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.settings = settings

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        module, name = self.settings.split(":")
        parser.epilog = getattr(importlib.import_module(module), name).defaults_text()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.print_help()
        parser.exit()


def add_settings_help(p: argparse.ArgumentParser, settings: str) -> None:
    """``-h``/``--help`` that also lists every setting of ``settings`` (``module:Class``) with its default;
    ``p`` is made with ``add_help=False``."""
    p.add_argument(
        "-h", "--help", action=_HelpWithDefaults, settings=settings, help="show this help and every setting's default"
    )


def add_recipe_arguments(p: argparse.ArgumentParser, steps: str, example: str, settings: str) -> None:
    """The recipe path and the override flags that `recipe_overrides` reads (``steps`` names what max_steps counts,
    ``example`` is a ``--set`` example, ``settings`` the ``module:Class`` whose defaults ``--help`` lists).
    ``p`` is made with ``add_help=False``: this ``-h`` replaces argparse's."""
    add_settings_help(p, settings)
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
    (the value read as YAML 1.2 by the one loader: ``no`` is the string "no"). Shared by ``train stage1|stage2``
    and ``train rl``."""
    from ..safe_files import parse_yaml

    overrides: dict[str, Any] = dict(output_dir=args.output_dir, resume_from=args.resume_from, max_steps=args.max_steps)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_yaml(value, f"--set {key.strip()}")
    return overrides
