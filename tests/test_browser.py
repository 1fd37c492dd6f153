"""The web app in a real browser: `multitalk serve --tiny` on a loopback port, headless Chromium (Debian's, driven by
Playwright) uploads the example image and a recording, sets fast settings, presses Generate, waits for the video to
play, takes a screenshot and checks what the page shows."""

from __future__ import annotations

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

ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"
TIMEOUT = 180  # seconds for the server to start and for the video to appear


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "diffusers_multitalk", "serve", "--tiny", "--port", str(port), "--output_dir",
         str(tmp_path / "out")],
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


def _set_number(page, label: str, value) -> None:
    box = page.get_by_label(f"number input for {label}", exact=True)  # a slider's number box
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def test_generate_in_a_real_browser(served, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(60_000)
            page.goto(served + "/")
            page.get_by_role("button", name="Generate").wait_for()
            files = page.locator("input[type=file]")
            files.nth(0).set_input_files(str(ASSETS / "two_people.png"))  # the reference image
            _set_number(page, "Persons", 1)
            page.wait_for_timeout(500)
            # file inputs in page order: the reference image, the video to dub (left empty), then the speech
            files.nth(2).set_input_files(str(ASSETS / "speaker1.wav"))  # person 1's speech
            page.get_by_label("Prompt").fill("A cartoon friend talks in a bright studio.")
            page.get_by_label("clip", exact=True).check()
            _set_number(page, "Frames per chunk (4n+1)", 5)
            _set_number(page, "Sampling steps", 1)
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function(
                "() => { const v = document.querySelector('video'); return v && v.readyState >= 1 && v.duration > 0 }",
                timeout=TIMEOUT * 1000,
            )
            playing = page.evaluate(
                """async () => { const v = document.querySelector('video'); v.muted = true; await v.play();
                   await new Promise(r => setTimeout(r, 300)); return {duration: v.duration, time: v.currentTime,
                   width: v.videoWidth, height: v.videoHeight} }"""
            )
            status = page.get_by_label("Status").input_value()
            page.screenshot(path=str(tmp_path / "browser.png"), full_page=True)
            if os.environ.get("BROWSER_SHOT_DIR"):  # keep the screenshot for a person to look at
                shutil.copy(tmp_path / "browser.png", Path(os.environ["BROWSER_SHOT_DIR"]) / "browser.png")
        finally:
            browser.close()
    # 5 frames at 25 fps
    assert abs(playing["duration"] - 0.2) < 0.05 and playing["time"] > 0, playing
    assert playing["width"] > 0 and playing["height"] > 0, playing
    assert status.startswith("5 frames (0.20 s at 25 fps)") and "clip mode, 1 step" in status, status
    assert "1 recording (add)" in status, status
