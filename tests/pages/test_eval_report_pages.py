"""The RTVLM and UnsafeConcepts reports (``results.html``) in headless Chromium: the tables, the plot loaded
from the page itself, the notes; screenshots saved under the test's tmp folder."""

from __future__ import annotations

import pytest

from safety_modules.data.rtvlm import SUBTASKS
from safety_modules.evaluation import unsafe_concepts as ev
from safety_modules.evaluation.rtvlm import RTVLMResult, summarize, write_rtvlm_report
from safety_modules.evaluation.unsafe_concepts_report import write_unsafe_concepts_report
from safety_modules.testing.browser import save_full_page

pytestmark = pytest.mark.timeout(120)

FIELDS = ["id", "subtask", "subset", "label", "rubric", "score", "action", "judge_error", "question", "answer"]


def image_loaded(browser) -> list[int]:
    """Natural widths of the page's images (0 for one that did not load)."""
    return browser.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")


def test_rtvlm_report_page(browser, tmp_path):
    from selenium.webdriver.common.by import By

    rows = [
        {**dict.fromkeys(FIELDS, ""), "id": f"{s}-{i}", "subtask": s, "score": float(3 + i), "judge_reply": "5"}
        for s in SUBTASKS
        for i in range(2)
    ]
    subtasks, score = summarize(rows)
    result = RTVLMResult(rows=rows, subtasks=subtasks, score=score, approximate=True, judge="rules")
    write_rtvlm_report(result, tmp_path, "tiny [policy /somewhere/deep/policy.yaml]")
    page = tmp_path / "results.html"
    assert "http" not in page.read_text()  # nothing fetched

    browser.get(page.as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("RTVLM: tiny")
    tables = browser.find_elements(By.TAG_NAME, "table")
    assert len(tables) == 2
    per_subtask = tables[1].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in per_subtask] == list(SUBTASKS.values())
    assert [w > 800 for w in image_loaded(browser)] == [True]
    assert "APPROXIMATE" in browser.find_element(By.TAG_NAME, "body").text
    assert save_full_page(browser, str(tmp_path / "rtvlm.png"))


def test_unsafe_concepts_report_page_says_no_data_when_every_answer_was_na(browser, tmp_path):
    from selenium.webdriver.common.by import By

    unclear = [{"category": c, "label": "NA"} for c in ("Hate", "Sexual") for _ in range(3)]
    vis, txt = ev.alignment_metrics(unclear), ev.alignment_metrics(unclear)
    metrics = {"parser": "rules", "alignment": vis, "text_only": txt, "modality_gap": ev.modality_gap(txt, vis)}
    write_unsafe_concepts_report(metrics, tmp_path, "tiny")

    browser.get((tmp_path / "results.html").as_uri())
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Every alignment answer was N/A" in body
    assert browser.find_elements(By.CSS_SELECTOR, "table tbody tr")  # the alignment table, with its NA counts
    assert [w > 500 for w in image_loaded(browser)] == [True]  # the gap plot, with its "no data" note
    assert save_full_page(browser, str(tmp_path / "unsafe-concepts.png"))
