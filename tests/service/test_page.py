"""The page at GET / in a real browser: headless Chromium from Debian's packages (`chromium`, `chromium-driver`;
.ci/run installs them), driven by Selenium, against the real server. The page's own render (the strength slider
re-renders from the curves in the page) is read back from its canvas and compared with POST /harmonize of the
same inputs at the same strength.

A missing browser fails these tests with what to install: CI installs it, and a skip there would hide a broken CI
image behind a green run. S2CRNET_SKIP_BROWSER_TESTS=1 skips them on purpose (a developer machine without it).
The README's screenshot (S2CRNET_PAGE_SCREENSHOT) is test_page_masks.py's: a real composite, its mask found.
"""

import base64
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import decode, display_p3_icc, encode, exif_bytes, heif_bytes, real_cutout, real_pair, start_server
from PIL import Image, ImageDraw, ImageFilter

CHROMIUM = os.environ.get("S2CRNET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("S2CRNET_CHROMEDRIVER", "/usr/bin/chromedriver")
KEY = "page-test-key"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1100", "--force-device-scale-factor=1",
         # no network but the server's: every other host name fails to resolve, as on an offline machine
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
RUN_TIMEOUT_S = 120  # one run on a busy 2-core machine: two requests, decode, render


@pytest.fixture(scope="module")
def page_server():
    handle = start_server(env={"S2CRNET_API_KEY": KEY})
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        if os.environ.get("S2CRNET_SKIP_BROWSER_TESTS") == "1":
            pytest.skip(f"S2CRNET_SKIP_BROWSER_TESTS=1 and no {', '.join(missing)}")
        pytest.fail(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver (.ci/run does), "
                    "or set S2CRNET_SKIP_BROWSER_TESTS=1 to skip the page's browser tests")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, page_server):
    browser.get(page_server.url + "/")
    browser.find_element("id", "api-key").send_keys(KEY)
    return browser


# --- driving the page ----------------------------------------------------------------------------------------------
def _upload(driver, element_id: str, path: Path) -> None:
    driver.find_element("id", element_id).send_keys(str(path))


def _until(driver, condition, what: str, timeout: float = RUN_TIMEOUT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))
    except Exception:
        error = [e.text for e in driver.find_elements("id", "error")]  # the page's error line, where there is one
        pytest.fail(f"the page did not get to: {what}; its error line: {error!r}")


def _run(driver) -> None:
    driver.find_element("id", "run").click()
    _until(driver, lambda d: d.execute_script("return document.getElementById('result').dataset.rendered"),
           "a rendered #result")


def _set_strength(driver, value: float) -> None:
    """By the keyboard, as a person would: Home (0), then one step (0.01) per arrow key."""
    from selenium.webdriver.common.keys import Keys

    slider = driver.find_element("id", "strength")
    slider.send_keys(Keys.HOME + Keys.ARROW_RIGHT * round(value * 100))
    _until(driver, lambda d: d.execute_script("return document.getElementById('result').dataset.rendered")
           == f"{value:.2f}", f"#result rendered at strength {value}", 30)


def _canvas(driver, element_id: str) -> np.ndarray:
    """The canvas at full resolution, lossless (PNG data URL), as an RGB array."""
    url = driver.execute_script(f"return document.getElementById('{element_id}').toDataURL('image/png')")
    return np.asarray(decode(base64.b64decode(url.split(",", 1)[1])).convert("RGB")).astype(int)


def _server_render(url: str, files: dict, fields: dict) -> np.ndarray:
    response = httpx.post(url + "/harmonize", files=files, data={"format": "png", **fields},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert response.status_code == 200, response.text
    return np.asarray(decode(response.content).convert("RGB")).astype(int)


def _requested_urls(driver) -> list[str]:
    """The URLs the browser asked for since the last call (DevTools' Network.requestWillBeSent events)."""
    events = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]


def _write(tmp_path: Path, name: str, image: Image.Image, fmt: str, **params) -> Path:
    path = tmp_path / name
    path.write_bytes(encode(image, fmt, **params))
    return path


