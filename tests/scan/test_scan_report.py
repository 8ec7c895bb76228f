"""``safevlm scan`` + ``safevlm scan-report``: self-contained HTML, blurred thumbnails, id exports."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from safety_modules.cli import main
from safety_modules.scan import read_parts

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


def test_scan_report_html_histograms_blurred_thumbnails_and_exports(tiny_dir, tmp_path, capsys):
    files = {**plain_images(6), "empty.jpg": broken_images()["empty.jpg"][0]}
    corpus = write_folder(tmp_path / "corpus", files)
    risky = save_safety(tiny_dir, tmp_path / "risky", flag_everything=True)
    out = tmp_path / "out"
    assert scan_cli(corpus, tiny_dir, risky, out, "--batch-size", "4") == 0
    assert "6 flagged, 1 errors" in capsys.readouterr().out

    clean, flagged = tmp_path / "clean.txt", tmp_path / "flagged.txt"
    assert (
        main(["scan-report", str(out), "--top-k", "4", "--export-clean", str(clean), "--export-flagged", str(flagged)])
        == 0
    )
    page = (out / "report.html").read_text()
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched from elsewhere
    histograms = embedded(page, "png")
    assert len(histograms) == 1 and histograms[0].size[0] > 200
    blurred = embedded(page, "jpeg")
    assert len(blurred) == 4 and "privacy" in page and "--no-blur" in page
    assert flagged.read_text().split() == [f"corpus:img_{i:03d}.png" for i in range(6)]
    assert clean.read_text() == ""  # every scored item is flagged; the broken one is in neither list

    assert main(["scan-report", str(out), "--top-k", "4", "--no-blur", "--output", str(tmp_path / "sharp.html")]) == 0
    sharp = embedded((tmp_path / "sharp.html").read_text(), "jpeg")
    assert len(sharp) == 4
    # The corpus is random noise: unblurred thumbnails are sharp, blurred ones nearly flat.
    assert max(map(sharpness, blurred)) < 0.25 * min(map(sharpness, sharp))


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
