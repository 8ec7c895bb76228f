"""Every ``safevlm`` command's ``--help`` shows the defaults the code uses and names every choice."""

from __future__ import annotations

import argparse

import pytest

from safety_modules.cli import build_parser


def commands(parser: argparse.ArgumentParser, path=("safevlm",)):
    """(command path, parser) for every command and sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL = dict(commands(build_parser()))


@pytest.mark.parametrize("path", sorted(ALL), ids=" ".join)
def test_help_shows_every_default_and_every_choice(path):
    parser = ALL[path]
    text = " ".join(parser.format_help().split())  # one line: wrapping splits "(default:" from its value
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        default = action.default
        if default not in (None, argparse.SUPPRESS, []) and not isinstance(default, bool):
            assert "default" in (action.help or "").lower(), f"{' '.join(path)} {action.option_strings[0]}"
            assert f"(default: {default})" in text or "(default" in (action.help or ""), action.option_strings
        for choice in action.choices or []:
            assert str(choice) in text, f"{' '.join(path)} {action.option_strings[0]}: {choice}"


def test_help_names_what_the_commands_do():
    train = " ".join(ALL[("safevlm",)].format_help().split())
    assert "(stage 1), LoRA (stage 2) or RL alignment" in train
    policy = " ".join(ALL[("safevlm", "generate")].format_help().split())
    assert "none" in policy.split("--policy", 2)[-1].split("--", 1)[0]
    for path, shown in [("scan", "32"), ("serve", "8000"), ("generate", "128"), ("calibrate", "16")]:
        assert f"(default: {shown})" in " ".join(ALL[("safevlm", path)].format_help().split())
    assert "(default: runs/demo)" in " ".join(ALL[("safevlm", "demo")].format_help().split())
    assert "(default: 200)" in " ".join(ALL[("safevlm", "scan-report")].format_help().split())
