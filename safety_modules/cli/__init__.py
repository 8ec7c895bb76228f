"""The ``safevlm`` command line. Each sub-package registers its own sub-commands here.

Heavy imports (torch, transformers) happen inside the commands, so ``safevlm --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from ..errors import SafeVLMError
from .help_format import Parser

# Modules that each define ``register(subparsers)``; one line per feature area.
COMMAND_MODULES = [
    "safety_modules.cli.base_commands",
    "safety_modules.cli.eval_commands",
    "safety_modules.cli.gate_commands",
    "safety_modules.cli.training_commands",
    "safety_modules.cli.scan_commands",
    "safety_modules.cli.checkpoint_commands",
    "safety_modules.cli.serve_commands",
    "safety_modules.cli.calibrate_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="safevlm", description="Safety modules for a frozen LLaVA-v1.5.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. What a user can cause (`SafeVLMError`, `OSError`) is one line and exit code 2
    (``-v`` adds the traceback); anything else is a bug and keeps its traceback (exit code 1)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard load/save bars drown the command's own output
    try:
        return int(args.func(args) or 0)
    except (SafeVLMError, OSError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"safevlm {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"safevlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            f"safevlm {args.command}: this is a bug in safevlm, not in your input; "
            "please report it, with the traceback above and the command, in the project's issue tracker",
            file=sys.stderr,
        )
        return 1


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (YAML marks and validation lists span several)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
