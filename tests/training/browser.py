"""A real headless browser for the review page: Debian's chromium driven by selenium
through chromium-driver (scripts/bootstrap.sh installs both as root). Nothing is
downloaded at run time. Without them the test skips, except in CI (CI=true), where a
missing browser is a failure."""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]


@contextlib.contextmanager
def chromium(profile_dir):
    chrome, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chrome or not driver_path:
        message = "chromium and chromium-driver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chrome
    for flag in FLAGS + [f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def frame_canvases(driver, n: int, timeout: float = 30.0):
    """The filmstrip's canvases once `n` are shown and their images drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        canvases = d.find_elements(By.CSS_SELECTOR, "#strip canvas")
        drawn = d.execute_script(
            "return [...document.querySelectorAll('#strip canvas')].every(c => c.img && c.img.complete)")
        return canvases if len(canvases) == n and drawn else False
    return WebDriverWait(driver, timeout).until(ready)


def click_image(driver, canvas, x: float, y: float, shift: bool = False) -> None:
    """Click the frame on `canvas` at image pixel (x, y)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    scale = float(canvas.get_attribute("data-scale"))
    width, height = canvas.size["width"], canvas.size["height"]
    # selenium offsets are from the element's centre
    dx, dy = round(x * scale - width / 2), round(y * scale - height / 2)
    chain = ActionChains(driver)
    if shift:
        chain.key_down(Keys.SHIFT)
    chain.move_to_element_with_offset(canvas, dx, dy).click()
    if shift:
        chain.key_up(Keys.SHIFT)
    chain.perform()


def press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def wait_status(driver, text: str, timeout: float = 30.0) -> str:
    """The page's status line once it starts with `text`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        lambda d: (s := d.find_element(By.ID, "status").text).startswith(text) and s)
