"""The parser every ``safevlm`` command is built with: its ``--help`` shows each option's default.

argparse's `ArgumentDefaultsHelpFormatter` appends ``(default: ...)`` only to options that have a help text,
and also for ``None`` and for flags. Here every option with a real default gets it, with or without a help
text, unless the help already says its default (as ``(default: detected)`` does).
"""

from __future__ import annotations

import argparse
from typing import Any


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose options show their defaults; its sub-parsers are of this class too."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        default = action.default
        shown = default is not None and default is not argparse.SUPPRESS and not isinstance(default, bool)
        shown = shown and default != []  # an option given many times (``--set``) starts empty: nothing to show
        if shown and action.option_strings and "default" not in (action.help or "").lower():
            action.help = f"{action.help} (default: %(default)s)" if action.help else "(default: %(default)s)"
        return action
