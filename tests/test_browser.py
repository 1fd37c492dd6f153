"""The web app in a real browser: `multitalk serve --tiny` on a loopback port, headless Chromium (Debian's, driven by
Playwright) in a 1280x800 window. Generate and the result's place are in view without scrolling; the video-to-dub
upload shows only on a server whose model dubs (InfiniteTalk); the example image and a recording, fast settings and
Generate give a video that plays, in view too. Screenshots of the window go to each test's folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (scripts/test.sh installs Debian's chromium; it could not be installed)"
)

from diffusers_multitalk import app  # noqa: E402 - gradio is there when playwright is (the dev extra)


ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"
# A bound on each wait (server start, page, video), not a speed check: generous for a loaded 2-core CI machine.
TIMEOUT = 900
WINDOW = {"width": 1280, "height": 800}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(tmp_path: Path, *flags: str):
    """`multitalk serve --tiny *flags` on a free loopback port; yields its URL once /healthz answers."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "diffusers_multitalk", "serve", "--tiny", "--port", str(port), "--output_dir",
         str(tmp_path / "out"), *flags],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@contextlib.contextmanager
def _page(url: str):
    """A fresh page of the app in a 1280x800 window, once the page has asked what the model does (its heading then
    names it, and the dubbing upload has been shown or hidden)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=WINDOW)
            page.set_default_timeout(TIMEOUT * 1000)
            page.goto(url + "/")
            page.get_by_role("button", name="Generate").wait_for()
            page.get_by_text("Model:").wait_for()
            yield page
        finally:
            browser.close()


def _upload(page, label: str):
    """The block of the component labelled `label` (an image, video or audio upload)."""
    return page.locator(".block").filter(has=page.locator("[data-testid=block-label]", has_text=label))


def _in_window(page, locator) -> dict:
    """`locator`'s box with the page scrolled to its top; asserts that it lies wholly in the window."""
    page.evaluate("window.scrollTo(0, 0)")
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not shown"
    inside = box["x"] >= 0 and box["y"] >= 0
    inside = inside and box["x"] + box["width"] <= WINDOW["width"] and box["y"] + box["height"] <= WINDOW["height"]
    assert inside, f"{locator} at {box} is not in view in a {WINDOW['width']}x{WINDOW['height']} window"
    return box


def _keep(path: Path) -> None:
    if os.environ.get("BROWSER_SHOT_DIR"):  # keep the screenshot for a person to look at
        shutil.copy(path, Path(os.environ["BROWSER_SHOT_DIR"]) / path.name)


def _set_number(page, label: str, value) -> None:
    box = page.get_by_label(f"number input for {label}", exact=True)  # a slider's number box
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def test_generate_in_a_real_browser(tmp_path):
    """On a MultiTalk server: the layout in a 1280x800 window (Generate and the result's place in view, no dubbing
    upload), then a generation whose video plays, in view as well."""
    with _serve(tmp_path) as url, _page(url) as page:
        page.screenshot(path=str(tmp_path / "layout.png"))  # the window as it opens: what a user sees first
        _keep(tmp_path / "layout.png")
        _in_window(page, page.get_by_role("button", name="Generate"))
        _in_window(page, page.locator(f"#{app.RESULT_VIDEO_ID}"))
        assert _upload(page, app.IMAGE_LABEL).is_visible()
        assert not _upload(page, app.VIDEO_LABEL).is_visible(), "a MultiTalk server offers to dub a video"

        _upload(page, app.IMAGE_LABEL).locator("input[type=file]").set_input_files(str(ASSETS / "two_people.png"))
        _set_number(page, app.PERSONS_LABEL, 1)
        _upload(page, app.audio_label(1)).locator("input[type=file]").set_input_files(str(ASSETS / "speaker1.wav"))
        page.get_by_label(app.PROMPT_LABEL).fill("A cartoon friend talks in a bright studio.")
        page.get_by_label("clip", exact=True).check()
        _set_number(page, "Frames per chunk (4n+1)", 5)
        _set_number(page, "Sampling steps", 1)
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function(
            "() => { const v = document.querySelector('video'); return v && v.readyState >= 1 && v.duration > 0 }"
        )
        playing = page.evaluate(
            """async () => { const v = document.querySelector('video'); v.muted = true; await v.play();
               await new Promise(r => setTimeout(r, 300)); return {duration: v.duration, time: v.currentTime,
               width: v.videoWidth, height: v.videoHeight} }"""
        )
        status = page.get_by_label("Status").input_value()
        result = _in_window(page, page.locator(f"#{app.RESULT_VIDEO_ID} video"))
        page.screenshot(path=str(tmp_path / "browser.png"))
        _keep(tmp_path / "browser.png")
    # 5 frames at 25 fps
    assert abs(playing["duration"] - 0.2) < 0.05 and playing["time"] > 0, playing
    assert playing["width"] > 0 and playing["height"] > 0 and result["height"] > 100, (playing, result)
    assert status.startswith("5 frames (0.20 s at 25 fps)") and "clip mode, 1 step" in status, status
    assert "1 recording (add)" in status, status


def test_an_infinitetalk_server_offers_the_dubbing_upload(tmp_path):
    """`--tiny --task infinitetalk-14B` dubs: its page shows the video-to-dub upload beside the image, in view, and
    keeps Generate and the result's place in view."""
    with _serve(tmp_path, "--task", "infinitetalk-14B") as url, _page(url) as page:
        page.screenshot(path=str(tmp_path / "layout_infinitetalk.png"))
        _keep(tmp_path / "layout_infinitetalk.png")
        _in_window(page, _upload(page, app.VIDEO_LABEL))
        assert _upload(page, app.VIDEO_LABEL).locator("input[type=file]").count() == 1
        _in_window(page, page.get_by_role("button", name="Generate"))
        _in_window(page, page.locator(f"#{app.RESULT_VIDEO_ID}"))
