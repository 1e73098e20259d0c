"""The Annotate page in a real headless Chromium: a real `kaizen dashboard` process over a real
controller app (in a thread); a reviewer types their review key, labels an item by clicking
(label, then Accept), the next one with the keyboard shortcuts alone (2, then x), and the
blind pair with b; each label is checked where it is stored, the controller's DuckDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, wait_http
from test_dashboard_annotate import PAIR, Controller
from test_dashboard_browser import SCREENSHOTS_DIR, WINDOW, shrink, wait_until_idle
from test_widget_browser import chrome_driver

pytestmark = pytest.mark.integration


def wait_for(condition, timeout: float = 60, what: str = "") -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def button(driver, label: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def find():
        # Streamlit re-renders while the page settles: a button found a moment ago may be gone
        # (stale) or not yet labelled, so look again until one with the label is there.
        try:
            return [b for b in driver.find_elements(By.TAG_NAME, "button")
                    if b.text.strip().split("\n")[0] == label]
        except StaleElementReferenceException:
            return []

    return wait_for(find, timeout=30, what=f"button {label!r}")[0]


def body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def test_label_by_click_and_by_keyboard(tmp_path, monkeypatch):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with Controller(tmp_path, monkeypatch) as c:
        c.seed()
        port = free_port()
        log = open(tmp_path / "dashboard.out", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", "kaizenlm.cli", "dashboard", "--port", str(port)],
                                env={**os.environ}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        driver = None
        try:
            wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
            driver = chrome_driver()
            driver.set_window_size(*WINDOW)
            # the entry page first: Streamlit runs app.py (st.navigation) only after it once ran in the
            # server; a fresh server's first deep link would run the page file alone, without the sidebar
            driver.get(f"http://127.0.0.1:{port}/")
            wait_until_idle(driver, "Overview")
            driver.get(f"http://127.0.0.1:{port}/annotate")
            wait_until_idle(driver, "Annotate")
            assert "Admin key" in driver.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
            assert "No reviewer yet" in body(driver)
            field = driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Your review key"]')
            field.send_keys(c.alice_key + Keys.ENTER)
            first = c.admin("GET", "/next", params={"reviewer": "alice"})["item"]
            wait_for(lambda: f"{first['item_id']} (correction), 3 open" in body(driver), what="alice's first item")

            # by clicking: the label, then Accept
            button(driver, "correct").click()
            wait_for(lambda: "Label: correct" in body(driver), what="the picked label")
            button(driver, "Accept").click()
            wait_for(lambda: c.labels(), what="the stored label")
            assert c.labels() == [(first["item_id"], "alice", "accept", "correct", None, None)]
            wait_for(lambda: f"Labelled {first['item_id']}: accept, correct." in body(driver), what="the flash")

            # by keyboard alone: 2 picks "incomplete", x rejects (outside the text boxes)
            second = c.admin("GET", "/next", params={"reviewer": "alice"})["item"]
            wait_for(lambda: f"{second['item_id']} (correction), 2 open" in body(driver), what="the second item")
            driver.find_element(By.TAG_NAME, "h1").click()  # focus leaves the key field
            ActionChains(driver).send_keys("2").perform()
            wait_for(lambda: "Label: incomplete" in body(driver), what="the label picked by key 2")
            ActionChains(driver).send_keys("x").perform()
            wait_for(lambda: len(c.labels()) == 2, what="the rejection by key x")
            assert c.labels()[-1] == (second["item_id"], "alice", "reject", "incomplete", None, None)

            # the blind pair: A and B, no versions; b prefers B
            wait_for(lambda: "(blind_pair), 1 open" in body(driver), what="the blind pair")
            page = body(driver)
            assert PAIR["candidates"][0]["answer"] in page and PAIR["candidates"][1]["answer"] in page
            assert "adapter-0002" not in page and "base-0001" not in page
            shot = tmp_path / "annotate-blind.png"
            wait_until_idle(driver, "Annotate")
            review = driver.find_element(By.XPATH, "//h3[contains(., 'Review')]")
            driver.execute_script("arguments[0].scrollIntoView()", review)
            driver.save_screenshot(str(shot))
            shrink(shot)
            if SCREENSHOTS_DIR:  # `make screenshots`
                shutil.copy(shot, Path(SCREENSHOTS_DIR) / shot.name)
            driver.find_element(By.TAG_NAME, "h1").click()
            ActionChains(driver).send_keys("b").perform()
            wait_for(lambda: len(c.labels()) == 3, what="the blind verdict by key b")
            pair = c.admin("GET", "/items", params={"kind": "blind_pair"})["items"][0]
            expected = "adapter-0002" if pair["answer_b"] == PAIR["candidates"][0]["answer"] else "base-0001"
            assert c.labels()[-1] == (pair["item_id"], "alice", "b", None, None, expected)
            wait_for(lambda: "Nothing open for alice" in body(driver), what="the empty queue")
            exceptions = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
            assert not exceptions, [e.text for e in exceptions]
        finally:
            if driver is not None:
                driver.quit()
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
