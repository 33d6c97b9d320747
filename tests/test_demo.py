"""The demo page in a real browser: `dcm demo` serves a registered champion; Debian's chromium (headless, driven
by selenium through chromedriver, both started and stopped here) types a prompt, gets both clips, checks that
they play and that the page shows latency, then sends an empty prompt and sees a message, not a stack trace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest

from dcm.ops.registry import promote
from tests.conftest import REPO, free_port
from tests.registered import EVALUATED, distilled, register  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration
STARTUP_S, GENERATION_S = 180, 300


def browser():
    from selenium import webdriver
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium download a driver
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are missing: `make test` installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def decoded_frames(url: str, path: Path) -> int:
    with urllib.request.urlopen(url, timeout=60) as response:
        path.write_bytes(response.read())
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_demo_page_shows_student_and_teacher_clips_and_refuses_an_empty_prompt(distilled, config_overrides, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    cfg = distilled
    register(cfg, 0.6)
    promote(cfg)
    port = free_port()
    settings = [arg for o in [*config_overrides, *EVALUATED, f"demo.port={port}"] for arg in ("-S", o)]
    server = subprocess.Popen([str(Path(sys.executable).parent / "dcm"), "demo", "--params", str(REPO / "params.yaml"),
                               *settings], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            if server.poll() is not None:
                raise AssertionError("dcm demo exited:\n" + server.stdout.read()[-3000:])
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return True
            except OSError:
                return False

        wait_for(up, STARTUP_S, "the demo page")
        driver = browser()
        driver.get(url)
        prompt = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#prompt textarea"), 60, "the prompt box")[0]
        prompt.send_keys("a red circle moving left on a black background")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        sources = {}
        for name in ("student", "teacher"):
            video = wait_for(lambda n=name: driver.find_elements(By.CSS_SELECTOR, f"#{n} video"), GENERATION_S, f"the {name} clip")[0]
            sources[name] = wait_for(lambda v=video: v.get_attribute("src"), 60, f"the {name} clip's source")
            # the browser itself decoded it: metadata (duration) loaded, no media error
            state = wait_for(lambda v=video: driver.execute_script(
                "return arguments[0].readyState >= 1 ? [arguments[0].duration, arguments[0].error] : null", v),
                60, f"the {name} clip to load in the browser")
            assert state[0] > 0 and state[1] is None, state
            assert decoded_frames(sources[name], tmp_path / f"{name}.mp4") == cfg.data.frames
        summary = driver.find_element(By.CSS_SELECTOR, "#summary").text
        assert "latency" in summary and "Speedup" in summary and "version 1" in summary, summary

        prompt.send_keys(Keys.CONTROL, "a")  # as a person empties the box (clear() fires no input event)
        prompt.send_keys(Keys.DELETE)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        try:
            wait_for(lambda: "Type a prompt first" in driver.find_element(By.TAG_NAME, "body").text, 60,
                     "the empty prompt's message")
        except AssertionError:
            raise AssertionError("no message on the page:\n" + driver.find_element(By.TAG_NAME, "body").text) from None
        assert "Traceback" not in driver.page_source
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
