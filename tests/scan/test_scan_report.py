"""``safevlm scan`` + ``safevlm scan-report``: self-contained HTML, blurred thumbnails, id exports."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
from PIL import Image

from safety_modules.cli import main
from safety_modules.scan import read_parts
from safety_modules.taxonomy import Taxonomy
from safety_modules.testing.scan_fixture import write_synthetic_scan

from ..scan_corpus import broken_images, plain_images, save_safety, write_folder


def embedded(page: str, kind: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(rf'src="data:image/{kind};base64,([A-Za-z0-9+/=]+)"', page)
    ]


def sharpness(image: Image.Image) -> float:
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(pixels, axis=1)).mean())


def scan_cli(corpus, base, safety, out, *extra: str) -> int:
    """``safevlm scan`` in this process, without workers or a progress bar."""
    args = ["scan", str(corpus), "--base", str(base), "--safety", str(safety), "--out", str(out)]
    return main([*args, "--workers", "0", "--no-progress", *extra])


def report_data(page: str) -> dict:
    """The rows the page embeds (its JSON block)."""
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))


def test_scan_report_html_histograms_blurred_thumbnails_and_exports(tiny_dir, tmp_path, capsys):
    files = {**plain_images(6), "empty.jpg": broken_images()["empty.jpg"][0]}
    corpus = write_folder(tmp_path / "corpus", files)
    risky = save_safety(tiny_dir, tmp_path / "risky", flag_everything=True)
    out = tmp_path / "out"
    assert scan_cli(corpus, tiny_dir, risky, out, "--batch-size", "4") == 0
    assert "6 flagged, 1 errors" in capsys.readouterr().out

    clean, flagged = tmp_path / "clean.txt", tmp_path / "flagged.txt"
    args = [
        "scan-report",
        str(out),
        "--thumbnails",
        "4",
        "--export-clean",
        str(clean),
        "--export-flagged",
        str(flagged),
    ]
    assert main(args) == 0
    page = (out / "report.html").read_text()
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched from elsewhere
    histograms = embedded(page, "png")
    assert len(histograms) == 1 and histograms[0].size[0] > 200
    data = report_data(page)
    # Every flagged row and the error row are in the table, the error with its kind and message.
    assert data["n"] == 7 and sorted(data["id"]) == sorted(
        [f"corpus:img_{i:03d}.png" for i in range(6)] + ["corpus:empty.jpg"]
    )
    error_row = data["id"].index("corpus:empty.jpg")
    assert data["kinds"][data["kind"][error_row]] == "empty" and "empty" in data["error"][error_row]
    assert data["risk"][error_row] == -1 and not data["flagged"][error_row]
    # Thumbnails for the 4 highest-risk flagged rows only, and the page says so.
    blurred = [Image.open(io.BytesIO(base64.b64decode(b))) for b in data["thumbs"].values()]
    assert len(blurred) == 4
    with_thumb = sorted(int(i) for i in data["thumbs"])
    others = [i for i in range(7) if data["flagged"][i] and i not in with_thumb]
    assert min(data["risk"][i] for i in with_thumb) >= max(data["risk"][i] for i in others)
    assert "4 embedded, for the 4 highest-risk of the 6 flagged rows" in page and "--no-blur" in page
    # The policy is a table (one row per risk type), not a line of raw JSON.
    assert "<th>risk type</th><th>enabled</th><th>hint</th><th>refuse</th>" in page and '{"name"' not in page
    assert (
        "<td>corpus</td><td>7</td><td>6</td><td>6</td><td>1</td>" in page
    )  # per source: rows, scored, flagged, errors
    assert flagged.read_text().split() == [f"corpus:img_{i:03d}.png" for i in range(6)]
    assert clean.read_text() == ""  # every scored item is flagged; the broken one is in neither list

    assert main(["scan-report", str(out), "--top-k", "4", "--no-blur", "--output", str(tmp_path / "sharp.html")]) == 0
    sharp_data = report_data((tmp_path / "sharp.html").read_text())
    sharp = [Image.open(io.BytesIO(base64.b64decode(b))) for b in sharp_data["thumbs"].values()]
    assert len(sharp) == 4
    # The corpus is random noise: unblurred thumbnails are sharp, blurred ones nearly flat.
    assert max(map(sharpness, blurred)) < 0.25 * min(map(sharpness, sharp))


def test_histograms_have_labelled_axes(tmp_path):
    from safety_modules.scan.report import histogram_figure

    table = read_parts(write_synthetic_scan(tmp_path / "scan", 50))
    taxonomy = Taxonomy()
    figure = histogram_figure(table, list(taxonomy.types), list(taxonomy.levels), taxonomy.safe_type)
    drawn = [ax for ax in figure.axes if ax.axison]
    assert len(drawn) == len(taxonomy.risk_types) + 1
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in drawn)


def test_thumbnail_budget_default_is_the_reports():
    from safety_modules.cli import scan_commands
    from safety_modules.scan import report

    assert scan_commands.DEFAULT_THUMBNAILS == report.DEFAULT_THUMBNAILS


def test_exports_follow_the_flagged_column(tiny_dir, safety_dir, tmp_path):
    corpus = write_folder(tmp_path / "corpus", {**plain_images(8), "bad.png": b"nope"})
    out = tmp_path / "out"
    assert scan_cli(corpus, tiny_dir, safety_dir, out) == 0
    clean, flagged = tmp_path / "clean.txt", tmp_path / "flagged.txt"
    assert main(["scan-report", str(out), "--export-clean", str(clean), "--export-flagged", str(flagged)]) == 0
    rows = read_parts(out).to_pylist()
    assert flagged.read_text().split() == [r["id"] for r in rows if r["flagged"]]
    assert clean.read_text().split() == [r["id"] for r in rows if r["error"] is None and not r["flagged"]]
    assert len(clean.read_text().split()) + len(flagged.read_text().split()) == 8


def test_per_source_counts_add_what_the_manifest_account_records(tmp_path):
    """A scan whose manifest carries the reader's account (seen, skipped, missing rows per source) shows it beside
    the counts from the parts; one without it shows those alone."""
    from safety_modules.scan.report import write_report

    folder = write_synthetic_scan(tmp_path / "scan", 40, sources=2, error_share=0.2)
    page = write_report(folder).read_text()
    assert "<th>source</th><th>rows</th><th>scored</th><th>flagged</th><th>errors</th></tr>" in page
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["account"] = {
        "by_source": {
            "shard-00000.tar": {"seen": 23, "rows": 20, "skipped_by_reason": {"no image": 3}},
            "gone.tar": {"seen": 5, "rows": 0, "missing_rows": 5},
        }
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    page = write_report(folder).read_text()
    header = "<th>source</th><th>rows</th><th>scored</th><th>flagged</th><th>errors</th><th>seen</th>"
    assert header in page and "<th>skipped_by_reason</th>" in page and "<th>missing_rows</th>" in page
    assert (
        "<td>no image: 3</td>" in page and "<td>gone.tar</td><td>0</td><td>0</td><td>0</td><td>0</td><td>5</td>" in page
    )
