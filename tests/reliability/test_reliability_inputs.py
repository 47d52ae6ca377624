"""Hostile inputs against the real server over HTTP: every answer is 200 or a 4xx JSON error, never a 5xx.

Hypothesis builds whole requests: random bytes; truncated and corrupted JPEG/PNG/WebP/TIFF/GIF/BMP; zero-size
and 1×1 images; decompression bombs (huge sizes declared in PNG, GIF, TIFF, JPEG, BMP and WebP headers; PNG text
and ICC chunks that inflate to 100 MB); every Pillow mode; animated GIF and multi-page TIFF; EXIF orientations
1-8; masks of other sizes, all-zero, all-one, soft, RGB, with alpha; missing, duplicated and extra form fields;
absurd quality/format/category; the layer form (foreground, foreground_mask, background) and random, huge,
negative and NaN values for x, y, scale, box, feather, strength and output; wrong content types; truncated
multipart bodies; chunked bodies over the upload limit. After every batch of requests /healthz must answer; the
server's peak RSS is reported. A schemathesis run against /openapi.json follows the same rule.

    nice -n 15 .venv/bin/pytest -q tests/reliability/test_reliability_inputs.py  # fast: a few hundred requests
    nice -n 15 .venv/bin/pytest -q -m slow tests/reliability/test_reliability_inputs.py  # full: ≥ 2,000 requests
"""

import functools
import io
import json
import re
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field

import httpx
import numpy as np
import psutil
import pytest
import schemathesis
from helpers import exif_bytes, read_http_answer, real_cutout, real_pair, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode

from app.errors import ERROR_CODES

UPLOAD_LIMIT = 2 * 1024 * 1024
MAX_PIXELS = 4_000_000
MAX_QUEUE = 16
WORKER_THREADS = 4
HEALTH_EVERY = 25  # requests between /healthz checks
CANARY = b"CANARY-7f3a9c"  # planted in uploaded bytes: no answer may echo it
FAST_EXAMPLES, FULL_EXAMPLES = 500, 2200
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP")
MODES = ("1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM",
         b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"")


@pytest.fixture(scope="module")
def hostile_server():
    """Small limits, so bombs and oversized bodies are cheap to send."""
    handle = start_server({"S2CRNET_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "S2CRNET_MAX_PIXELS": str(MAX_PIXELS),
                           "S2CRNET_MAX_QUEUE": str(MAX_QUEUE), "S2CRNET_WORKER_THREADS": str(WORKER_THREADS),
                           "S2CRNET_LOG_LEVEL": "warning"})
    handle.categories = tuple(httpx.get(handle.url + "/info").json()["model"]["categories"])
    yield handle
    handle.stop()


# --- image bytes ------------------------------------------------------------------------------------------
def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@functools.lru_cache(maxsize=4)
def _real_base(index: int) -> tuple[Image.Image, Image.Image]:
    return real_pair(64, 64, index)


def _real_at(width: int, height: int, index: int) -> tuple[Image.Image, Image.Image]:
    """A real composite and mask at width×height; the mask has foreground and background when it can."""
    image, mask = _real_base(index)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    levels = np.array(mask.resize((width, height), Image.Resampling.NEAREST))
    if width * height >= 2:
        levels.flat[0], levels.flat[-1] = 255, 0
    return image, Image.fromarray(levels, "L")


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "P+transparency":
        image = image.convert("P")
        image.info["transparency"] = 0
        return image
    if mode in ("I;16", "I", "F"):
        return image.convert("L").convert("I").convert(mode) if mode != "I" else image.convert("L").convert("I")
    return image.convert(mode)


def _encode_any(image: Image.Image, fmt: str, **params) -> tuple[bytes, str]:
    """Encode in fmt, else in a format that takes the image's mode (TIFF takes every mode here)."""
    for candidate in (fmt, "TIFF", "PNG"):
        try:
            return _save(image, candidate, **params), candidate
        except Exception:  # Pillow's savers refuse modes and sizes with many exception types
            params = {}  # the extras (EXIF, save_all) may be what the format refused
    raise AssertionError(f"no format saves mode {image.mode}")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int, body: bytes = b"\x00" * 64) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(body))
            + _png_chunk(b"IEND", b""))


