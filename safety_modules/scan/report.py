"""``scan-report``: a self-contained HTML page about a scan, and id lists to rebuild a clean corpus.

The page holds the counts per risk type and level, the error counts by kind, score
histograms (matplotlib, embedded as base64 PNG) and the top-k flagged items as
thumbnails, blurred by default so that reviewing a report does not expose people to
the content. Thumbnails are read back from the input recorded in the manifest.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ..images import ImageDecodeError, decode_image
from .output import MANIFEST_NAME, read_parts, summarize
from .readers import CorpusReader, ItemError, ReaderOptions, load_bytes

THUMBNAIL_SIZE = 160
BLUR_RADIUS = 12


def top_risk_type_prob(table, taxonomy_types: list[str], safe_type: str) -> np.ndarray:
    """Per row, the highest probability among the risk types (NaN for error rows)."""
    columns = [
        np.asarray(table.column(f"p_{t}").to_numpy(zero_copy_only=False), dtype=np.float64)
        for t in taxonomy_types
        if t != safe_type
    ]
    return np.max(np.stack(columns), axis=0)


def write_report(
    out_dir: str | Path,
    report_path: str | Path | None = None,
    top_k: int = 16,
    blur: bool = True,
    export_clean: str | Path | None = None,
    export_flagged: str | Path | None = None,
) -> Path:
    """Write ``report.html`` (default: inside ``out_dir``) and the optional id lists; returns the page's path."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    settings = manifest["settings"]
    types, levels = settings["taxonomy"]["types"], settings["taxonomy"]["levels"]
    safe_type = settings["taxonomy"]["safe_type"]
    table = read_parts(out_dir)
    counts = summarize(table)
    # Error rows have a null ``flagged``: they are neither clean nor flagged, they could not be judged.
    flagged = table.column("flagged").to_numpy(zero_copy_only=False)
    flagged_mask, clean_mask = flagged == True, flagged == False  # noqa: E712  (object array: None stays out)
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    if export_clean:
        _write_ids(export_clean, ids[clean_mask].tolist())
    if export_flagged:
        _write_ids(export_flagged, ids[flagged_mask].tolist())

    risk = top_risk_type_prob(table, types, safe_type)
    candidates = np.flatnonzero(flagged_mask)
    order = candidates[np.argsort(-risk[candidates], kind="stable")][:top_k]
    thumbs = _thumbnails(settings["input"], set(ids[order].tolist()), blur)
    picked = table.take(order)
    top_rows = list(
        zip(ids[order].tolist(), picked.column("type").to_pylist(), picked.column("level").to_pylist(), risk[order])
    )

    page = _render(manifest, counts, _histograms(table, types, levels, safe_type), top_rows, thumbs, blur)
    path = Path(report_path) if report_path else out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _write_ids(path: str | Path, ids: list[str]) -> None:
    Path(path).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def _histograms(table, types: list[str], levels: list[str], safe_type: str) -> str:
    """One PNG (base64): a histogram of each risk type's probability and of the top level's index."""
    from matplotlib.figure import Figure  # not pyplot: no global backend to set, no figure registry to close

    panels = [t for t in types if t != safe_type]
    cols = 4
    rows = -(-(len(panels) + 1) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, panels):
        values = np.asarray(table.column(f"p_{name}").to_numpy(zero_copy_only=False), dtype=np.float64)
        ax.hist(values[~np.isnan(values)], bins=30, range=(0.0, 1.0), color="#b5473a")
        ax.set_title(f"p_{name}", fontsize=9)
    ax = axes.flat[len(panels)]
    level_counts = [sum(1 for v in table.column("level").to_pylist() if v == name) for name in levels]
    ax.bar(range(len(levels)), level_counts, color="#3a6fb5")
    ax.set_xticks(range(len(levels)), [n.replace("_", "\n") for n in levels], fontsize=7)
    ax.set_title("top level", fontsize=9)
    for ax in list(axes.flat)[len(panels) + 1 :]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode()


def _thumbnails(input_info: dict[str, Any], wanted: set[str], blur: bool) -> dict[str, str]:
    """base64 JPEG thumbnails of the wanted ids, read back from the scanned input (one pass over it)."""
    if not wanted:
        return {}
    options = ReaderOptions(
        kind=input_info["reader"],
        image_root=input_info.get("image_root"),
        image_column=input_info.get("image_column"),
        id_column=input_info.get("id_column"),
    )
    thumbs: dict[str, str] = {}
    try:
        reader = CorpusReader(input_info["path"], options)
    except (FileNotFoundError, ValueError):
        return {}  # the input moved: the report still has counts and histograms
    for item in reader:
        if item.id not in wanted:
            continue
        try:
            image = decode_image(load_bytes(item))
        except (ItemError, ImageDecodeError):
            continue
        thumbs[item.id] = thumbnail_b64(image, blur)
        if len(thumbs) == len(wanted):
            break
    return thumbs


def thumbnail_b64(image: Image.Image, blur: bool) -> str:
    """A small JPEG (base64) of the image, Gaussian-blurred unless ``blur`` is False."""
    image = image.copy()
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS * image.width / THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _render(
    manifest: dict[str, Any],
    counts: dict[str, Any],
    histogram: str,
    top_rows: list[tuple],
    thumbs: dict[str, str],
    blur: bool,
) -> str:
    settings = manifest["settings"]
    summary = _table(
        ["items", "scored", "errors", "flagged"],
        [[counts["items"], counts["scored"], counts["errors"], counts["flagged"]]],
    )
    by_type = _table(["risk type", "items (top type)"], [[k, v] for k, v in counts["by_type"].items()])
    by_level = _table(["risk level", "items (top level)"], [[k, v] for k, v in counts["by_level"].items()])
    errors = _table(["error kind", "items"], [[k, v] for k, v in counts["errors_by_kind"].items()])
    cards = []
    for item_id, type_, level, risk in top_rows:
        if item_id in thumbs:
            img = f'<img class="thumb" src="data:image/jpeg;base64,{thumbs[item_id]}" alt="{html.escape(item_id)}">'
        else:
            img = '<div class="missing">image unavailable</div>'
        cards.append(
            f"<figure>{img}<figcaption>{html.escape(item_id)}<br>{html.escape(str(type_))} / "
            f"{html.escape(str(level))} ({risk:.2f})</figcaption></figure>"
        )
    note = (
        "Thumbnails are blurred; run <code>safevlm scan-report --no-blur</code> to see them."
        if blur
        else "Thumbnails are not blurred."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Scan report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 2em 1em 0; display: inline-table; vertical-align: top; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
figure {{ display: inline-block; margin: 0.4em; width: {THUMBNAIL_SIZE}px; font-size: 0.75em; }}
.missing {{ width: {THUMBNAIL_SIZE}px; height: {THUMBNAIL_SIZE // 2}px; background: #eee; }}
</style></head><body>
<h1>Scan report</h1>
<p>Input: <code>{html.escape(settings["input"]["path"])}</code> ({html.escape(settings["input"]["reader"])});
base <code>{html.escape(settings["base"])}</code>; safety modules <code>{html.escape(settings["safety"])}</code>;
policy: {html.escape(json.dumps(settings["policy"]))}; complete: {manifest.get("complete")}.</p>
<h2>Counts</h2>{summary}{by_type}{by_level}{errors}
<h2>Score histograms</h2><img alt="score histograms" src="data:image/png;base64,{histogram}">
<h2>Top {len(top_rows)} flagged items</h2><p>{note}</p>
{"".join(cards) or "<p>No item is flagged.</p>"}
</body></html>
"""
