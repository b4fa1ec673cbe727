"""The live view in a real browser: Debian's headless chromium, driven by Selenium, on a real server
(the bundled models when they are there) while a synthetic stream and a demo session stream into it.

Every wait is for something to happen (an element, a text, a pixel change), with a generous limit
only so that a broken page fails instead of hanging. The demo's view is saved as a screenshot in the
test's temporary directory; with ``ASASNN_UPDATE_SCREENSHOT=1`` it replaces docs/img/live-view.png,
the screenshot README.md shows (so a test run leaves the work tree as it was).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from service.config import BUNDLED_MODEL_DIR, Settings
from tests.service.helpers import LiveServer, settings_for

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
README_SCREENSHOT = REPO / "docs" / "img" / "live-view.png"
WAIT_S = 60

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver; "
        "apt-get install chromium chromium-driver, as .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def live(model_dir) -> Iterator[LiveServer]:
    """The bundled (trained) models when present, so that the screenshot shows real predictions."""
    bundled = (BUNDLED_MODEL_DIR / "default" / "card.json").is_file()
    with LiveServer(Settings(device="cpu") if bundled else settings_for(model_dir)) as srv:
        yield srv


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, check, what: str) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: check(d), message=what)


def text(driver: Any, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def canvas_digest(driver: Any) -> str:
    """The frame canvas's pixels, hashed in the page."""
    return driver.execute_script(
        "const c = document.getElementById('frame');"
        "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let h = 0; for (let i = 0; i < px.length; i++) h = (h * 31 + px[i]) >>> 0;"
        "return `${c.width}x${c.height}:${h}`;"
    )


def assert_clean(driver: Any, origin: str) -> None:
    """No console error, and every resource the page loaded came from the server."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    for name in names:
        u = urlsplit(name.removeprefix("blob:"))
        assert f"{u.scheme}://{u.netloc}" == origin, f"{name} is not from {origin}"


def gestures(*labels: int) -> list[np.ndarray]:
    """Clip 0 of the test split for each class, one after another on one clock."""
    from models.synthetic import SyntheticConfig, generate, sample_list

    cfg = SyntheticConfig()
    specs = {s.label: s for s in sample_list(cfg, "test") if s.clip == 0}
    out, offset = [], 0
    for k in labels:
        ev = generate(specs[k], cfg).copy()
        ev["t"] += offset
        offset += cfg.duration_us
        out.append(ev)
    return out


class Stream:
    """A synchronous /ws/infer client that can stop and say what it has been told so far."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ws.send(json.dumps({"type": "start"}))
        self.ready = json.loads(self.ws.recv())
        self.predictions: list[dict] = []

    def send_and_settle(self, events: np.ndarray) -> dict:
        """Send ``events`` in 10 ms packets, then read up to a snapshot (the server runs every queued
        step before it): the last prediction returned is the last one there is."""
        from service.client.sources import split_packets

        for packet in split_packets(events, 10_000):
            self.ws.send(packet.tobytes())
        self.ws.send(json.dumps({"type": "snapshot"}))
        while (msg := json.loads(self.ws.recv()))["type"] != "snapshot":
            if msg["type"] == "prediction":
                self.predictions.append(msg)
        self.ws.recv()
        return self.predictions[-1]

    def stop(self) -> dict:
        self.ws.send(json.dumps({"type": "stop"}))
        while (msg := json.loads(self.ws.recv()))["type"] != "end":
            if msg["type"] == "prediction":
                self.predictions.append(msg)
        return msg


def click(driver: Any, selector: str) -> None:
    """Click in the page itself: the list is redrawn every second, so a located element may be gone
    by the time WebDriver clicks it."""
    assert driver.execute_script(f"const e = document.querySelector('{selector}'); e && e.click(); return !!e;")


def selected_text(driver: Any, selector: str) -> str:
    """The text of an element of the list, read in the page (see :func:`click`): "" while it is
    being redrawn."""
    return driver.execute_script(f"const e = document.querySelector('{selector}'); return e ? e.innerText : '';")


