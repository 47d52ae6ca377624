"""Masks without painting on the page, in real headless Chromium against the real server with the real U²-Netp:
drag a box around the object → the found mask is shown over the composite → the brush refines it → harmonize;
and a plain photo chosen as the foreground is cut out and placed at once. The browser set-up is test_page.py's.

S2CRNET_PAGE_SCREENSHOT=docs/page.png writes the README's screenshot (a real iHarmony4 composite, its object
found from a dragged box).
"""

import os
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from helpers import PHOTOS, REAL_VAL, real_pair
from PIL import Image

# test_page's browser and server fixtures (F401/F811: pytest finds fixtures by name in this module)
from test_page import _canvas, _run, _server_render, _until, _upload, _write, browser, page, page_server  # noqa: F401

from model.iharmony import mask_stem

FOUND_TIMEOUT_S = 60  # one POST /mask on a busy 2-core machine


def _real_composite(name: str, width: int) -> tuple[Image.Image, np.ndarray]:
    """An iharmony4_val composite scaled to `width` and its true mask (bool)."""
    image = Image.open(REAL_VAL / "composite_images" / f"{name}.jpg").convert("RGB")
    height = round(image.height * width / image.width)
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    truth = Image.open(REAL_VAL / "masks" / f"{mask_stem(name)}.png").convert("L").resize((width, height))
    return image, np.asarray(truth) > 127


def _drag_box(driver, box: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    """Choose "drag a box" and drag from (x0, y0) to (x1, y1) — composite pixels — over the mask canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.find_element("id", "brush-box").click()
    canvas = driver.find_element("id", "mask-canvas")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    k = canvas.rect["width"] / size[0]  # screen pixels per composite pixel
    half = (canvas.rect["width"] / 2 - 1, canvas.rect["height"] / 2 - 1)

    def offset(x: float, y: float) -> tuple[int, int]:  # from the canvas's centre, inside it
        return (round(min(max((x - size[0] / 2) * k, -half[0]), half[0])),
                round(min(max((y - size[1] / 2) * k, -half[1]), half[1])))
    (ActionChains(driver).move_to_element_with_offset(canvas, *offset(box[0], box[1])).click_and_hold()
     .move_to_element_with_offset(canvas, *offset((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
     .move_to_element_with_offset(canvas, *offset(box[2], box[3])).release().perform())
    _until(driver, lambda d: d.execute_script("return document.getElementById('mask-canvas').dataset.found"),
           "the found mask", FOUND_TIMEOUT_S)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _true_box(truth: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(truth)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_a_dragged_box_finds_the_object_and_the_brush_refines_it(page, page_server, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains

    composite, truth = _real_composite("f1881_1_2", 480)
    path = _write(tmp_path, "comp.jpg", composite, "JPEG", quality=92)
    _upload(page, "composite", path)
    _until(page, lambda d: d.find_element("id", "mask-canvas").is_displayed(), "the mask editor", 30)
    _drag_box(page, _true_box(truth), composite.size)
    found = _canvas(page, "mask-canvas")[..., 0]
    assert _iou(found > 127, truth) > 0.8
    assert page.find_element("id", "brush-paint").is_selected()  # the brush is ready to refine
    # One stroke of the brush on the left edge: the mask sent is the found one plus the stroke.
    canvas = page.find_element("id", "mask-canvas")
    width, height = canvas.rect["width"], canvas.rect["height"]
    (ActionChains(page).move_to_element_with_offset(canvas, -width // 2 + 8, -height // 3).click_and_hold()
     .move_by_offset(0, height // 8).release().perform())
    refined = _canvas(page, "mask-canvas")[..., 0]
    assert (refined > 127).sum() > (found > 127).sum()
    _run(page)
    served = _server_render(page_server.url, {"composite": path.read_bytes(),
                                              "mask": _png(Image.fromarray(refined.astype(np.uint8)))}, {})
    assert np.abs(_canvas(page, "result") - served).max() <= 1
    changed = np.abs(served - np.asarray(_decoded(path)).astype(int)).max(axis=-1) > 0
    assert changed[refined == 0].sum() == 0  # nothing outside the mask moved


def test_a_plain_photo_foreground_is_cut_out_and_dragged_at_once(page, page_server, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains

    photo = Image.open(PHOTOS / "bsds" / "images" / "100075.jpg").convert("RGB")
    photo = photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.LANCZOS)
    background, _ = real_pair(480, 360, index=2)
    foreground_path = _write(tmp_path, "photo.jpg", photo, "JPEG", quality=92)
    background_path = _write(tmp_path, "bg.jpg", background, "JPEG", quality=92)
    page.find_element("id", "mode-layer").click()
    _upload(page, "background", background_path)
    _upload(page, "foreground", foreground_path)
    _until(page, lambda d: "cut out" in d.find_element("id", "status").text, "the cutout", FOUND_TIMEOUT_S)
    shown = page.find_element("id", "stage-foreground")
    alpha = np.asarray(_decoded_canvas(page, "stage-foreground"))[..., 3]
    assert 0.05 < (alpha > 127).mean() < 0.95  # the subject, not the whole rectangle
    ActionChains(page).click_and_hold(shown).move_by_offset(-30, 20).release().perform()
    x, y = (page.find_element("id", name).get_attribute("value") for name in ("x", "y"))
    scale = page.find_element("id", "scale").get_attribute("value")
    _run(page)
    matte = Image.fromarray(alpha)
    served = _server_render(page_server.url, {"foreground": foreground_path.read_bytes(),
                                              "foreground_mask": _png(matte),
                                              "background": background_path.read_bytes()},
                            {"x": x, "y": y, "scale": scale})
    assert np.abs(_canvas(page, "result") - served).max() <= 1


def test_a_screenshot_of_a_box_found_mask_on_a_real_composite(page, tmp_path):  # noqa: F811
    """The README's screenshot: a real iHarmony4 composite, its object found from a dragged box, harmonized."""
    composite, truth = _real_composite("f2021_1_2", 560)
    _upload(page, "composite", _write(tmp_path, "comp.jpg", composite, "JPEG", quality=92))
    _until(page, lambda d: d.find_element("id", "mask-canvas").is_displayed(), "the mask editor", 30)
    _drag_box(page, _true_box(truth), composite.size)
    assert _iou(_canvas(page, "mask-canvas")[..., 0] > 127, truth) > 0.8
    _run(page)
    size = page.get_window_size()
    try:
        page.set_window_size(1280, 1900)  # the found mask and the result in one picture
        time.sleep(0.3)
        page.save_screenshot(str(tmp_path / "page.png"))
    finally:
        page.set_window_size(size["width"], size["height"])
    shot = Image.open(tmp_path / "page.png")
    assert shot.width >= 800
    target = os.environ.get("S2CRNET_PAGE_SCREENSHOT")
    if target:  # small, palette PNG
        buffer = BytesIO()
        shot.convert("RGB").resize((shot.width // 2, shot.height // 2), Image.Resampling.LANCZOS).quantize(
            192).save(buffer, "PNG", optimize=True)
        Path(target).write_bytes(buffer.getvalue())


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _decoded(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _decoded_canvas(driver, element_id: str) -> Image.Image:
    """A canvas with its alpha (RGBA), lossless."""
    import base64

    url = driver.execute_script(f"return document.getElementById('{element_id}').toDataURL('image/png')")
    return Image.open(BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA")
