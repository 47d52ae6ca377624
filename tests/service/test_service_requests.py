"""What a request says is what it gets (issue 19, items 5, 6, 7, 10; issue 30, items 5, 7): alpha kept when the
format cannot hold it, bodies that are not forms, form fields in the query, the Accept header, HEAD on health
endpoints, phone photos (HEIC, AVIF), format names in any case."""

import httpx
import numpy as np
import pytest
from helpers import decode, display_p3_icc, encode, exif_bytes, heif_bytes, post_image, real_pair
from PIL import Image


@pytest.fixture(scope="module")
def pair():
    return real_pair(160, 120, 3)


def _transparent(pair) -> Image.Image:
    composite, _ = pair
    rgba = composite.convert("RGBA")
    alpha = np.full(composite.size[::-1], 255, np.uint8)
    alpha[:, :20] = 0
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


@pytest.mark.parametrize("fmt", ["TIFF", "GIF"])
def test_alpha_without_a_writable_format_comes_back_as_png(server, pair, fmt):
    composite, mask = pair
    source = _transparent(pair)
    if fmt == "GIF":  # a palette image with one transparent index
        source = source.convert("RGB").quantize(64)
        source.info["transparency"] = 0
        data = encode(source, "GIF", transparency=0)
    else:
        data = encode(source, "TIFF")
    response = post_image(server.url, data, encode(mask, "PNG"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    served = decode(response.content)
    assert served.mode == "RGBA" and served.getchannel("A").getextrema()[0] == 0


@pytest.mark.parametrize("kind", ["json", "text", "raw image", "urlencoded"])
def test_a_body_that_is_not_multipart_is_a_bad_request(server, pair, kind):
    composite, _ = pair
    jpeg = encode(composite, "JPEG")
    send = {"json": {"json": {"composite": "x"}},
            "text": {"content": b"composite, mask", "headers": {"content-type": "text/plain"}},
            "raw image": {"content": jpeg, "headers": {"content-type": "image/jpeg"}},
            "urlencoded": {"data": {"format": "png"}}}[kind]
    response = httpx.post(server.url + "/harmonize", timeout=30, **send)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "bad_request" and "multipart/form-data" in body["detail"]


@pytest.mark.parametrize("endpoint", ["/harmonize", "/curves"])
def test_form_fields_in_the_query_string_are_refused(server, pair, endpoint):
    composite, mask = pair
    response = post_image(server.url, encode(composite, "JPEG"), encode(mask, "PNG"),
                          endpoint=endpoint + "?format=png")
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_field" and "form field" in response.json()["detail"]


@pytest.mark.parametrize("accept, fields, status, media_type", [
    ("image/png", {}, 200, "image/png"),
    ("image/webp;q=0.9, image/png;q=0.5", {}, 200, "image/webp"),
    ("image/*", {}, 200, "image/jpeg"),
    ("*/*", {}, 200, "image/jpeg"),
    ("image/png, image/jpeg;q=0", {"format": "png"}, 200, "image/png"),
    ("image/gif", {}, 406, None),
    ("application/json", {}, 406, None),
    ("image/webp", {"format": "png"}, 406, None),
])
def test_accept_is_honoured(server, pair, accept, fields, status, media_type):
    composite, mask = pair
    response = post_image(server.url, encode(composite, "JPEG"), encode(mask, "PNG"), fields=fields,
                          headers={"Accept": accept})
    assert response.status_code == status, response.text
    if status == 200:
        assert response.headers["content-type"] == media_type
        assert decode(response.content).size == composite.size
    else:
        assert response.json()["code"] == "not_acceptable"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_on_health_endpoints(server, path):
    response = httpx.head(server.url + path, timeout=10)
    assert response.status_code == 200 and response.content == b""


def test_a_heic_with_orientation_6_and_p3_harmonizes_upright_with_the_profile(server):
    """The bar of issue 30: a phone's HEIC, stored sideways with orientation 6 and tagged Display P3, answers
    the same picture as its upright decode sent as PNG, upright, as JPEG with the P3 profile."""
    upright, mask = real_pair(120, 160, 2)
    p3 = display_p3_icc()
    heic = heif_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif_bytes(6), icc_profile=p3, quality=95)
    response = post_image(server.url, heic, encode(mask, "PNG"), names=("IMG_0001.HEIC", "mask.png"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    served = decode(response.content)
    assert served.size == upright.size and served.info.get("icc_profile") == p3
    decoded_here = decode(heic).convert("RGB")  # libheif turns it upright
    plain = post_image(server.url, encode(decoded_here, "PNG"), encode(mask, "PNG"), fields={"format": "jpeg"})
    difference = np.abs(np.asarray(served, int) - np.asarray(decode(plain.content).convert("RGB"), int)).mean()
    assert difference < 1.5, difference  # the same harmonization of the same upright pixels (JPEG noise only)


@pytest.mark.parametrize(("written", "media_type"), [("jpg", "image/jpeg"), ("JPG", "image/jpeg"),
                                                     ("PNG", "image/png"), ("avif", "image/avif")])
def test_format_names_in_any_case_and_avif_output(server, pair, written, media_type):
    composite, mask = pair
    response = post_image(server.url, encode(composite, "JPEG"), encode(mask, "PNG"), fields={"format": written})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert decode(response.content).size == composite.size


def test_an_avif_composite_answers_avif(server, pair):
    composite, mask = pair
    response = post_image(server.url, encode(composite, "AVIF", quality=90), encode(mask, "PNG"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/avif"


def test_an_unknown_format_is_a_422_naming_ours(server, pair):
    composite, mask = pair
    response = post_image(server.url, encode(composite, "JPEG"), encode(mask, "PNG"), fields={"format": "gif"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_field"
    assert "jpeg (jpg), png, webp, avif" in response.json()["detail"]


def test_preview_answers_the_upright_decode_as_png(server):
    upright, _ = real_pair(120, 160, 1)
    heic = heif_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif_bytes(6), quality=95)
    response = httpx.post(server.url + "/preview", files={"image": ("IMG.HEIC", heic)}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    shown = decode(response.content)
    assert shown.size == upright.size and np.abs(np.asarray(shown, int) - np.asarray(upright, int)).mean() < 4
    missing = httpx.post(server.url + "/preview", files={"other": ("x.png", encode(upright, "PNG"))}, timeout=60)
    assert missing.status_code == 422 and missing.json()["code"] == "missing_field"


def test_a_urlencoded_form_with_our_field_names_is_a_bad_request(server):
    """Its fields are text, never files: 400 saying what to send, not 422 with the validator's words."""
    response = httpx.post(server.url + "/harmonize", data={"composite": "x", "mask": "y", "quality": "high"},
                          timeout=30)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "bad_request" and "multipart/form-data" in body["detail"]
    assert "UploadFile" not in body["detail"] and "Input should" not in body["detail"]


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "cut-b0undary", close: bool = True) -> bytes:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


@pytest.mark.parametrize("endpoint", ["/harmonize", "/curves"])
def test_a_multipart_body_cut_mid_file_is_a_bad_request(server, pair, endpoint):
    composite, mask = pair
    whole = _multipart([("composite", encode(composite, "JPEG")), ("mask", encode(mask, "PNG"))])
    headers = {"content-type": "multipart/form-data; boundary=cut-b0undary"}
    assert httpx.post(server.url + endpoint, content=whole, headers=headers, timeout=60).status_code == 200
    cut = whole[: len(whole) - 300]  # the mask's last bytes and the closing boundary never came
    response = httpx.post(server.url + endpoint, content=cut, headers=headers, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request" and "cut off" in response.json()["detail"]


def test_a_part_sent_twice_is_refused(server, pair):
    composite, mask = pair
    jpeg = encode(composite, "JPEG")
    body = _multipart([("composite", jpeg), ("composite", jpeg), ("mask", encode(mask, "PNG"))])
    response = httpx.post(server.url + "/harmonize", content=body, timeout=60,
                          headers={"content-type": "multipart/form-data; boundary=cut-b0undary"})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_field"
    assert response.json()["detail"].startswith("composite: sent 2 times")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # a large JPEG takes the reduced-decode path, a PNG the other
def test_a_mask_sent_as_the_composite_is_refused(server, fmt):
    photo, mask = real_pair(1024, 768, 1)
    response = post_image(server.url, encode(mask.convert("RGB"), fmt), encode(photo, "JPEG"))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_mask" and "were the two swapped" in response.json()["detail"]
