"""``scan-report``: a self-contained HTML page about a scan, and id lists to rebuild a clean corpus.

The page is one file that opens from disk with nothing fetched: the settings and the policy as tables,
the counts (per type, level, error kind and source), score histograms (matplotlib, embedded as base64
PNG), and a table of every flagged row and every error row that the reader sorts, filters and pages
through. The rows travel as compact JSON (names as indices into short lists, probabilities in
thousandths) and a few lines of plain JavaScript render one page of them at a time, so a report with
100,000 rows opens in about a second (``bench/report_open_time.py``). Thumbnails, blurred by default,
are embedded only for the highest-risk flagged rows, up to a budget the page states; they are read back
from the input recorded in the manifest.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageFilter

from ..images import ImageDecodeError, decode_image
from .output import read_manifest, read_parts, summarize
from .readers import CorpusReader, ItemError, ReaderOptions, load_bytes

THUMBNAIL_SIZE = 96
BLUR_RADIUS = 12
DEFAULT_THUMBNAILS = 200  # ~3 KB each as blurred JPEG: a few hundred keep the page under a few MB
ERROR_TEXT_LIMIT = 300  # characters of an error message kept in the page
SOURCES_SHOWN = 500  # rows of the per-source table; the rest are counted in a note
PAGE_TEMPLATE = Path(__file__).with_name("report_page.html")


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
    top_k: int = DEFAULT_THUMBNAILS,
    blur: bool = True,
    export_clean: str | Path | None = None,
    export_flagged: str | Path | None = None,
) -> Path:
    """Write ``report.html`` (default: inside ``out_dir``) and the optional id lists; returns the page's path.

    ``top_k``: how many flagged rows (the highest risk first) get an embedded thumbnail.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    settings = manifest.get("settings", {})
    taxonomy = settings["taxonomy"]
    types, levels, safe_type = taxonomy["types"], taxonomy["levels"], taxonomy["safe_type"]
    table = read_parts(out_dir)
    counts = summarize(table)
    # Error rows have a null ``flagged``: they are neither clean nor flagged, they could not be judged.
    flagged = pc.fill_null(table.column("flagged"), False)
    is_error = pc.is_valid(table.column("error"))
    clean = pc.and_(pc.invert(flagged), pc.invert(is_error))
    if export_clean:
        _write_ids(export_clean, table.filter(clean).column("id").to_pylist())
    if export_flagged:
        _write_ids(export_flagged, table.filter(flagged).column("id").to_pylist())

    shown = table.filter(pc.or_(flagged, is_error))
    risk = top_risk_type_prob(shown, types, safe_type)
    shown_flagged = np.asarray(pc.fill_null(shown.column("flagged"), False).to_numpy(zero_copy_only=False), bool)
    candidates = np.flatnonzero(shown_flagged)
    with_thumbnail = candidates[np.argsort(-risk[candidates], kind="stable")][: max(0, top_k)]
    ids = shown.column("id").to_pylist()
    thumbs = _thumbnails(settings.get("input", {}), {ids[i]: int(i) for i in with_thumbnail}, blur)
    rows = _rows_json(shown, ids, risk, [t for t in types if t != safe_type], thumbs)

    page = _render(
        manifest,
        counts,
        _source_counts(table, manifest),
        _histograms(table, types, levels, safe_type),
        rows,
        thumbnails=(len(thumbs), len(with_thumbnail), len(candidates), top_k),
        blur=blur,
    )
    path = Path(report_path) if report_path else out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _write_ids(path: str | Path, ids: list[str]) -> None:
    Path(path).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def _codes(column: pa.ChunkedArray) -> tuple[list[int], list[str]]:
    """A string column as (index into the names, -1 for null) and the names."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes.tolist(), names


def _milli(values: np.ndarray) -> list[int]:
    """Probabilities in thousandths (-1 where missing): 3 characters a value in the JSON instead of ~20."""
    out = np.where(np.isnan(values), -1, np.round(np.nan_to_num(values) * 1000))
    return out.astype(np.int64).tolist()


def _rows_json(table: pa.Table, ids: list[str], risk: np.ndarray, risk_types: list[str], thumbs: dict[int, str]):
    """The flagged and error rows as one column-wise JSON object (see the page's script for its reader)."""
    source, sources = _codes(table.column("source"))
    type_, type_names = _codes(table.column("type"))
    level, level_names = _codes(table.column("level"))
    kind, kinds = _codes(table.column("error_kind"))
    errors = [
        None if e is None else e[:ERROR_TEXT_LIMIT] + ("…" if len(e) > ERROR_TEXT_LIMIT else "")
        for e in table.column("error").to_pylist()
    ]
    data = {
        "n": table.num_rows,
        "id": ids,
        "source": source,
        "sources": sources,
        "flagged": [bool(v) for v in pc.fill_null(table.column("flagged"), False).to_pylist()],
        "type": type_,
        "types": type_names,
        "level": level,
        "levels": level_names,
        "risk": _milli(risk),
        "risk_types": risk_types,
        "p": [_milli(np.asarray(table.column(f"p_{t}").to_numpy(zero_copy_only=False), float)) for t in risk_types],
        "kind": kind,
        "kinds": kinds,
        "error": errors,
        "thumbs": {str(i): b64 for i, b64 in thumbs.items()},
    }
    # "<" only ever appears inside JSON strings, where \u003c means the same: no "</script>" can end the block.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def _source_counts(table: pa.Table, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per source (file, shard, split): rows, scored, flagged and errors from the parts, and what the
    manifest's reader account adds when the scan recorded one (seen, skipped, missing rows, ...)."""
    grouped = (
        pa.table(
            {
                "source": table.column("source"),
                "error": pc.cast(pc.is_valid(table.column("error")), pa.int64()),
                "flagged": pc.cast(pc.fill_null(table.column("flagged"), False), pa.int64()),
            }
        )
        .group_by("source")
        .aggregate([([], "count_all"), ("error", "sum"), ("flagged", "sum")])
        .to_pylist()
    )
    found = {
        g["source"]: {
            "rows": g["count_all"],
            "scored": g["count_all"] - g["error_sum"],
            "flagged": g["flagged_sum"],
            "errors": g["error_sum"],
        }
        for g in grouped
    }
    account = manifest.get("account")
    by_source = account.get("by_source", {}) if isinstance(account, dict) else {}
    for name, entry in by_source.items() if isinstance(by_source, dict) else []:
        if not isinstance(entry, dict):
            continue
        mine = found.setdefault(name, {"rows": 0, "scored": 0, "flagged": 0, "errors": 0})
        for key, value in entry.items():
            if key not in mine:  # the parts' own counts come first; the account adds what they cannot know
                mine[key] = value
    ordered = sorted(found.items(), key=lambda kv: (-(kv[1]["flagged"] + kv[1]["errors"]), str(kv[0])))
    return [{"source": name, **counts} for name, counts in ordered]


def _histograms(table, types: list[str], levels: list[str], safe_type: str) -> str:
    """`histogram_figure` as one PNG, base64."""
    buffer = io.BytesIO()
    histogram_figure(table, types, levels, safe_type).savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode()


def histogram_figure(table, types: list[str], levels: list[str], safe_type: str):
    """A histogram of each risk type's probability and the count of each top level, every axis labelled.

    A `Figure` of its own (no pyplot, no global backend), so that drawing it changes nothing for the caller.
    """
    from matplotlib.figure import Figure

    panels = [t for t in types if t != safe_type]
    cols = 4
    rows = -(-(len(panels) + 1) // cols)
    fig = Figure(figsize=(3.4 * cols, 2.7 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, panels):
        values = np.asarray(table.column(f"p_{name}").to_numpy(zero_copy_only=False), dtype=np.float64)
        ax.hist(values[~np.isnan(values)], bins=30, range=(0.0, 1.0), color="#b5473a")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"P({name})", fontsize=8)
        ax.set_ylabel("items", fontsize=8)
        ax.tick_params(labelsize=7)
    ax = axes.flat[len(panels)]
    level_counts = [int(pc.sum(pc.equal(table.column("level"), name)).as_py() or 0) for name in levels]
    # Only the risk levels are drawn in a warm colour; the safe level (index 0) is grey.
    colours = ["#8a8f98"] + [f"#{0xD0:02x}{max(0x40, 0xB0 - 0x30 * i):02x}3a" for i in range(len(levels) - 1)]
    ax.bar(range(len(levels)), level_counts, color=colours)
    ax.set_xticks(range(len(levels)), [n.replace("_", "\n") for n in levels], fontsize=7)
    ax.set_title("top level", fontsize=9)
    ax.set_xlabel("risk level (highest probability)", fontsize=8)
    ax.set_ylabel("items", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(panels) + 1 :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _thumbnails(input_info: dict[str, Any], wanted: dict[str, int], blur: bool) -> dict[int, str]:
    """base64 JPEG thumbnails of the wanted ids (id -> row), read back from the scanned input (one pass)."""
    if not wanted or "path" not in input_info:
        return {}
    options = ReaderOptions(
        kind=input_info.get("reader", "auto"),
        image_root=input_info.get("image_root"),
        image_column=input_info.get("image_column"),
        id_column=input_info.get("id_column"),
    )
    thumbs: dict[int, str] = {}
    try:
        reader = CorpusReader(input_info["path"], options)
    except (FileNotFoundError, ValueError):
        return {}  # the input moved: the report still has counts, histograms and every row
    for item in reader:
        row = wanted.get(item.id)
        if row is None:
            continue
        try:
            image = decode_image(load_bytes(item))
        except (ItemError, ImageDecodeError):
            continue
        thumbs[row] = thumbnail_b64(image, blur)
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


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def _table(headers: list[str], rows: list[list[Any]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _mapping_table(mapping: dict[str, Any], css: str = "") -> str:
    """A dict as a key/value table; a value that is a dict of dicts (the policy's rules) as a table of its own."""
    scalars = [[k, v] for k, v in mapping.items() if not _is_table(v)]
    out = [_table(["setting", "value"], scalars, css)] if scalars else []
    for key, value in mapping.items():
        if _is_table(value):
            columns = list(dict.fromkeys(c for row in value.values() for c in row))
            out.append(f"<h3>{html.escape(key)}</h3>")
            first = {"rules": "risk type"}.get(key, "name")
            out.append(
                _table([first, *columns], [[name, *(row.get(c) for c in columns)] for name, row in value.items()])
            )
    return "".join(out)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())


def _render(
    manifest: dict[str, Any],
    counts: dict[str, Any],
    sources: list[dict[str, Any]],
    histogram: str,
    rows_json: str,
    thumbnails: tuple[int, int, int, int],
    blur: bool,
) -> str:
    settings = manifest.get("settings", {})
    run = {
        "input": settings.get("input", {}).get("path"),
        "reader": settings.get("input", {}).get("reader"),
        "base": settings.get("base"),
        "safety modules": settings.get("safety"),
        "complete": manifest.get("complete"),
        "updated": manifest.get("updated"),
        **{k: settings[k] for k in ("dtype", "part_size", "max_pixels", "preprocess") if k in settings},
    }
    policy = settings.get("policy")
    policy_html = _mapping_table(policy) if isinstance(policy, dict) else html.escape(_cell(policy))
    summary = _table(
        ["items", "scored", "errors", "flagged"],
        [[counts["items"], counts["scored"], counts["errors"], counts["flagged"]]],
    )
    by_type = _table(["risk type", "items (top type)"], [[k, v] for k, v in counts["by_type"].items()])
    by_level = _table(["risk level", "items (top level)"], [[k, v] for k, v in counts["by_level"].items()])
    errors = _table(["error kind", "items"], [[k, v] for k, v in counts["errors_by_kind"].items()])
    columns = list(dict.fromkeys(k for s in sources for k in s))
    source_table = _table(columns, [[s.get(c) for c in columns] for s in sources[:SOURCES_SHOWN]], "sources")
    if len(sources) > SOURCES_SHOWN:
        source_table += (
            f"<p>{len(sources) - SOURCES_SHOWN} more sources (those with the fewest flagged and error rows) "
            "are not listed; the parquet parts have every row.</p>"
        )
    embedded, budgeted, flagged, budget = thumbnails
    note = (
        f"Thumbnails: {embedded} embedded, for the {budgeted} highest-risk of the {flagged} flagged rows "
        f"(budget <code>--thumbnails {budget}</code>)"
        + (f"; {budgeted - embedded} could not be read back from the input" if embedded < budgeted else "")
        + ". "
        + (
            "They are blurred; <code>safevlm scan-report --no-blur</code> writes them sharp."
            if blur
            else "They are <strong>not blurred</strong>."
        )
    )
    values = {
        "run": _mapping_table(run),
        "policy": policy_html,
        "counts": summary + by_type + by_level + errors,
        "sources": source_table,
        "histogram": histogram,
        "thumbnail_note": note,
        "rows": rows_json,
    }
    # One pass: text put in (an id, a path) is never searched for placeholders again.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], PAGE_TEMPLATE.read_text(encoding="utf-8"))