# --- the tests ---------------------------------------------------------------------------------------------------
def test_composite_and_mask_render_in_the_page_as_the_api_does(page, page_server, tmp_path):
    composite, mask = real_pair(320, 240)
    composite_path = _write(tmp_path, "comp.jpg", composite, "JPEG", quality=90)
    mask_path = _write(tmp_path, "mask.png", mask, "PNG")
    _upload(page, "composite", composite_path)
    _upload(page, "mask", mask_path)
    _run(page)
    files = {"composite": composite_path.read_bytes(), "mask": mask_path.read_bytes()}
    for strength in (1.0, 0.5):
        _set_strength(page, strength)
        shown = _canvas(page, "result")
        served = _server_render(page_server.url, files, {"strength": str(strength)})
        assert shown.shape == served.shape == (240, 320, 3)
        assert np.abs(shown - served).max() <= 1, f"strength {strength}"
    # The curves plot (identity + three channels) and the mismatch score the API reports.
    assert len(page.find_elements("css selector", "#curves polyline")) == 4
    curves = httpx.post(page_server.url + "/curves", files=files, headers={"Authorization": f"Bearer {KEY}"})
    assert page.find_element("id", "mismatch").text == f"{curves.json()['mismatch']['mean']:.2f}"
    # The download: the server's own full-resolution image at the slider's strength.
    page.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    page.find_element("id", "download-format").send_keys("PNG")
    page.find_element("id", "download").click()
    saved = tmp_path / "comp_harmonized.png"  # named after the input
    _until(page, lambda d: saved.is_file() and saved.stat().st_size > 0, "the downloaded image", 60)
    downloaded = np.asarray(Image.open(saved).convert("RGB")).astype(int)
    assert np.abs(downloaded - _canvas(page, "result")).max() <= 1
    page.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0


