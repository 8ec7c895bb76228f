"""Writing a run's report: markdown tables, CSV files and the run's ``results.md``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers with fixed digits; missing values (None / NaN) as ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV file; missing values are empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row])
    return path


def write_markdown(path: str | Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """``results.md``: a title, then (heading, body) sections."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for heading, body in sections:
        if heading:
            parts += [f"## {heading}", ""]
        parts += [body.rstrip(), ""]
    path.write_text("\n".join(parts))
    return path


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the present values; None when there are none."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None
