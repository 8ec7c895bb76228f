"""Writing a run's report: markdown tables, CSV files, the run's ``results.md`` and ``results.html``."""

from __future__ import annotations

import base64
import csv
import html
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


def write_html(
    path: str | Path, title: str, sections: Sequence[tuple[str, str]], images: Sequence[tuple[str, Path]] = ()
) -> Path:
    """``results.html``: the same sections as ``results.md`` and the run's plots, in one page that opens from disk.

    The markdown is rendered by markdown-it (CommonMark with tables); the PNGs are embedded as base64, so the
    page needs nothing beside it. An image that was not drawn (no data) is left out, saying so.
    """
    from markdown_it import MarkdownIt

    render = MarkdownIt("commonmark", {"html": False}).enable("table").render
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(render(body))
    for caption, image in images:
        if Path(image).is_file():
            data = base64.b64encode(Path(image).read_bytes()).decode()
            parts.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        else:
            parts.append(f'<p class="missing">{html.escape(caption)}: not drawn (no data to plot).</p>')
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:90em}"
    "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.2em .5em;"
    "text-align:left}td{overflow-wrap:break-word}th{background:#f2f3f5}img{max-width:100%}"
    "figcaption{font-size:.9em;color:#555}"
)


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the present values; None when there are none."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None