def test_a_mask_painted_with_the_brush_is_the_mask_the_api_gets(page, page_server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    composite, _ = real_pair(320, 240, index=1)
    composite_path = _write(tmp_path, "comp.png", composite, "PNG")
    _upload(page, "composite", composite_path)
    canvas = page.find_element("id", "mask-canvas")
    _until(page, lambda d: canvas.is_displayed(), "the mask editor", 30)
    width = canvas.rect["width"]
    (ActionChains(page).move_to_element_with_offset(canvas, -width // 6, 0).click_and_hold()
     .move_by_offset(width // 6, 10).move_by_offset(width // 6, -10).release().perform())
    by_mouse = (_canvas(page, "mask-canvas")[..., 0] > 128).sum()
    touch = ActionBuilder(page, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
    touch.pointer_action.move_to(canvas, 0, -canvas.rect["height"] // 4).pointer_down().move_by(width // 5, 0)
    touch.pointer_action.pointer_up()
    touch.perform()
    painted = _canvas(page, "mask-canvas")[..., 0]
    assert 0 < by_mouse < (painted > 128).sum() < 0.5 * painted.size  # two strokes, not everything
    _run(page)
    served = _server_render(page_server.url, {"composite": composite_path.read_bytes(),
                                              "mask": encode(Image.fromarray(painted.astype(np.uint8)), "PNG")}, {})
    assert np.abs(_canvas(page, "result") - served).max() <= 1
    changed = np.abs(served - np.asarray(composite).astype(int)).max(axis=-1) > 0
    assert changed[painted == 0].sum() == 0  # nothing outside the painted stroke moved


def test_a_foreground_dragged_onto_a_background_is_placed_and_harmonized(page, page_server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    background, _ = real_pair(480, 360, index=2)
    foreground_path = _write(tmp_path, "cutout.png", real_cutout(0, scale=0.5), "PNG")
    background_path = _write(tmp_path, "bg.jpg", background, "JPEG", quality=92)
    page.find_element("id", "mode-layer").click()
    _upload(page, "foreground", foreground_path)
    _upload(page, "background", background_path)
    shown = page.find_element("id", "stage-foreground")
    _until(page, lambda d: shown.is_displayed(), "the placed foreground", 30)
    x0, y0 = (int(page.find_element("id", name).get_attribute("value")) for name in ("x", "y"))
    stage_width = page.find_element("id", "stage-background").rect["width"]
    ActionChains(page).click_and_hold(shown).move_by_offset(-60, 25).release().perform()
    x, y = (int(page.find_element("id", name).get_attribute("value")) for name in ("x", "y"))
    k = 480 / stage_width  # background pixels per screen pixel
    assert abs(x - (x0 - 60 * k)) <= 1 + k and abs(y - (y0 + 25 * k)) <= 1 + k
    scale = page.find_element("id", "scale").get_attribute("value")
    _run(page)
    files = {"foreground": foreground_path.read_bytes(), "background": background_path.read_bytes()}
    served = _server_render(page_server.url, files, {"x": str(x), "y": str(y), "scale": scale})
    assert np.abs(_canvas(page, "result") - served).max() <= 1
    assert page.find_element("id", "download-layer").is_displayed()


def test_api_errors_are_shown_as_the_api_sentence(page, tmp_path):
    composite, mask = real_pair(160, 120)
    _upload(page, "composite", _write(tmp_path, "comp.jpg", composite, "JPEG"))
    _upload(page, "mask", _write(tmp_path, "mask.png", mask, "PNG"))
    key = page.find_element("id", "api-key")
    key.clear()
    key.send_keys("not-the-key")
    page.find_element("id", "run").click()
    error = page.find_element("id", "error")
    _until(page, lambda d: error.is_displayed(), "an error line", 60)
    assert error.text == "send the API key as `Authorization: Bearer <key>`"
    key.clear()
    key.send_keys(KEY)
    page.find_element("id", "mask-clear").click()  # an all-black mask: the API says what is wrong with it
    page.find_element("id", "run").click()
    _until(page, lambda d: "selects nothing" in error.text, "the empty-mask sentence", 60)
    assert error.text.startswith("the mask selects nothing")


def test_every_control_is_labelled_and_the_page_reflows_at_200_percent_zoom(page):
    unlabelled = page.execute_script("""
        return [...document.querySelectorAll('input, select, button, canvas[tabindex]')].filter((e) =>
            !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()
        ).map((e) => e.id || e.outerHTML);""")
    assert unlabelled == []
    assert page.execute_script("return document.querySelectorAll('[tabindex=\"-1\"]').length") == 0
    page.find_element("id", "mode-layer").click()
    size = page.get_window_size()
    try:
        page.set_window_size(640, size["height"])  # 1280 px at 200% zoom: the same CSS width
        overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow} px of horizontal scrolling at 200% zoom"
    finally:
        page.set_window_size(size["width"], size["height"])


def test_a_4096_square_upload_shows_progress_and_downloads_full_size(page, tmp_path):
    side = 4096
    ramp = np.linspace(40, 215, side, dtype=np.float32)
    composite = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1),
                          np.full((side, side), 120, np.float32)], -1).astype(np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[1024:3072, 1024:2560] = 255
    composite[mask > 0] = (composite[mask > 0] * [1.2, 0.8, 0.7]).clip(0, 255).astype(np.uint8)  # a colour cast
    _upload(page, "composite", _write(tmp_path, "big.jpg", Image.fromarray(composite), "JPEG", quality=85))
    _upload(page, "mask", _write(tmp_path, "big-mask.png", Image.fromarray(mask), "PNG"))
    _until(page, lambda d: d.find_element("id", "editor").is_displayed(), "the mask editor", 60)
    # A slow uplink (4 MB/s) makes the upload last long enough to watch; throttling applies to localhost too.
    page.set_network_conditions(offline=False, latency=5, download_throughput=500 * 1024 * 1024,
                                upload_throughput=4 * 1024 * 1024)
    try:
        page.find_element("id", "run").click()
        seen = _until(page, lambda d: d.execute_script(
            "const p = document.getElementById('progress'); return !p.hidden && p.value > 0 && p.value < 100 "
            "&& document.getElementById('status').textContent"), "the upload progress bar", 60)
        assert seen.startswith("Uploading")
    finally:
        page.delete_network_conditions()
    _until(page, lambda d: d.execute_script("return document.getElementById('result').dataset.rendered"),
           "a rendered #result", 300)
    result = page.find_element("id", "result")
    assert page.execute_script("const c = document.getElementById('result'); return [c.width, c.height]") == [side,
                                                                                                              side]
    assert result.rect["width"] < side  # shown scaled to the page


def test_a_screenshot_of_a_generated_scene(page, tmp_path):
    """A synthetic scene (no photo from ../shared): a warm-cast object on a cool evening scene."""
    width, height = 640, 420
    y = np.linspace(0, 1, height)[:, None, None]
    scene = (np.array([70, 110, 170]) * (1 - y) + np.array([40, 70, 60]) * y) * np.ones((height, width, 3))
    image = Image.fromarray(scene.astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for box, fill in (((250, 140, 390, 330), (235, 180, 120)), ((285, 95, 355, 165), (245, 200, 150))):
        draw.ellipse(box, fill=fill)
        mask_draw.ellipse(box, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(1.5))
    _upload(page, "composite", _write(tmp_path, "scene.png", image, "PNG"))
    _upload(page, "mask", _write(tmp_path, "scene-mask.png", mask, "PNG"))
    _run(page)
    _set_strength(page, 1.0)
    page.execute_script("document.getElementById('output').scrollIntoView()")
    time.sleep(0.2)
    page.save_screenshot(str(tmp_path / "page.png"))
    shot = Image.open(tmp_path / "page.png")
    assert shot.width >= 800


@pytest.mark.parametrize(("path", "operation"), [
    ("/docs", "#operations-default-harmonize_harmonize_post"),
    ("/redoc", "[data-section-id='operation/harmonize_harmonize_post']"),
])
def test_the_api_docs_render_their_operations_with_no_network(browser, page_server, path, operation):
    """Swagger UI and ReDoc come from the server itself: with every other host unreachable they draw the
    operations, and not one request goes elsewhere (favicon and fonts included)."""
    _requested_urls(browser)  # forget what earlier tests asked for
    browser.get(page_server.url + path)
    _until(browser, lambda d: d.execute_script(f"return document.querySelector({operation!r}) !== null"),
           f"{path} showing POST /harmonize", 60)
    text = browser.find_element("tag name", "body").text
    assert "/harmonize" in text and "/curves" in text
    urls = _requested_urls(browser)
    assert urls and all(url.startswith(page_server.url) or url.startswith(("data:", "blob:")) for url in urls), urls


# --- first use (issue 30, item 6) -------------------------------------------------------------------------------
def _in_view(driver, element_id: str) -> bool:
    return driver.execute_script(f"""const r = document.getElementById('{element_id}').getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight + 1;""")  # + 1: sub-pixel layout


@pytest.fixture
def window(browser):
    """Set the window to (width, height) CSS pixels for one test; the old size comes back after."""
    size = browser.get_window_size()
    yield lambda width, height: browser.set_window_size(width, height)
    browser.set_window_size(size["width"], size["height"])


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (1920, 1080)])
def test_a_portrait_image_brings_the_button_then_the_result_into_view(page, window, tmp_path, width, height):
    window(width, height)
    composite, mask = real_pair(600, 900, 1)
    _upload(page, "composite", _write(tmp_path, "portrait.jpg", composite, "JPEG"))
    _upload(page, "mask", _write(tmp_path, "mask.png", mask, "PNG"))
    _until(page, lambda d: _in_view(d, "run"), "the Harmonize button in view", 30)
    _run(page)
    _until(page, lambda d: _in_view(d, "compare"), "the before/after view in view", 30)
    labels = {name: page.find_element("id", f"label-{name}") for name in ("before", "after")}
    assert {name: label.text for name, label in labels.items()} == {"before": "Before", "after": "After"}
    assert all(label.is_displayed() for label in labels.values())
    view = page.find_element("id", "compare").rect
    assert labels["before"].rect["x"] < view["x"] + view["width"] / 2 < labels["after"].rect["x"]


def test_the_divider_starts_at_the_object(page, tmp_path):
    """An object in the left fifth: the divider starts at its centre, not at 50% where it would sit wholly on
    the 'before' side, so part of it shows harmonized."""
    composite, _ = real_pair(400, 240, 2)
    mask = np.zeros((240, 400), np.uint8)
    mask[60:180, 20:100] = 255
    cast = np.asarray(composite).copy()
    cast[mask > 0] = (cast[mask > 0] * [1.3, 0.9, 0.6]).clip(0, 255).astype(np.uint8)
    _upload(page, "composite", _write(tmp_path, "left.png", Image.fromarray(cast), "PNG"))
    _upload(page, "mask", _write(tmp_path, "left-mask.png", Image.fromarray(mask), "PNG"))
    _run(page)
    at = int(page.find_element("id", "divider").get_attribute("value"))
    assert at == 15, at  # the object's columns 20-99: centre 60 of 400
    clip = page.execute_script("return document.getElementById('result').style.clipPath")
    assert clip == f"inset(0px 0px 0px {at}%)"


def test_a_phone_wide_page_wraps_speaks_of_pinching_and_pinches(browser, page_server, tmp_path):
    """390 CSS pixels wide with a touch screen: no sideways scrolling in either mode, the layer hint speaks of
    fingers, and two fingers spreading on the foreground scale it up."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    try:
        browser.get(page_server.url + "/")
        browser.find_element("id", "api-key").send_keys(KEY)
        overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        assert browser.execute_script(overflow) <= 0, "sideways scrolling in composite mode"
        browser.find_element("id", "mode-layer").click()
        real_cutout(0, scale=0.5).save(tmp_path / "fg.png")
        real_pair(360, 480, 2)[0].save(tmp_path / "bg.jpg")
        _upload(browser, "foreground", tmp_path / "fg.png")
        _upload(browser, "background", tmp_path / "bg.jpg")
        hint = browser.find_element("id", "stage-hint")
        _until(browser, lambda d: hint.is_displayed(), "the layer hint", 30)
        assert "pinch" in hint.text and "wheel" not in hint.text, hint.text
        assert browser.execute_script(overflow) <= 0, "sideways scrolling in layer mode"
        label = browser.find_element("css selector", "label:has(#mode-layer)").rect
        assert label["x"] + label["width"] <= 390  # the 'Start from' labels wrap inside the screen
        before = float(browser.find_element("id", "scale").get_attribute("value"))
        cx, cy = browser.execute_script("""const f = document.getElementById('stage-foreground');
            f.scrollIntoView({block: 'center'}); const r = f.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2];""")  # viewport pixels, where touches land
        for kind, gap in (("touchStart", 10), ("touchMove", 20), ("touchMove", 30), ("touchEnd", 30)):
            fingers = [{"x": cx - gap, "y": cy, "id": 0}, {"x": cx + gap, "y": cy, "id": 1}]
            browser.execute_cdp_cmd("Input.dispatchTouchEvent",
                                    {"type": kind, "touchPoints": [] if kind == "touchEnd" else fingers})
        after = float(browser.find_element("id", "scale").get_attribute("value"))
        assert after == pytest.approx(before * 3, rel=0.1), (before, after)  # fingers 20 → 60 px apart
    finally:
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.mark.parametrize("fmt", ["TIFF", "HEIF"])
def test_a_tiff_or_heic_the_browser_cannot_decode_runs_as_the_api_does(page, page_server, tmp_path, fmt):
    """Chromium decodes neither: the page shows the server's decode (POST /preview) and the run's result is
    the API's own render of the same files. The HEIC is a phone's: stored sideways, orientation 6, P3."""
    composite, mask = real_pair(240, 320, 3)
    if fmt == "TIFF":
        data, name = encode(composite, "TIFF"), "scan.tif"
    else:
        data = heif_bytes(composite.transpose(Image.Transpose.ROTATE_90), exif=exif_bytes(6),
                          icc_profile=display_p3_icc(), quality=95)
        name = "IMG_0007.HEIC"
    (tmp_path / name).write_bytes(data)
    mask_path = _write(tmp_path, "mask.png", mask, "PNG")
    _upload(page, "composite", tmp_path / name)
    _until(page, lambda d: d.find_element("id", "editor").is_displayed(), "the mask editor", 60)
    assert page.execute_script("const i = document.getElementById('editor-image'); "
                               "return [i.naturalWidth, i.naturalHeight]") == [240, 320]
    _upload(page, "mask", mask_path)
    _run(page)
    served = _server_render(page_server.url, {"composite": data, "mask": mask_path.read_bytes()}, {})
    assert np.abs(_canvas(page, "result") - served).max() <= 1