def shows(driver: Any, p: dict) -> bool:
    return text(driver, "step") == str(p["step"]) and text(driver, "label") == p["label"]


def test_the_live_view_follows_a_stream(live, browser):
    from websockets.sync.client import connect

    origin = live.http
    browser.get(origin + "/")
    assert urlsplit(browser.current_url).path == "/ui/"
    first, second = gestures(2, 7)  # swipe_left, then clap
    with connect(live.ws) as ws:
        stream = Stream(ws)
        sid = stream.ready["session"]
        row = f'tr[data-session="{sid}"]'
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the stream in the list")
        click(browser, row + " a")
        wait(browser, lambda d: text(d, "view-state") == "live", "the watch to connect")

        p1 = stream.send_and_settle(first)
        wait(browser, lambda d: shows(d, p1), f"the page to show step {p1['step']} ({p1['label']})")
        wait(browser, lambda d: "events at" in text(d, "frame-info"), "a frame")
        before = canvas_digest(browser)
        assert before.startswith("128x128:")

        p2 = stream.send_and_settle(second)
        wait(browser, lambda d: shows(d, p2), f"the page to show step {p2['step']} ({p2['label']})")
        wait(browser, lambda d: canvas_digest(d) != before, "the frame canvas to change")
        listed = [s for s in httpx.get(origin + "/v1/sessions").json()["sessions"] if s["id"] == sid]
        assert [(s["step"], s["label"]) for s in listed] == [(p2["step"], p2["label"])]
        top = browser.find_elements(By.CSS_SELECTOR, "#topk .topk > span:first-child")
        assert [e.text for e in top] == [t["label"] for t in p2["top_k"]]

        end = stream.stop()
    assert [p["step"] for p in stream.predictions] == list(range(end["steps"]))
    wait(browser, lambda d: text(d, "view-state").startswith("ended"), "the page to see the end")
    assert_clean(browser, origin)


def test_the_demo_button_and_the_offline_docs(live, browser, tmp_path):
    origin = live.http
    browser.get(origin + "/")
    wait(browser, lambda d: d.find_element(By.ID, "demo-start").is_enabled(), "the demo button")
    browser.find_element(By.ID, "demo-start").click()
    sid = wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-watching"), "a demo")
    # three seconds of history (the demo runs in real time), and its frames
    wait(browser, lambda d: text(d, "step").isdigit() and int(text(d, "step")) >= 60, "60 steps of the demo")
    wait(browser, lambda d: "events at" in text(d, "frame-info"), "a frame")
    digest = canvas_digest(browser)
    wait(browser, lambda d: canvas_digest(d) != digest, "the demo's frames to move")
    row = f'tr[data-session="{sid}"]'
    wait(browser, lambda d: "(demo)" in selected_text(d, row), "the demo's row in the list")
    shot = README_SCREENSHOT if os.environ.get("ASASNN_UPDATE_SCREENSHOT") == "1" else tmp_path / "live-view.png"
    save_screenshot(browser, shot)
    assert shot.stat().st_size > 10_000, "an empty page"

    click(browser, row + " button")  # stop
    wait(browser, lambda d: text(d, "view-state") == "ended (stopped)", "the demo to stop")
    assert_clean(browser, origin)

    browser.get(origin + "/docs")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"), "Swagger UI")
    assert "/v1/sessions" in browser.page_source
    assert_clean(browser, origin)
    browser.get(origin + "/redoc")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".api-content h1"), "ReDoc")
    assert "ASA-SNN stream" in browser.find_element(By.CSS_SELECTOR, ".api-content h1").text
    assert_clean(browser, origin)


def save_screenshot(driver: Any, path: Path) -> None:
    """The whole page, reduced to a small palette PNG (the README shows it)."""
    from PIL import Image

    extra = driver.execute_script("return window.outerHeight - window.innerHeight")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, height + extra)
    png = driver.get_screenshot_as_png()
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=96)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp, optimize=True)
    shutil.move(tmp, path)
