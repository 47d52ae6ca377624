"""The REST service over real HTTP (uvicorn subprocess, default settings): every endpoint, formats, alpha,
EXIF, ICC, and every bad-input case answering a clear 4xx JSON error."""

import re
from io import BytesIO

import httpx
import numpy as np
import pytest
from helpers import decode, encode, exif_bytes, photo_pair, post_image, real_cutout, real_pair
from PIL import Image, ImageCms, ImageOps

from app.metrics import STAGES
from model import Harmonizer

TIMING_STAGES = ("decode", "queue", "infer", "render", "encode", "total")


@pytest.fixture(scope="module")
def pair() -> tuple[Image.Image, Image.Image]:
    return real_pair(400, 300, 0)


@pytest.fixture(scope="module")
def local() -> Harmonizer:
    return Harmonizer.load(device="cpu")


def _server_timing(response: httpx.Response) -> dict[str, float]:
    entries = re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"])
    return {name: float(ms) for name, ms in entries}


def _assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]
    assert response.headers.get("x-request-id")
    return body


# --- the happy path -----------------------------------------------------------------------------------------
def test_harmonize_the_example_request(server, pair):
    composite, mask = pair
    response = post_image(server.url, encode(composite, "JPEG", quality=92), encode(mask, "PNG"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    out = decode(response.content)
    assert out.format == "JPEG" and out.size == composite.size and out.mode == "RGB"
    timing = _server_timing(response)
    assert set(TIMING_STAGES) <= set(timing) and timing["total"] >= timing["decode"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_client_request_id_is_echoed(server, small_pair):
    response = post_image(server.url, *small_pair, headers={"X-Request-ID": "pipeline-42.a"})
    assert response.headers["x-request-id"] == "pipeline-42.a"
    hostile = post_image(server.url, *small_pair, headers={"X-Request-ID": "bad id\twith spaces"})
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"


def test_png_output_equals_the_in_process_harmonizer(server, local, pair):
    """The service is the library behind HTTP: the pixels of Harmonizer.harmonize (±1 level: batching)."""
    composite, mask = pair
    response = post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG"))
    assert response.headers["content-type"] == "image/png"
    served = np.asarray(decode(response.content)).astype(int)
    expected = np.asarray(local.harmonize(composite, mask)).astype(int)
    assert served.shape == expected.shape and np.abs(served - expected).max() <= 1
    outside = np.asarray(mask) == 0  # the background is never touched
    assert np.array_equal(served[outside], np.asarray(composite).astype(int)[outside])


@pytest.mark.parametrize("source,requested,expected", [
    ("PNG", None, "PNG"), ("WEBP", None, "WEBP"), ("JPEG", None, "JPEG"), ("BMP", None, "JPEG"),
    ("TIFF", None, "JPEG"), ("JPEG", "png", "PNG"), ("PNG", "webp", "WEBP"), ("WEBP", "jpeg", "JPEG"),
])
def test_output_format(server, pair, source, requested, expected):
    composite, mask = pair
    fields = {"format": requested} if requested else {}
    response = post_image(server.url, encode(composite, source), encode(mask, "PNG"), fields)
    assert response.status_code == 200, response.text
    out = decode(response.content)
    assert out.format == expected and out.size == composite.size
    assert response.headers["content-type"] == f"image/{expected.lower()}"


def test_quality_changes_the_jpeg(server, pair):
    composite, mask = pair
    sizes = [len(post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG"),
                            {"format": "jpeg", "quality": q}).content) for q in (30, 100)]
    assert sizes[0] < sizes[1]


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_alpha_channel_is_carried(server, pair, fmt):
    composite, mask = pair
    rgba = composite.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    fields = {"format": fmt, "quality": 100}
    response = post_image(server.url, encode(rgba, "PNG"), encode(mask, "PNG"), fields)
    out = decode(response.content)
    assert out.mode == "RGBA"
    alpha_in, alpha_out = np.asarray(rgba)[..., 3].astype(int), np.asarray(out)[..., 3].astype(int)
    assert np.abs(alpha_in - alpha_out).max() <= (0 if fmt == "png" else 2)


def test_alpha_is_dropped_for_jpeg(server, pair):
    composite, mask = pair
    response = post_image(server.url, encode(composite.convert("RGBA"), "PNG"), encode(mask, "PNG"),
                          {"format": "jpeg"})
    assert response.status_code == 200 and decode(response.content).mode == "RGB"


def test_exif_orientation_applies_to_composite_and_mask_alike(server, pair):
    composite, mask = pair  # 400×300 as displayed
    stored_composite = composite.transpose(Image.Transpose.ROTATE_90)  # EXIF 6 rotates it back by 270°
    stored_mask = mask.transpose(Image.Transpose.ROTATE_90)
    assert ImageOps.exif_transpose(_tagged(stored_composite, 6)).size == composite.size
    response = post_image(server.url, encode(stored_composite, "PNG", exif=exif_bytes(6)),
                          encode(stored_mask, "PNG", exif=exif_bytes(6)))
    assert response.status_code == 200, response.text
    out = np.asarray(decode(response.content)).astype(int)
    assert out.shape[:2] == (300, 400)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(composite).astype(int)[outside])

    # a mask already upright (no EXIF) of the displayed size fits a rotated composite too
    upright_mask = post_image(server.url, encode(stored_composite, "PNG", exif=exif_bytes(6)),
                              encode(mask, "PNG"))
    assert upright_mask.status_code == 200
    # but a mask of the stored size without the same EXIF does not
    mismatch = post_image(server.url, encode(stored_composite, "PNG", exif=exif_bytes(6)),
                          encode(stored_mask, "PNG"))
    _assert_error(mismatch, 422, "mask_size_mismatch")


def _tagged(image: Image.Image, orientation: int) -> Image.Image:
    tagged = image.copy()
    tagged.info["exif"] = exif_bytes(orientation)
    return tagged


def test_icc_profile_is_carried(server, pair):
    composite, mask = pair
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for fmt in ("jpeg", "png", "webp"):
        response = post_image(server.url, encode(composite, "JPEG", icc_profile=profile), encode(mask, "PNG"),
                              {"format": fmt})
        assert decode(response.content).info.get("icc_profile") == profile, fmt


@pytest.mark.parametrize("mask_mode", ["L-soft", "RGB", "RGBA-alpha", "1"])
def test_mask_kinds(server, pair, mask_mode):
    composite, mask = pair
    if mask_mode == "L-soft":
        mask = mask.resize((40, 30)).resize(mask.size, Image.Resampling.BILINEAR)  # soft edges blend
    elif mask_mode == "RGB":
        mask = mask.convert("RGB")
    elif mask_mode == "RGBA-alpha":
        alpha = mask
        mask = Image.new("RGBA", mask.size, (255, 255, 255, 0))
        mask.putalpha(alpha)
    else:
        mask = mask.convert("1")
    response = post_image(server.url, encode(composite, "JPEG"), encode(mask, "PNG"))
    assert response.status_code == 200, response.text


def test_grayscale_and_sixteen_bit_composites(server, pair):
    composite, mask = pair
    grey = post_image(server.url, encode(composite.convert("L"), "PNG"), encode(mask, "PNG"))
    assert decode(grey.content).mode == "RGB"
    wide = np.asarray(composite.convert("L")).astype(np.uint16) * 257
    sixteen = Image.frombytes("I;16", composite.size, wide.tobytes())
    assert post_image(server.url, encode(sixteen, "PNG"), encode(mask, "PNG")).status_code == 200


def test_real_photo_with_category(server):
    composite, mask = photo_pair(5)
    response = post_image(server.url, encode(composite, "JPEG"), encode(mask, "PNG"), {"category": "person"})
    assert response.status_code == 200 and decode(response.content).size == composite.size


# --- /curves ------------------------------------------------------------------------------------------------
def test_curves_json_matches_the_in_process_model(server, local, pair):
    composite, mask = pair
    response = post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG"), endpoint="/curves")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model"] == f"s2crnet-{local.config.backbone}" and body["category"] == "unknown"
    assert {"decode", "thumbnail", "queue", "infer", "total"} <= set(body["timings_ms"])
    tables = np.array([body["r"], body["g"], body["b"]])
    assert tables.shape == (3, 256) and tables.min() >= 0 and tables.max() <= 255
    assert (np.diff(tables, axis=1) >= 0).all()  # the model's curves are monotone
    expected = local.predict_curves([composite], [mask])[0].lut().astype(int)
    assert np.abs(tables - expected).max() <= 1