def _png_zlib_bomb(side: int) -> bytes:
    """A real PNG of side² zero pixels: a few kB that would inflate to side² bytes."""
    squeezer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(squeezer.compress(row) for _ in range(side)) + squeezer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def _gif_resized(width: int, height: int) -> bytes:
    """A 4×4 GIF whose screen and frame claim width×height."""
    data = bytearray(_save(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    frame = data.index(b",")  # image descriptor: separator, left, top, width, height
    data[frame + 5:frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _tiff_header_only(width: int, height: int) -> bytes:
    """An uncompressed 1-bit TIFF that claims width×height and holds 16 bytes of pixels."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 1), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 8 + 4), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else
                                             struct.pack("<I", value)) for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def _jpeg_resized(width: int, height: int) -> bytes:
    """An 8×8 JPEG whose frame header (SOF0) claims width×height."""
    data = bytearray(_save(Image.new("RGB", (8, 8)), "JPEG"))
    frame = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_resized(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER width, height (negative: top-down)
    return bytes(data)


def _webp_resized(width: int, height: int) -> bytes:
    """A lossy 16×16 WebP whose VP8 frame claims width×height (14 bits each)."""
    data = bytearray(_save(Image.new("RGB", (16, 16)), "WEBP", quality=50))
    assert data[12:16] == b"VP8 "
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def _png_text_bomb(kind: bytes) -> bytes:
    """A valid 16×16 PNG with a zTXt or iCCP chunk that would inflate to 100 MB."""
    squeezer = zlib.compressobj(9)
    body = b"".join(squeezer.compress(b"\x00" * 2**20) for _ in range(100)) + squeezer.flush()
    payload = (b"Comment\x00\x00" if kind == b"zTXt" else b"profile\x00\x00") + body
    image = _save(Image.new("L", (16, 16), 128), "PNG")
    end = image.index(b"IDAT") - 4
    return image[:end] + _png_chunk(kind, payload) + image[end:]


@functools.cache
def chunk_bombs() -> dict[str, bytes]:
    """Small pictures with metadata that inflates to 100 MB: Pillow stops at its text-chunk limit."""
    return {"png-zTXt-100MB": _png_text_bomb(b"zTXt"), "png-iCCP-100MB": _png_text_bomb(b"iCCP")}


@functools.cache
def bombs() -> dict[str, bytes]:
    """Huge declared sizes in tiny files (all over MAX_PIXELS), and zero-size images."""
    return {
        "png-header-100k²": _png_header_only(100_000, 100_000),
        "png-zlib-3000²": _png_zlib_bomb(3000),
        "gif-65535²": _gif_resized(65535, 65535),
        "tiff-100k²": _tiff_header_only(100_000, 100_000),
        "tiff-1×2^31": _tiff_header_only(1, 2**31 - 1),
        "jpeg-65500²": _jpeg_resized(65500, 65500),
        "bmp-50000²": _bmp_resized(50_000, 50_000),
        "bmp-50000²-top-down": _bmp_resized(50_000, -50_000),
        "webp-16383²": _webp_resized(16383, 16383),
    }


ZERO_SIZE = {"png-0×0": _png_header_only(0, 0), "gif-0×0": _gif_resized(0, 0), "tiff-0×7": _tiff_header_only(0, 7)}


# --- requests -------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One request: multipart parts or a raw body, plus what the answer must be when it is predictable."""

    endpoint: str
    files: list = field(default_factory=list)  # (name, (filename, bytes, content type))
    data: dict = field(default_factory=dict)
    content_type: str = "auto"  # "auto": the multipart type httpx writes; else sent instead of it
    raw_body: bytes | None = None  # sent as is instead of multipart
    truncate_body_at: int | None = None
    chunked_over_limit: int = 0  # >0: a chunked upload of this many bytes over the limit, on a raw socket
    expect: int | None = None  # the one right status, when the request makes it certain
    notes: list[str] = field(default_factory=list)


@st.composite
def mutated(draw, data: bytes) -> tuple[bytes, str]:
    """Whole, truncated or with bytes flipped."""
    how = draw(st.sampled_from(["whole", "whole", "truncated", "corrupted"]))
    if how == "truncated" and len(data) > 1:
        return data[: draw(st.integers(0, len(data) - 1))], how
    if how == "corrupted" and data:
        array = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            array[draw(st.integers(0, len(array) - 1))] = draw(st.integers(0, 255))
        return bytes(array), how
    return data, "whole"


@st.composite
def generated_image(draw, width: int, height: int, index: int) -> tuple[bytes, str, bool]:
    """A real crop in a drawn mode and format, maybe with EXIF, animated or multi-page, maybe broken.
    → (bytes, description, still a well-formed image)."""
    composite, _ = _real_at(width, height, index)
    mode = draw(st.sampled_from(MODES))
    image = _to_mode(composite, mode)
    fmt = draw(st.sampled_from(FORMATS))
    params: dict = {}
    extra = draw(st.sampled_from(["none", "none", "exif", "frames"]))
    if extra == "exif" and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        params["exif"] = exif_bytes(draw(st.integers(1, 8)))
    elif extra == "frames" and fmt in ("GIF", "TIFF", "WEBP", "PNG"):
        params.update(save_all=True, append_images=[image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] * 2)
    data, used = _encode_any(image, fmt, **params)
    data, how = draw(mutated(data))
    return data, f"{mode} {used} {extra} {how}", how == "whole"


def hostile_bytes() -> st.SearchStrategy[bytes]:
    return st.builds(lambda magic, body: magic + body + CANARY, st.sampled_from(MAGIC), st.binary(max_size=2048))


@st.composite
def composite_and_mask(draw) -> tuple[bytes, bytes, bool, str]:
    """→ (composite bytes, mask bytes, both certain to be accepted, description)."""
    width, height = draw(st.sampled_from([(1, 1), (1, 2), (2, 1), (7, 5), (16, 16), (33, 20), (48, 64),
                                          (17000, 2), (70000, 1)]))  # past WebP's, JPEG's largest side
    index = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["real"] * 4 + ["generated"] * 4 + ["random", "bomb", "zero", "empty"]))
    good = False
    if kind == "real":
        quality = draw(st.integers(1, 100))
        composite = _save(_real_at(width, height, index)[0], *(("JPEG",) if width <= 65535 else ("PNG",)),
                          quality=quality)
        good = width * height >= 2
    elif kind == "generated":
        composite, kind, good = draw(generated_image(width, height, index))
        good = good and width * height >= 2 and " exif" not in kind  # EXIF 5-8 would transpose it
    elif kind == "random":
        composite = draw(st.one_of(hostile_bytes(), st.sampled_from(sorted(chunk_bombs().values()))))
    elif kind == "bomb":
        name = draw(st.sampled_from(sorted(bombs())))
        composite, kind = bombs()[name], name
    elif kind == "zero":
        name = draw(st.sampled_from(sorted(ZERO_SIZE)))
        composite, kind = ZERO_SIZE[name], name
    else:
        composite = b""
    mask_kind = draw(st.sampled_from(["good"] * 5 + ["soft", "zeros", "ones", "rgb", "rgba", "la",
                                                     "other-size", "generated", "random", "bomb"]))
    _, mask = _real_at(width, height, index)
    if mask_kind == "good":
        mask_bytes = _save(mask, "PNG")
    elif mask_kind == "soft":
        mask_bytes = _save(Image.fromarray((np.asarray(mask) // 2 + 40).astype(np.uint8), "L"), "PNG")
    elif mask_kind in ("zeros", "ones"):
        mask_bytes = _save(Image.new("L", (width, height), 0 if mask_kind == "zeros" else 255), "PNG")
    elif mask_kind in ("rgb", "rgba", "la"):
        mask_bytes = _save(mask.convert(mask_kind.upper()), draw(st.sampled_from(["PNG", "TIFF"])))
    elif mask_kind == "other-size":
        mask_bytes = _save(mask.resize((width + draw(st.integers(1, 9)), height)), "PNG")
    elif mask_kind == "generated":
        mask_bytes, mask_kind, _ = draw(generated_image(width, height, index))
    elif mask_kind == "random":
        mask_bytes = draw(hostile_bytes())
    else:
        mask_bytes = bombs()[draw(st.sampled_from(sorted(bombs())))]
    good = good and mask_kind in ("good", "soft") and max(width, height) <= 16383  # any output format fits
    bomb = kind in bombs() and mask_kind in ("good", "soft")  # a bomb beside a good mask: 413, nothing else
    return composite, mask_bytes, good, f"composite {kind}, mask {mask_kind}" + (" (bomb)" if bomb else "")


def text_values() -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


HOSTILE_NUMBERS = ["NaN", "nan", "inf", "-inf", "1e309", "-0", "0", "", " 3", "1,5", "0x10", "10" * 40, "1e-320",
                   "9" * 5000]


def number_values() -> st.SearchStrategy[str]:
    """Form values for the numeric layer fields: ordinary, huge, negative, non-finite and not numbers at all."""
    return st.one_of(st.integers(-500, 500).map(str), st.integers(-10**40, 10**40).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(HOSTILE_NUMBERS),
                     text_values())


def box_values() -> st.SearchStrategy[str]:
    corner = st.one_of(st.integers(-100, 600), st.integers(-10**30, 10**30), st.sampled_from(["NaN", "", "x"]))
    return st.one_of(st.lists(corner, min_size=4, max_size=4).map(lambda v: ",".join(map(str, v))),
                     st.lists(corner, min_size=0, max_size=6).map(lambda v: ",".join(map(str, v))), text_values())


SANE = {"x": st.integers(-40, 60).map(str), "y": st.integers(-40, 60).map(str),
        "scale": st.floats(0.05, 4).map(repr), "feather": st.floats(0, 20).map(repr),
        "strength": st.floats(0, 1).map(repr)}


@st.composite
def layer_fields(draw, endpoint: str) -> dict[str, str]:
    """Some of x, y, scale, box, feather, strength (and output on /harmonize): mostly ordinary values, so composing
    is reached, else any value."""
    fields = {}
    for name in ("x", "y", "scale", "feather", "strength"):
        if draw(st.integers(0, 2)) == 0:
            fields[name] = draw(st.one_of(*[SANE[name]] * 3, number_values()))
    if draw(st.integers(0, 5)) == 0:
        fields["box"] = draw(box_values())
    if endpoint == "/harmonize" and draw(st.integers(0, 3)) == 0:
        fields["output"] = draw(st.one_of(*[st.sampled_from(["image", "layer"])] * 3,
                                          st.sampled_from(["LAYER", ""]), text_values()))
    return fields


@st.composite
def requests_(draw, categories: tuple[str, ...]) -> Spec:
    endpoint = draw(st.sampled_from(["/harmonize", "/harmonize", "/curves"]))
    spec = Spec(endpoint)
    shape = draw(st.sampled_from(["multipart"] * 12 + ["raw", "chunked-over-limit"]))
    if shape == "chunked-over-limit":
        spec.chunked_over_limit = draw(st.integers(1, 256 * 1024))
        spec.expect = 413
        return spec
    if shape == "raw":
        spec.raw_body = draw(st.one_of(st.binary(max_size=4096).map(lambda b: b + CANARY),
                                       text_values().map(lambda t: json.dumps({"composite": t}).encode())))
        spec.content_type = draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                                                  "multipart/form-data; boundary=x", "text/plain", "none"]))
        return spec
    composite, mask, good, description = draw(composite_and_mask())
    spec.notes.append(description)
    counts, named = {"composite": 0, "mask": 0}, True
    parts: tuple = (("composite", composite), ("mask", mask))
    layer_form = draw(st.integers(0, 3)) == 0  # foreground (+ foreground_mask) + background instead
    if layer_form:
        background = _save(_real_at(*draw(st.sampled_from([(16, 16), (48, 64), (7, 5), (1, 1)])), 2)[0], "PNG")
        parts = (("foreground", composite), ("background", draw(st.sampled_from([background, mask, composite]))))
        if draw(st.booleans()):
            parts += (("foreground_mask", mask),)
        spec.notes.append("layer form")
    for name, payload in parts:
        counts[name] = draw(st.sampled_from([1] * 12 + [0, 2]))
        filename = draw(st.sampled_from(["x.jpg"] * 6 + ["../../etc/passwd", "/tmp/x.png", "C:\\x.bmp", "", "ü.tif"]))
        named &= filename != ""  # a part with an empty file name is a text field (as browsers send no file)
        for _ in range(counts[name]):
            spec.files.append((name, (filename, payload, draw(st.sampled_from(
                ["application/octet-stream", "image/jpeg", "text/plain", "application/json"])))))
    fields_ok = True
    if endpoint == "/harmonize":
        if draw(st.booleans()):
            value = draw(st.one_of(*[st.sampled_from(["jpeg", "png", "webp"])] * 4, st.sampled_from(
                ["JPEG", "gif", "tiff", "cube", "", " png", "jpeg\x00"]), text_values()))
            spec.data["format"] = value
            fields_ok &= value in ("jpeg", "png", "webp")
        if draw(st.booleans()):
            value = draw(st.one_of(*[st.integers(1, 100)] * 4, st.integers(-10**30, 10**30), st.sampled_from(
                ["0", "101", "NaN", "1e3", "95.5", "", "-1"]), text_values()))
            spec.data["quality"] = str(value)
            fields_ok &= isinstance(value, int) and 1 <= value <= 100
    elif draw(st.booleans()):
        value = draw(st.one_of(*[st.sampled_from(["json", "cube"])] * 4, st.sampled_from(["CUBE", "xml", ""]),
                               text_values()))
        spec.data["format"] = value
        fields_ok &= value in ("json", "cube")
    if draw(st.booleans()):
        value = draw(st.one_of(*[st.sampled_from(categories)] * 4, text_values()))
        spec.data["category"] = value
        fields_ok &= value in categories or value == ""
    if draw(st.integers(0, 2)) == 0 or layer_form:
        layer_values = draw(layer_fields(endpoint))
        spec.data.update(layer_values)
        fields_ok &= not layer_values  # a placement field beside a composite is a 422; any value can be bad
    # unknown fields are ignored; a known one changes the answer
    for _ in range(draw(st.sampled_from([0] * 4 + [1, 2, 3]))):
        name = draw(st.sampled_from(["extra", "x" * 300, "quality", "format", "category", "composite", "mask"]))
        if draw(st.booleans()):
            spec.files.append((name, ("f.bin", draw(hostile_bytes()), "application/octet-stream")))
        else:
            spec.data[name] = draw(text_values())
        if name in counts:
            counts[name] += 1
        fields_ok &= name in ("extra", "x" * 300)
    spec.content_type = draw(st.sampled_from(["auto"] * 16 + [
        "multipart/form-data", "multipart/form-data; boundary=wrong", "application/x-www-form-urlencoded",
        "application/json", "image/jpeg", "none", "multipart/form-data; boundary=\"\x7f\""]))
    if draw(st.integers(0, 15)) == 15:  # not 0: hypothesis draws small values most often
        spec.truncate_body_at = draw(st.integers(0, 4096))
    well_formed = spec.content_type == "auto" and spec.truncate_body_at is None
    counts_ok = counts["composite"] == 1 and counts["mask"] == 1 and named and not layer_form
    if well_formed and counts_ok and fields_ok and good:
        spec.expect = 200
    elif well_formed and counts_ok and fields_ok and "(bomb)" in description:
        spec.expect = 413
    return spec


# --- sending and judging --------------------------------------------------------------------------------------
def _send_chunked_over_limit(url: str, endpoint: str, over: int) -> tuple[int, bytes]:
    """A chunked multipart upload of UPLOAD_LIMIT + over bytes on a raw socket; stops sending once answered."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST {endpoint} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode()
    part = b'--b\r\nContent-Disposition: form-data; name="composite"; filename="c.jpg"\r\n\r\n'
    total, chunk = UPLOAD_LIMIT + over, CANARY * 5000  # 65 kB per chunk
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        sent, deadline = 0, time.monotonic() + 30
        sock.setblocking(False)
        while sent < total and time.monotonic() < deadline:
            try:
                answer += sock.recv(65536)
                break  # the server answered before the body ended
            except BlockingIOError:
                pass
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            except (BlockingIOError, OSError):
                time.sleep(0.001)
        answer = read_http_answer(sock, answer)
    status = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    assert status, f"no answer to a chunked upload {over} bytes over the limit: {answer[:200]!r}"
    return int(status.group(1)), answer.partition(b"\r\n\r\n")[2]


def send(client: httpx.Client, url: str, spec: Spec) -> tuple[int, dict, bytes]:
    """→ (status, headers, body)."""
    if spec.chunked_over_limit:
        status, body = _send_chunked_over_limit(url, spec.endpoint, spec.chunked_over_limit)
        return status, {"content-type": "application/json"}, body
    if spec.raw_body is not None:
        body, auto_type = spec.raw_body, None
    else:
        request = httpx.Request("POST", url + spec.endpoint, files=spec.files, data=spec.data)
        body, auto_type = request.read(), request.headers.get("content-type")
    if spec.truncate_body_at is not None:
        body = body[: spec.truncate_body_at]
    headers = {}
    if spec.content_type != "none" and (auto_type or spec.content_type != "auto"):
        headers["content-type"] = auto_type if spec.content_type == "auto" else spec.content_type
    response = client.post(url + spec.endpoint, content=body, headers=headers)
    return response.status_code, response.headers, response.content


def judge(spec: Spec, status: int, headers, body: bytes) -> None:
    """The rule for every answer: 200 with the right content, or a 4xx JSON error that leaks nothing."""
    context = f"{spec.endpoint} {spec.notes} content-type={spec.content_type!r} fields={list(spec.data)} → {status}"
    assert CANARY not in body, f"the answer echoes uploaded bytes: {context}"
    assert b"Traceback" not in body and b'File "' not in body, f"a stack trace in the answer: {context}"
    if spec.expect is not None:
        assert status == spec.expect, f"{context}: {body[:300]!r}"
    if status == 200:
        kind = headers["content-type"]
        if spec.endpoint == "/harmonize":
            assert kind in ("image/jpeg", "image/png", "image/webp"), context
            Image.open(io.BytesIO(body)).load()
        elif kind.startswith("application/json"):
            curves = json.loads(body)
            assert all(len(curves[c]) == 256 and 0 <= min(curves[c]) <= max(curves[c]) <= 255 for c in "rgb")
        else:
            assert kind.startswith("text/plain") and b"LUT_1D_SIZE 256" in body, context
        return
    assert 400 <= status < 500, f"{context}: {body[:300]!r}"
    error = json.loads(body)
    assert isinstance(error["detail"], str) and error["detail"], context
    assert error["code"] in ERROR_CODES and ERROR_CODES[error["code"]][0] == status, context


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


def run_hostile(server, examples: int, record_property) -> dict:
    stats = {"requests": 0, "statuses": {}, "codes": {}, "expected_checked": 0}
    process = psutil.Process(server.process.pid)
    start_rss = process.memory_info().rss / 2**20
    client = httpx.Client(timeout=60)

    @settings(max_examples=examples, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(spec=requests_(server.categories))
    def exchange(spec: Spec) -> None:
        status, headers, body = send(client, server.url, spec)
        stats["requests"] += 1
        stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
        stats["expected_checked"] += spec.expect is not None
        judge(spec, status, headers, body)
        code = json.loads(body)["code"] if status != 200 else "ok"
        stats["codes"][code] = stats["codes"].get(code, 0) + 1
        if stats["requests"] % HEALTH_EVERY == 0:
            assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200, "server down"

    try:
        exchange()
    finally:
        client.close()
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    peak = peak_rss_mb(server.process.pid)
    # the service's own worst case: (max_queue + worker threads) × 5 bytes × max_pixels over its idle size
    bound = start_rss + (MAX_QUEUE + WORKER_THREADS) * 5 * MAX_PIXELS / 2**20
    stats.update(start_rss_mb=round(start_rss, 1), peak_rss_mb=round(peak, 1), rss_bound_mb=round(bound, 1))
    for key, value in stats.items():
        record_property(f"hostile_{key}", value)
    server_errors = sum(n for s, n in stats["statuses"].items() if s >= 500)
    assert server_errors == 0, stats
    assert peak <= bound, stats
    return stats


def test_hostile_inputs_fast(hostile_server, record_property):
    stats = run_hostile(hostile_server, FAST_EXAMPLES, record_property)
    assert stats["requests"] >= FAST_EXAMPLES and stats["statuses"].get(200, 0) > 0


@pytest.mark.slow
def test_hostile_inputs_full(hostile_server, record_property):
    stats = run_hostile(hostile_server, FULL_EXAMPLES, record_property)
    assert stats["requests"] >= 2000 and stats["statuses"].get(200, 0) > 0


@functools.cache
def _layer_parts() -> dict[str, bytes]:
    cutout = real_cutout(3, scale=0.2)  # 57×93 RGBA
    return {"foreground": _save(cutout, "PNG"), "rgb": _save(cutout.convert("RGB"), "JPEG"),
            "matte": _save(cutout.getchannel("A"), "PNG"), "background": _save(_real_at(64, 48, 1)[0], "JPEG")}


@st.composite
def layer_requests(draw) -> Spec:
    """Well-formed layer requests (a real cutout, a real background) whose fields are fuzzed."""
    parts = _layer_parts()
    spec = Spec(draw(st.sampled_from(["/harmonize", "/curves"])))
    if draw(st.booleans()):
        spec.files = [("foreground", ("f.png", parts["foreground"], "image/png"))]
    else:
        spec.files = [("foreground", ("f.jpg", parts["rgb"], "image/jpeg")),
                      ("foreground_mask", ("m.png", parts["matte"], "image/png"))]
    spec.files.append(("background", ("b.jpg", parts["background"], "image/jpeg")))
    spec.data = draw(layer_fields(spec.endpoint))
    spec.notes.append("layer form, fuzzed fields")
    return spec


def test_layer_fields_fuzz(hostile_server, record_property):
    """Random, huge, negative and NaN placements, strengths and outputs on a good cutout: 200 or a JSON 4xx."""
    client = httpx.Client(timeout=60)
    statuses: dict[int, int] = {}

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(spec=layer_requests())
    def exchange(spec: Spec) -> None:
        status, headers, body = send(client, hostile_server.url, spec)
        statuses[status] = statuses.get(status, 0) + 1
        judge(spec, status, headers, body)
        if status == 200 and spec.data.get("output") == "layer":
            assert Image.open(io.BytesIO(body)).mode == "RGBA"

    try:
        exchange()
    finally:
        client.close()
    record_property("layer_fuzz_statuses", statuses)
    assert statuses.get(200, 0) >= 20 and statuses.get(422, 0) >= 20, statuses
    assert not [s for s in statuses if s >= 500], statuses


@pytest.mark.parametrize("name", sorted(bombs()))
def test_every_bomb_is_refused_from_its_header(hostile_server, name):
    """Each bomb, beside a good mask, is a 413 at once (the pixels are never decoded)."""
    _, mask = _real_at(16, 16, 0)
    files = {"composite": ("b.bin", bombs()[name]), "mask": ("m.png", _save(mask, "PNG"))}
    started = time.perf_counter()
    response = httpx.post(hostile_server.url + "/harmonize", files=files, timeout=30)
    assert response.status_code == 413 and response.json()["code"] == "image_too_large", response.text
    assert time.perf_counter() - started < 10  # no 10-gigapixel decode happened (a generous bound)


@pytest.mark.parametrize("name", sorted(chunk_bombs()))
def test_metadata_bombs_are_refused_without_inflating(hostile_server, name):
    _, mask = _real_at(16, 16, 0)
    files = {"composite": ("b.png", chunk_bombs()[name]), "mask": ("m.png", _save(mask, "PNG"))}
    before = psutil.Process(hostile_server.process.pid).memory_info().rss
    response = httpx.post(hostile_server.url + "/harmonize", files=files, timeout=30)
    assert response.status_code in (200, 400), response.text  # the picture is fine; the metadata is dropped
    assert psutil.Process(hostile_server.process.pid).memory_info().rss - before < 50 * 2**20


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "POST"])
@pytest.mark.parametrize("path", ["/harmonize/", "/curves/", "/HARMONIZE", "//harmonize", "/harmonize/x",
                                  "/harmonize?format=png", "/nope", "/healthz/", "/metrics/.."])
def test_other_methods_and_paths_get_a_json_4xx(hostile_server, method, path):
    """No redirects (curl -f would take a body-less 307 for success) and no HTML: a JSON 4xx, or the page."""
    _, mask = _real_at(16, 16, 0)
    files = {"composite": ("c.jpg", _save(_real_at(16, 16, 0)[0], "JPEG")), "mask": ("m.png", _save(mask, "PNG"))}
    response = httpx.request(method, hostile_server.url + path, files=files if method == "POST" else None,
                             timeout=30)
    if path == "/harmonize?format=png" and method == "POST":  # a real endpoint, a form field in the query
        assert response.status_code == 422 and response.json()["code"] == "invalid_field"  # not ignored (issue 19)
        return
    if response.request.url.path == "/" and method == "GET":  # "/metrics/.." is "/" once resolved: the web page
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        return
    assert 400 <= response.status_code < 500, (method, path, response.status_code)
    assert response.json()["code"] in ("not_found", "method_not_allowed")


@pytest.mark.parametrize("size,fmt", [((17000, 64), "webp"), ((70000, 2), "jpeg"), ((17000, 64), "png")])
def test_output_past_the_formats_own_size_limit_is_a_422(hostile_server, size, fmt):
    """WebP holds at most 16383 pixels a side, JPEG 65535: asking for more was a 500 from the encoder."""
    composite, mask = _real_at(64, 64, 1)
    composite, mask = composite.resize(size), mask.resize(size, Image.Resampling.NEAREST)
    files = {"composite": ("c.png", _save(composite, "PNG")), "mask": ("m.png", _save(mask, "PNG"))}
    response = httpx.post(hostile_server.url + "/harmonize", files=files, data={"format": fmt}, timeout=60)
    if fmt == "png":
        assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == size
    else:
        assert response.status_code == 422 and response.json()["code"] == "invalid_field", response.text
        assert "format=png" in response.json()["detail"]


MALFORMED_HTTP = {
    "garbage": b"GARBAGE\r\n\r\n",
    "bad-length": b"POST /harmonize HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "negative-length": b"POST /harmonize HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "two-lengths": b"POST /harmonize HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "bad-chunk": b"POST /harmonize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\nZZ\r\nabc\r\n",
    "null-in-path": b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n",
    "20MB-header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 * 2**20) + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_HTTP))
def test_malformed_http_gets_a_4xx_and_costs_nothing(hostile_server, name):
    """Answered by uvicorn's HTTP parser before the app (so plain text, not JSON): 400, memory unchanged."""
    process = psutil.Process(hostile_server.process.pid)
    before = process.memory_info().rss
    with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=30) as sock:
        try:
            sock.sendall(MALFORMED_HTTP[name])
        except OSError:  # the server stopped reading: its answer is already on the way
            pass
        try:
            answer = sock.recv(200)
        except ConnectionResetError:  # the reset after a refused 20 MB header can overtake the 400
            answer = b"reset"
    assert re.match(rb"HTTP/1\.1 4\d\d ", answer) or answer == b"reset" and name == "20MB-header", answer
    assert process.memory_info().rss - before < 50 * 2**20
    assert httpx.get(hostile_server.url + "/healthz", timeout=10).status_code == 200


# --- OpenAPI-driven fuzzing -------------------------------------------------------------------------------------
def run_openapi(server, examples: int, record_property) -> dict:
    """Schemathesis cases for every operation in /openapi.json, valid and invalid ones, one request each."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", timeout=30)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    stats = {"requests": 0, "statuses": {}}

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def exchange(case) -> None:
        response = case.call(base_url=server.url, timeout=60)
        status = response.status_code
        stats["requests"] += 1
        stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
        assert status < 500, f"{case.method} {case.path} → {status}: {response.text[:300]}"
        assert b"Traceback" not in response.content
        if status >= 400:
            error = response.json()
            assert isinstance(error["detail"], str) and error["code"] in ERROR_CODES, response.text
        if stats["requests"] % HEALTH_EVERY == 0:
            assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200, "server down"

    exchange()
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    for key, value in stats.items():
        record_property(f"openapi_{key}", value)
    return stats


def test_openapi_fuzz_fast(hostile_server, record_property):
    stats = run_openapi(hostile_server, 200, record_property)
    assert stats["requests"] >= 200


@pytest.mark.slow
def test_openapi_fuzz_full(hostile_server, record_property):
    stats = run_openapi(hostile_server, 1000, record_property)
    assert stats["requests"] >= 1000
