"""The feedback widget in a real headless Chromium: a host page on another origin loads
/widget.js from the gateway, a person clicks, and the feedback lands in DuckDB."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from conftest import free_port

pytestmark = pytest.mark.integration

HOST_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>host</title></head><body>
<p>The refund window is 30 days.</p><button id="copy">Copy</button><div id="fb"></div>
<script src="{gateway}/widget.js"></script>
<script>
  KaizenWidget.mount(document.getElementById("fb"),
    {{endpoint: "{gateway}", apiKey: "{key}", turnId: "turn-browser-1", userId: "browser-user"}});
  document.getElementById("copy").addEventListener("click", function () {{
    KaizenWidget.signal("turn-browser-1", "copy").then(function () {{ document.body.setAttribute("data-copied", "1"); }});
  }});
</script></body></html>"""


def chrome_driver(screenshot_dir: Path | None = None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromedriver are required: run `make browsers` (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def serve_page(html: str) -> tuple[str, http.server.ThreadingHTTPServer]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/", server


def test_widget_click_reaches_duckdb(stack, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    html = HOST_PAGE.format(gateway=stack.cfg.gateway_url, key=stack.cfg.auth.ingest_key)
    url, server = serve_page(html)
    driver = chrome_driver()
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 20)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".kaizen-widget")))
        driver.find_element(By.CSS_SELECTOR, ".kz-up").click()
        driver.find_element(By.CSS_SELECTOR, '.kz-star[data-rating="4"]').click()
        driver.find_element(By.CSS_SELECTOR, ".kz-comment").send_keys("Helpful, thanks")
        driver.find_element(By.CSS_SELECTOR, ".kz-correction").send_keys("The refund window is 30 days.")
        driver.find_element(By.CSS_SELECTOR, ".kz-send").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".kaizen-widget").get_attribute("data-sent")
                   or d.find_element(By.CSS_SELECTOR, ".kaizen-widget").get_attribute("data-error"))
        box = driver.find_element(By.CSS_SELECTOR, ".kaizen-widget")
        assert box.get_attribute("data-error") is None, box.get_attribute("data-error")
        event_id = box.get_attribute("data-sent")
        driver.find_element(By.ID, "copy").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-copied") == "1")
        driver.save_screenshot(str(tmp_path / "widget.png"))
    finally:
        driver.quit()
        server.shutdown()
    counts = stack.drain()
    assert counts["feedback"] == 1 and counts["signals"] == 1
    items = httpx.get(stack.cfg.controller_url + "/admin/v1/feedback", headers=stack.admin_headers).json()["items"]
    row = items[0]
    assert row["event_id"] == event_id
    assert (row["turn_id"], row["thumbs"], row["rating"]) == ("turn-browser-1", 1, 4)
    assert row["comment"] == "Helpful, thanks" and row["correction"] == "The refund window is 30 days."
    assert row["user_id"] == "browser-user"
