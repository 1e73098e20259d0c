"""The dashboard in a real headless Chromium: a real `kaizen dashboard` process over a seeded
stack; every page opens, finishes its script run, shows its title and no exception box.
A screenshot of each page goes to the test's tmp dir; with KAIZEN_SCREENSHOTS_DIR set they are
also copied there (`make screenshots` regenerates docs/screenshots/ that way)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, wait_http
from dashboard_helpers import module_stack, seed
from test_widget_browser import chrome_driver

pytestmark = pytest.mark.integration

# (url path, the page's title): the pages of kaizenlm/dashboard/app.py
PAGES = [("", "Overview"), ("experiments", "Experiments"), ("models", "Models"), ("training", "Training"),
         ("knowledge", "Knowledge"), ("feedback", "Feedback explorer"), ("jobs", "Jobs"), ("annotate", "Annotate")]
# Where to copy the screenshots when asked (`make screenshots`: docs/screenshots); a plain test run
# writes only into its tmp dir.
SCREENSHOTS_DIR = os.environ.get("KAIZEN_SCREENSHOTS_DIR")
WINDOW = (1200, 800)


def wait_until_idle(driver, title: str, timeout: float = 60) -> None:
    """Until the page's title is shown and Streamlit's script run has finished (no spinner left)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d) -> bool:
        app = d.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]')
        if not app or app[0].get_attribute("data-test-script-state") != "notRunning":
            return False
        return any(h.text.strip() == title for h in d.find_elements(By.TAG_NAME, "h1"))

    WebDriverWait(driver, timeout, poll_frequency=0.25).until(ready)
    time.sleep(0.5)  # charts (Vega) draw after the run; let them settle before the screenshot


def shrink(path: Path) -> None:
    """Quantize the screenshot to a 256-colour palette: a readable PNG at a fraction of the size."""
    from PIL import Image

    with Image.open(path) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_every_page_renders_without_exception(tmp_path):
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with module_stack(tmp_path) as stack:
        seed(stack, tmp_path / "artifacts")
        port = free_port()
        log = open(tmp_path / "dashboard.out", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", "kaizenlm.cli", "dashboard", "--port", str(port)],
                                env={**os.environ}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        driver = None
        try:
            wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
            driver = chrome_driver()
            driver.set_window_size(*WINDOW)
            for path, title in PAGES:
                driver.get(f"http://127.0.0.1:{port}/{path}")
                wait_until_idle(driver, title)
                exceptions = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
                assert not exceptions, f"{title}: {[e.text for e in exceptions]}"
                assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text, title
                shot = shots / f"{path or 'overview'}.png"
                driver.save_screenshot(str(shot))
                shrink(shot)
            # The sidebar of every page names the controller it reads and holds the key field.
            sidebar = driver.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
            assert stack.cfg.controller_url in sidebar and "Admin key" in sidebar
        finally:
            if driver is not None:
                driver.quit()
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    assert sorted(p.name for p in shots.iterdir()) == sorted(f"{p or 'overview'}.png" for p, _ in PAGES)
    for shot in shots.iterdir():
        assert shot.stat().st_size > 10_000, f"{shot.name} looks blank"
    if SCREENSHOTS_DIR:
        target = Path(SCREENSHOTS_DIR)
        target.mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, target / shot.name)
