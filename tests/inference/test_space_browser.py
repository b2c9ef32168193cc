"""The Space in a real browser: headless Chromium (driven by selenium) opens the page, uploads a clip through
the audio component's file input, waits for the labels and saves a screenshot.

Chromium and its driver are Debian packages (`chromium`, `chromium-driver`) that scripts/install.sh
installs; when they are missing this test fails, it does not skip.
"""

import os
import shutil
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from PIL import Image
from tagger_utils import save_tiny_tagger, write_clip
from test_space import free_port, load_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PAGE_TIMEOUT_S = 60


def _driver(window=(1280, 1500)):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        pytest.fail(f"selenium is not installed ({err}); install requirements-ci.txt")
    if CHROMIUM is None or not Path(CHROMEDRIVER).is_file():
        pytest.fail(
            "headless Chromium is needed: `apt-get install chromium chromium-driver` (scripts/install.sh "
            f"does it); found chromium={CHROMIUM}, chromedriver="
            f"{CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else None}"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={window[0]},{window[1]}",
    ):
        options.add_argument(argument)
    # Both paths are given, so selenium never runs its driver manager (which would go to the network).
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_browser_uploads_a_clip_and_sees_the_labels(tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = load_app()
    model_dir = save_tiny_tagger(tmp_path / "tiny-tagger")
    clip = write_clip(tmp_path / "upload.wav", 4.0, seed=3)
    settings = app.TaggerSettings(model_ids=(str(model_dir),))
    expected, _, _ = app.predict(str(clip), None, 5, settings=settings)
    top_label = next(iter(expected))

    monkeypatch.setenv("HF_AUDIOREP_EXAMPLES_DIR", str(tmp_path / "examples"))
    demo = app.build_demo([str(model_dir)])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    driver = _driver()
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, PAGE_TIMEOUT_S)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0]
        upload.send_keys(str(clip))  # what choosing the file in the dialog does
        labels = driver.find_element(By.ID, "labels")
        wait.until(lambda d: top_label in labels.text)
        status = driver.find_element(By.ID, "status")
        wait.until(lambda d: "Tagged 4.0 s" in status.text)
        page_labels = labels.text
        shot = tmp_path / "space.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
        demo.close()
    # Every top label is on the page, and the screenshot is a real picture of it.
    assert all(label in page_labels for label in expected), page_labels
    with Image.open(shot) as image:
        assert image.size[0] >= 1000 and len(image.getcolors(1 << 24)) > 100
