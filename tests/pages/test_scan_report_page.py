"""The scan report in headless Chromium: opened from disk, every flagged and error row reachable by
sorting, filtering and paging; screenshots saved under the test's tmp folder."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from safety_modules.scan import read_parts
from safety_modules.scan.report import write_report
from safety_modules.testing.browser import save_full_page
from safety_modules.testing.scan_fixture import write_synthetic_scan

pytestmark = pytest.mark.timeout(180)


def column(browser, key: str) -> list[str]:
    """The texts of one column on the page shown."""
    return browser.execute_script(
        "const k = [...document.querySelectorAll('#row-head th')].findIndex(th => th.dataset.col === arguments[0]);"
        "return [...document.querySelectorAll('#row-body tr')].map(tr => tr.children[k].textContent);",
        key,
    )


def choose(browser, select_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, select_id)).select_by_visible_text(text)


def test_sort_filter_and_page_through_every_flagged_and_error_row(browser, tmp_path):
    from selenium.webdriver.common.by import By

    folder = write_synthetic_scan(tmp_path / "scan", 400, flagged_share=0.5, error_share=0.1, sources=3, part_size=150)
    page = write_report(folder)
    table = read_parts(folder)
    flagged = pc.fill_null(table.column("flagged"), False)
    errors = pc.is_valid(table.column("error"))
    shown = table.filter(pc.or_(flagged, errors))
    n_flagged, n_errors = pc.sum(flagged).as_py(), pc.sum(errors).as_py()
    assert n_flagged > 100 and n_errors > 10  # the fixture gives every case something to show

    browser.get(page.as_uri())
    info = browser.find_element(By.ID, "page-info")
    assert info.text == f"rows 1–50 of {shown.num_rows} (page 1 of {-(-shown.num_rows // 50)})"
    heads = [th.get_attribute("data-key") for th in browser.find_elements(By.CSS_SELECTOR, "#row-head th")]
    assert {"id", "source", "status", "type", "level", "risk", "p_privacy", "kind"} <= set(heads)
    # Default order: the highest risk first.
    risks = [float(v) for v in column(browser, "risk")]
    assert risks == sorted(risks, reverse=True)
    assert save_full_page(browser, str(tmp_path / "scan-report.png"))

    browser.find_element(By.CSS_SELECTOR, "#row-head th[data-key=risk]").click()  # now lowest first
    risks = [float(v) for v in column(browser, "risk")]
    assert risks == sorted(risks) and risks[0] == pytest.approx(min(risks), abs=1e-3)
    browser.find_element(By.CSS_SELECTOR, "#row-head th[data-key=id]").click()
    assert column(browser, "id") == sorted(shown.column("id").to_pylist())[:50]

    # Filters: by type, by status, by error kind, by source; each count is the parquet's.
    choose(browser, "f-type", "privacy")
    want = pc.sum(pc.equal(shown.column("type"), "privacy")).as_py()
    assert info.text.startswith(f"rows 1–{min(50, want)} of {want} ")
    assert set(column(browser, "type")) == {"privacy"}
    choose(browser, "f-type", "all")
    choose(browser, "f-status", "error")
    assert f"of {n_errors} " in info.text and set(column(browser, "status")) == {"error"}
    assert all(m.startswith(f"{k}: item ") for k, m in zip(column(browser, "kind"), column(browser, "error")))
    choose(browser, "f-kind", "truncated")
    want = pc.sum(pc.equal(shown.column("error_kind"), "truncated")).as_py()
    assert f"of {want} " in info.text and set(column(browser, "kind")) == {"truncated"}
    choose(browser, "f-kind", "all")
    choose(browser, "f-status", "all")
    choose(browser, "f-source", "shard-00001.tar")
    want = pc.sum(pc.equal(shown.column("source"), "shard-00001.tar")).as_py()
    assert f"of {want} " in info.text and set(column(browser, "source")) == {"shard-00001.tar"}
    choose(browser, "f-source", "all")

    # Paging: next, last, and a bigger page.
    first_page = column(browser, "id")
    browser.find_element(By.ID, "next").click()
    assert info.text.startswith(f"rows 51–100 of {shown.num_rows} ")
    assert not set(column(browser, "id")) & set(first_page)
    browser.find_element(By.ID, "last").click()
    pages = -(-shown.num_rows // 50)
    assert info.text == f"rows {50 * (pages - 1) + 1}–{shown.num_rows} of {shown.num_rows} (page {pages} of {pages})"
    browser.find_element(By.ID, "first").click()
    choose(browser, "page-size", "200")
    assert len(column(browser, "id")) == 200 and info.text.startswith(f"rows 1–200 of {shown.num_rows} ")

    # Labelled histograms are there, the policy is a table; no thumbnail could be read (no input), and it says so.
    assert browser.find_element(By.CSS_SELECTOR, "#histograms img").get_attribute("alt").startswith("histograms")
    assert browser.find_elements(By.CSS_SELECTOR, "#policy table")
    assert "0 embedded" in browser.find_element(By.ID, "thumbnail-note").text
    # Long ids wrap inside their cell: no cell is wider than the page.
    widest = browser.execute_script(
        "return Math.max(...[...document.querySelectorAll('#row-body td.id')]"
        ".map(td => td.scrollWidth - td.clientWidth))"
    )
    assert widest <= 1
    assert save_full_page(browser, str(tmp_path / "scan-report-last-page.png"))
    print("screenshots in", tmp_path)
