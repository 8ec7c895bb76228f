"""Shared by the calibration tests: `safevlm calibrate` called in process."""

from __future__ import annotations

from pathlib import Path

from safety_modules.cli import main


def calibrate(base: Path, safety: Path, data: Path, out: Path, *options: str | Path) -> int:
    """`safevlm calibrate --base --safety --data --out` plus ``options``, in this process; its exit status."""
    args = ["calibrate", "--base", base, "--safety", safety, "--data", data, "--out", out, *options]
    return main([str(a) for a in args])
