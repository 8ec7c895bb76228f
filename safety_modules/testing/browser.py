"""Headless Chromium driven by selenium, for the browser tests of every page and the report bench.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them) and selenium (the
``dev`` extra). `find_chromium` says what is missing so a test can skip with the reason.
"""

from __future__ import annotations

import shutil
from typing import Any

MISSING = "headless Chromium is not installed (apt-get install -y chromium chromium-driver)"


def find_chromium() -> tuple[str, str] | None:
    """``(browser, driver)`` paths, or None when either is not on the PATH."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_chromium(width: int = 1280, height: int = 900) -> Any:
    """A new headless Chromium session (``selenium.webdriver.Chrome``); the caller quits it."""
    found = find_chromium()
    if found is None:
        raise RuntimeError(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(found[1]), options=options)


def save_full_page(driver: Any, path: str, max_height: int = 6000) -> bool:
    """A screenshot of the whole page (up to ``max_height`` px), not just the window's first screen."""
    import time

    deadline = time.monotonic() + 5  # embedded images decode after the load event; the height counts them
    while time.monotonic() < deadline and not driver.execute_script(
        "return [...document.images].every(i => i.complete)"
    ):
        time.sleep(0.05)
    size = driver.get_window_size()
    # The window is taller than the page's viewport by its own chrome, even headless.
    height = driver.execute_script(
        "return document.documentElement.scrollHeight + (window.outerHeight - window.innerHeight)"
    )
    driver.set_window_size(size["width"], min(max_height, max(600, int(height) + 20)))
    try:
        return bool(driver.save_screenshot(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
