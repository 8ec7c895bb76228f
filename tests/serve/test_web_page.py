"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
upload an image, ask, and the decision bars and the streamed answer appear; a screenshot is saved."""

from __future__ import annotations

import json

import pytest

from safety_modules.gate import Gate

from .conftest import API_KEY

# Answers and scores are compared with the same model in this process.
pytestmark = [pytest.mark.timeout(180), pytest.mark.device_sensitive]


def test_upload_ask_and_see_the_decision_and_the_answer(browser, server, assets, direct, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image_file = tmp_path / "photo.png"
    assets.photos[0].save(image_file)
    prompt = "What is shown in this image?"
    model, policy = direct
    want = Gate(model, policy).generate([assets.photos[0]], [prompt], do_sample=False, max_new_tokens=12)[0]

    browser.get(server + "/")
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    browser.find_element(By.ID, "image").send_keys(str(image_file))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "preview").get_attribute("src"))
    browser.find_element(By.ID, "question").send_keys(prompt)
    maxtokens = browser.find_element(By.ID, "maxtokens")
    maxtokens.clear()
    maxtokens.send_keys("12")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "answer").get_attribute("data-done") == "1")
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "action").text == want.decision.action
    assert want.decision.rule in browser.find_element(By.ID, "rule").text
    assert browser.find_element(By.ID, "answer").text.strip() == want.text.strip()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#levels .bar")) == len(want.decision.level_probs)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#types .bar")) == len(want.decision.type_probs)
    assert browser.save_screenshot(str(tmp_path / "chat.png"))

    # The moderation tab: the same image scored alone (refused image: flagged, refuse).
    refused_file = tmp_path / "blank.png"
    assets.refused[0].save(refused_file)
    browser.find_element(By.ID, "tab-moderation").click()
    before = browser.find_element(By.ID, "preview").get_attribute("src")
    browser.find_element(By.ID, "image").send_keys(str(refused_file))
    browser.find_element(By.ID, "question").clear()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "preview").get_attribute("src") != before)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: "flagged" in d.find_element(By.ID, "rule").text)
    assert browser.find_element(By.ID, "action").text == "refuse"
    assert "· flagged" in browser.find_element(By.ID, "rule").text
    assert browser.save_screenshot(str(tmp_path / "moderation.png"))
    print("screenshots in", tmp_path)


def test_the_hint_is_shown_the_top_bar_is_coloured_by_risk_and_there_is_no_favicon_request(
    browser, server, assets, direct, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model, policy = direct
    decisions = Gate(model, policy).decide(assets.photos, [""] * len(assets.photos))  # image only, as the tab sends
    hinted = next(i for i, d in enumerate(decisions) if d.action == "hint")  # the assets hint one photo
    image_file = tmp_path / "hinted.png"
    assets.photos[hinted].save(image_file)

    browser.get(server + "/")
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    assert icon.startswith("data:")  # the browser asks for no /favicon.ico (it was a 404)
    browser.find_element(By.ID, "tab-moderation").click()
    browser.find_element(By.ID, "apikey").send_keys(API_KEY)
    browser.find_element(By.ID, "image").send_keys(str(image_file))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "preview").get_attribute("src"))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "action").text == "hint")
    assert browser.find_element(By.ID, "hint").is_displayed()
    assert browser.find_element(By.ID, "hint-text").text == decisions[hinted].hint
    assert browser.save_screenshot(str(tmp_path / "hint.png"))

    # The highest bar is red only for a risk class: a decision whose top level and type are the safe ones.
    levels, types = list(model.config.taxonomy.levels), list(model.config.taxonomy.types)
    safe = {
        "action": "allow", "rule": "test", "policy": "test", "hint": None, "refusal": None,
        "level": levels[0], "type": model.config.taxonomy.safe_type,
        "level_probs": {n: (0.7 if i == 0 else 0.1) for i, n in enumerate(levels)},
        "type_probs": {n: (0.8 if n == model.config.taxonomy.safe_type else 0.2 / (len(types) - 1)) for n in types},
    }  # fmt: skip
    # As JSON text, parsed by the page as it parses the server's replies (keys in taxonomy order).
    browser.execute_script("showSafety(JSON.parse(arguments[0]))", json.dumps(safe))
    red = "rgb(210, 85, 63)"
    fills = browser.execute_script(
        "return [...document.querySelectorAll('.bar.top .fill')].map(f => getComputedStyle(f).backgroundColor)"
    )
    assert len(fills) == 2 and red not in fills
    assert not browser.find_element(By.ID, "hint").is_displayed()
    risky = dict(safe, level=levels[-1], type=types[0], level_probs={n: 0.25 for n in levels})
    browser.execute_script("showSafety(JSON.parse(arguments[0]))", json.dumps(risky))
    fills = browser.execute_script(
        "return [...document.querySelectorAll('.bar.top .fill')].map(f => getComputedStyle(f).backgroundColor)"
    )
    assert fills == [red, red]
    assert browser.save_screenshot(str(tmp_path / "colours.png"))