def test_curves_cube(server, small_pair):
    response = post_image(server.url, *small_pair, {"format": "cube"}, endpoint="/curves")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert "LUT_1D_SIZE 256" in lines
    rows = [line.split() for line in lines if re.fullmatch(r"[\d.]+ [\d.]+ [\d.]+", line)]
    assert len(rows) == 256 and all(0.0 <= float(v) <= 1.0 for row in rows for v in row)


# --- health, readiness, metrics, info, docs -----------------------------------------------------------------
def test_health_and_readiness(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_info(server, local):
    info = httpx.get(server.url + "/info").json()
    assert info["model"]["sha256"] == local.sha256
    assert info["model"]["parameters"] == local.num_parameters()
    assert info["model"]["device"] == "cpu" and info["version"]
    assert info["limits"]["max_pixels"] == 50_000_000
    assert info["limits"]["max_upload_bytes"] == 64 * 1024 * 1024
    assert "person" in info["model"]["categories"] and info["auth"] is False


def test_metrics_after_traffic(server, small_pair):
    assert post_image(server.url, *small_pair).status_code == 200
    cutout, background = real_cutout(0, scale=0.25), real_pair(160, 120, 1)[0]  # layer input: the compose stage
    layer = httpx.post(server.url + "/harmonize", files={"foreground": ("f.png", encode(cutout, "PNG")),
                                                         "background": ("b.png", encode(background, "PNG"))})
    assert layer.status_code == 200, layer.text
    text = httpx.get(server.url + "/metrics").text
    assert re.search(r'^s2crnet_requests_total\{endpoint="/harmonize",status="200"\} [1-9]', text, re.M)
    for bucket in ("0.001", "60.0"):  # 1 ms … 60 s
        assert f's2crnet_request_duration_seconds_bucket{{endpoint="/harmonize",le="{bucket}"}}' in text
    for stage in STAGES:
        pattern = rf'^s2crnet_stage_duration_seconds_count\{{stage="{stage}"\}} [1-9]'
        assert re.search(pattern, text, re.M), stage
    assert re.search(r"^s2crnet_batch_size_count [1-9]", text, re.M)
    for gauge in ("s2crnet_queue_depth", "s2crnet_in_flight_requests"):
        assert re.search(rf"^{gauge} \d", text, re.M), gauge
    assert re.search(r"^s2crnet_image_megapixels_count [1-9]", text, re.M)
    assert re.search(r'^s2crnet_model_info\{.*sha256="[0-9a-f]{64}".*\} 1.0', text, re.M)


def test_unknown_paths_stay_a_bounded_label(server):
    httpx.get(server.url + "/no/such/path/12345")
    text = httpx.get(server.url + "/metrics").text
    assert "12345" not in text and 'endpoint="other",status="404"' in text


def test_openapi_and_docs(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/harmonize", "/curves", "/healthz", "/readyz", "/metrics", "/info"} <= set(spec["paths"])
    form = spec["paths"]["/harmonize"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]
    assert "security" not in spec["paths"]["/harmonize"]["post"]  # no API key configured
    assert httpx.get(server.url + "/docs").status_code == 200


# --- bad input: a clear 4xx, never a 5xx --------------------------------------------------------------------
def _bad_requests(pair):
    composite, mask = pair
    jpeg, png = encode(composite, "JPEG"), encode(mask, "PNG")
    other_size = encode(mask.resize((200, 150)), "PNG")
    empty, full = encode(Image.new("L", mask.size, 0), "PNG"), encode(Image.new("L", mask.size, 255), "PNG")
    bomb = encode(Image.new("1", (9000, 6000)), "PNG")  # 54 MP declared, a few kB on the wire
    return [
        ("missing mask", {"composite": jpeg}, {}, 422, "missing_field"),
        ("missing composite", {"mask": png}, {}, 422, "missing_field"),
        ("text instead of an image", {"composite": b"hello, not an image", "mask": png}, {}, 415,
         "unsupported_image"),
        ("unsupported format", {"composite": encode(composite, "TGA"), "mask": png}, {}, 415,
         "unsupported_image"),
        ("truncated JPEG", {"composite": jpeg[: len(jpeg) // 3], "mask": png}, {}, 400, "corrupt_image"),
        ("truncated mask", {"composite": jpeg, "mask": png[:200]}, {}, 400, "corrupt_image"),
        ("decompression bomb", {"composite": bomb, "mask": png}, {}, 413, "image_too_large"),
        ("mask of another size", {"composite": jpeg, "mask": other_size}, {}, 422, "mask_size_mismatch"),
        ("empty mask", {"composite": jpeg, "mask": empty}, {}, 422, "invalid_mask"),
        ("mask without background", {"composite": jpeg, "mask": full}, {}, 422, "invalid_mask"),
        ("unknown category", {"composite": jpeg, "mask": png}, {"category": "dragon"}, 422,
         "unknown_category"),
        ("bad format", {"composite": jpeg, "mask": png}, {"format": "gif"}, 422, "invalid_field"),
        ("quality 0", {"composite": jpeg, "mask": png}, {"quality": "0"}, 422, "invalid_field"),
        ("quality 101", {"composite": jpeg, "mask": png}, {"quality": "101"}, 422, "invalid_field"),
        ("quality text", {"composite": jpeg, "mask": png}, {"quality": "high"}, 422, "invalid_field"),
    ]


@pytest.mark.parametrize("index", range(15))
def test_bad_input_gets_a_clear_4xx(server, pair, index):
    name, files, fields, status, code = _bad_requests(pair)[index]
    multipart = {part: (f"{part}.bin", data, "application/octet-stream") for part, data in files.items()}
    response = httpx.post(server.url + "/harmonize", files=multipart, data=fields, timeout=60)
    body = _assert_error(response, status, code)
    assert "Traceback" not in body["detail"], name


def test_file_part_sent_as_text_field(server, small_pair):
    # in a multipart form: that field is wrong (422); a urlencoded body is no form of ours at all (400)
    response = httpx.post(server.url + "/harmonize", data={"composite": "abc"}, files={"mask": small_pair[1]})
    _assert_error(response, 422, "invalid_field")
    _assert_error(httpx.post(server.url + "/harmonize", data={"composite": "abc", "mask": "def"}), 400, "bad_request")


def test_not_multipart(server):
    # JSON is not a form: 400 as the README's error table says (issue 19 made the code agree with it)
    _assert_error(httpx.post(server.url + "/harmonize", json={"composite": "x"}), 400, "bad_request")
    garbage = httpx.post(server.url + "/harmonize", content=b"--x\r\nnot really",
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert garbage.status_code in (400, 422) and garbage.json()["code"] in ("bad_request", "missing_field")


def test_curves_bad_format(server, small_pair):
    response = post_image(server.url, *small_pair, {"format": "png"}, endpoint="/curves")
    _assert_error(response, 422, "invalid_field")


def test_wrong_method_and_path(server):
    _assert_error(httpx.get(server.url + "/harmonize"), 405, "method_not_allowed")
    _assert_error(httpx.get(server.url + "/nothing-here"), 404, "not_found")


def test_no_5xx_was_ever_answered(server):
    """Runs last in this module: the metrics hold every status this server answered."""
    text = httpx.get(server.url + "/metrics").text
    statuses = re.findall(r'^s2crnet_requests_total\{endpoint="[^"]+",status="(\d+)"\} ([\d.]+)', text, re.M)
    assert statuses and not [s for s, count in statuses if s.startswith("5") and float(count) > 0]
    assert "Traceback" not in server.logs


def test_upload_read_from_a_real_file_object(server, pair, tmp_path):
    """curl -F composite=@file sends a filename and a content type: the service ignores both."""
    composite, mask = pair
    buffer = BytesIO()
    composite.save(buffer, "JPEG")
    files = {"composite": ("comp.jpg", buffer.getvalue(), "image/jpeg"),
             "mask": ("../../etc/passwd", encode(mask, "PNG"), "text/plain")}
    assert httpx.post(server.url + "/harmonize", files=files, timeout=60).status_code == 200
