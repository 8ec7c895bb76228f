"""How long the scan report takes to write and to open in headless Chromium, for scans of N rows.

Each size gets a scan folder written by `testing.scan_fixture` (the scan's own schema and parquet
writer, random probabilities; every row flagged unless ``--flagged`` says less, 2% error rows), then
``safevlm scan-report`` writes the page, and a fresh headless Chromium opens it from disk. Printed per
size: rows in the page's table, the page's size, the write time, and the open time: from the start of
navigation until the first page of the table is in the document (the script's own
``performance.now()`` when it has rendered, which is after parsing the embedded JSON), and selenium's
wall time for ``get`` (load event); then the time to sort every row by id and to filter them by a type
(the handlers run synchronously, timed in the page). A screenshot of each page is saved beside it.

Usage: python bench/report_open_time.py [--rows 100 100000] [--flagged 1.0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from safety_modules.scan.report import write_report
from safety_modules.testing.browser import find_chromium, save_full_page, start_chromium
from safety_modules.testing.scan_fixture import write_synthetic_scan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 100_000])
    parser.add_argument("--flagged", type=float, default=1.0, help="share of the scored rows that are flagged")
    parser.add_argument("--out", type=Path, help="keep the scans, pages and screenshots here (default: a temp dir)")
    args = parser.parse_args()
    if find_chromium() is None:
        print("headless Chromium is not installed (apt-get install -y chromium chromium-driver)", file=sys.stderr)
        return 1
    out = args.out or Path(tempfile.mkdtemp(prefix="report-open-"))
    for rows in args.rows:
        folder = write_synthetic_scan(out / f"scan-{rows}", rows, flagged_share=args.flagged, error_share=0.02)
        start = time.perf_counter()
        page = write_report(folder)
        write_s = time.perf_counter() - start
        browser = start_chromium()
        try:
            start = time.perf_counter()
            browser.get(page.as_uri())
            get_s = time.perf_counter() - start
            rendered_ms = float(browser.execute_script("return document.body.dataset.renderedMs"))
            shown = browser.execute_script("return JSON.parse(document.getElementById('data').textContent).n")
            info = browser.find_element("id", "page-info").text
            screenshot = page.with_name(f"report-{rows}.png")
            save_full_page(browser, str(screenshot))  # as opened: the highest risk first
            # Sorting and filtering run in the click / change handlers, synchronously: timed around them.
            sort_ms = browser.execute_script(
                "const t = performance.now();"
                "document.querySelector('#row-head th[data-key=id]').click();"
                "return performance.now() - t;"
            )
            filter_ms = browser.execute_script(
                "const t = performance.now(), s = document.getElementById('f-type');"
                "s.value = '0'; s.dispatchEvent(new Event('change'));"
                "return performance.now() - t;"
            )
        finally:
            browser.quit()
        result = {
            "scan_rows": rows,
            "table_rows": shown,
            "page_MB": round(page.stat().st_size / 1e6, 2),
            "write_s": round(write_s, 2),
            "open_rendered_ms": rendered_ms,
            "selenium_get_s": round(get_s, 2),
            "sort_by_id_ms": round(sort_ms),
            "filter_by_type_ms": round(filter_ms),
            "page_info": info,
            "screenshot": str(screenshot),
        }
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
