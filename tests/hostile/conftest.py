"""Hostile inputs, built by each test: YAML bombs, deep nesting, oversized files, wrong types, broken images.

Every case goes through the real CLI (`safety_modules.cli.main`, or a subprocess with a timeout where the
old behaviour was a hang) and must end in one line on stderr, exit code 2, no traceback, within seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safety_modules.cli import main

REPO = Path(__file__).resolve().parents[2]

# A "billion laughs": nine aliases of nine aliases, eight levels deep (9**9 strings once expanded).
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)
DEEP_YAML = "[" * 5000 + "]" * 5000  # 5,000 nested lists
DEEP_JSON = '{"a": ' * 5000 + "1" + "}" * 5000


def cli(capsys, *args: object) -> tuple[int, str]:
    """Run ``safevlm ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def one_line_error(rc: int, err: str, *fragments: str) -> str:
    """Assert exit status 2, no traceback, and exactly one ``safevlm ...: error:`` line holding ``fragments``;
    return that line."""
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def cli_subprocess(*args: object, timeout: float = 120) -> tuple[int, str, float]:
    """``python -m safety_modules.cli ARGS`` in a fresh process: (exit status, stderr, seconds). A hang is a
    `subprocess.TimeoutExpired` after ``timeout`` seconds (the process is killed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "safety_modules.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    return done.returncode, done.stderr, time.monotonic() - start


@pytest.fixture(scope="session")
def modules_dir(tiny_dir, tmp_path_factory):
    """Fresh safety modules for the tiny base, saved as a modules folder."""
    from safety_modules.modeling.safe_llava import SafeLlava

    return SafeLlava.from_pretrained(tiny_dir, seed=0).safety.save_pretrained(tmp_path_factory.mktemp("mods"))


@pytest.fixture(scope="session")
def photo_file(photos, tmp_path_factory):
    """One real photo as a PNG file."""
    path = tmp_path_factory.mktemp("img") / "photo.png"
    photos[0].save(path)
    return path
