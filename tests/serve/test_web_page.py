"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
upload an image, ask, and the decision bars and the streamed answer appear; a screenshot is saved."""

from __future__ import annotations

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
