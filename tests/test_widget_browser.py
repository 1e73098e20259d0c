"""The feedback widget in a real headless Chromium: a host page on another origin loads
/widget.js from the gateway with the public widget key and the turn's feedback token, a person
clicks, and the feedback lands in DuckDB. A page on an origin the gateway does not list, and a
page with a tampered token, get nowhere."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from conftest import Stack, free_port

pytestmark = pytest.mark.integration

HOST_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>host</title></head><body>
<p>The refund window is 30 days.</p><button id="copy">Copy</button><div id="fb"></div>
<script src="{gateway}/widget.js"></script>
<script>
  KaizenWidget.mount(document.getElementById("fb"),
    {{endpoint: "{gateway}", apiKey: "{key}", turnId: "turn-browser-1", feedbackToken: "{token}"}});
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


def serve_page(html: str | dict[str, str], port: int | None = None) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve a page (or pages by path: {"/": ..., "/other": ...}) on loopback; (base URL, server)."""
    pages = html if isinstance(html, dict) else {"/": html}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path.split("?")[0], "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = port or free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/", server


@pytest.fixture
def page_port():
    return free_port()


@pytest.fixture
def widget_stack(kaizen_env, tmp_path, page_port):
    """A stack whose gateway lets pages from http://127.0.0.1:<page_port> call it (and no others)."""
    (tmp_path / "kaizen.toml").write_text(f'[gateway]\ncors_origins = ["http://127.0.0.1:{page_port}"]\n',
                                          encoding="utf-8")
    stack = Stack(kaizen_env)
    try:
        yield stack.start()
    finally:
        stack.stop()


def log_turn(stack) -> str:
    """The host application's server logs the turn it served (ingest key) and gets its token."""
    r = httpx.post(stack.cfg.gateway_url + "/v1/turns", headers=stack.ingest_headers, json={
        "turn_id": "turn-browser-1", "conversation_id": "c-browser", "user_id": "browser-user",
        "messages": [{"role": "user", "content": "What is the refund window?"}],
        "response": "The refund window is 30 days."})
    assert r.status_code == 202, r.text
    return r.json()["feedback_tokens"][0]


def send_from_page(driver, url: str, correction: str) -> tuple[str | None, str | None]:
    """Open the host page, give feedback, press send; (data-sent, data-error) of the widget."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 20)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".kaizen-widget")))
    driver.find_element(By.CSS_SELECTOR, ".kz-up").click()
    driver.find_element(By.CSS_SELECTOR, '.kz-star[data-rating="4"]').click()
    driver.find_element(By.CSS_SELECTOR, ".kz-comment").send_keys("Helpful, thanks")
    driver.find_element(By.CSS_SELECTOR, ".kz-correction").send_keys(correction)
    driver.find_element(By.CSS_SELECTOR, ".kz-send").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".kaizen-widget").get_attribute("data-sent")
               or d.find_element(By.CSS_SELECTOR, ".kaizen-widget").get_attribute("data-error"))
    box = driver.find_element(By.CSS_SELECTOR, ".kaizen-widget")
    return box.get_attribute("data-sent"), box.get_attribute("data-error")


def test_widget_click_reaches_duckdb(widget_stack, page_port, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stack = widget_stack
    token = log_turn(stack)
    page = HOST_PAGE.format(gateway=stack.cfg.gateway_url, key=stack.cfg.auth.widget_key, token=token)
    tampered_page = HOST_PAGE.format(gateway=stack.cfg.gateway_url, key=stack.cfg.auth.widget_key,
                                     token=token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    url, server = serve_page({"/": page, "/tampered": tampered_page}, page_port)
    elsewhere, other_server = serve_page(page)  # an origin the gateway does not list
    driver = chrome_driver()
    try:
        event_id, error = send_from_page(driver, url, "The refund window is 30 days.")
        assert error is None, error
        driver.find_element(By.ID, "copy").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-copied") == "1")
        driver.save_screenshot(str(tmp_path / "widget.png"))
        sent, error = send_from_page(driver, elsewhere, "The refund window is 90 days.")
        assert sent is None and error, "a page from an unlisted origin got through"
        sent, error = send_from_page(driver, url + "tampered", "The refund window is 90 days.")
        assert sent is None and "feedback_token" in error, error
    finally:
        driver.quit()
        server.shutdown()
        other_server.shutdown()
    counts = stack.drain()
    assert counts["feedback"] == 1 and counts["signals"] == 1
    items = httpx.get(stack.cfg.controller_url + "/admin/v1/feedback", headers=stack.admin_headers).json()["items"]
    row = items[0]
    assert row["event_id"] == event_id
    assert (row["turn_id"], row["thumbs"], row["rating"]) == ("turn-browser-1", 1, 4)
    assert row["comment"] == "Helpful, thanks" and row["correction"] == "The refund window is 30 days."
    assert row["user_id"] == "browser-user"  # from the token: the page never named the user
