"""One decode path for the service, the CLI and the Python API (issue 19, items 2, 3, 8 and 10).

Wide samples (16-bit grey, 48-bit RGB, 16-bit and float masks) give the same pixels in all three interfaces,
the same as their 8-bit equivalents; a JPEG whose data ends before its declared size is refused without
decoding it at full size; 0/1 masks are refused with a sentence; LAB composites are converted, not read as RGBA.
"""

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import REPO, decode, encode, post_image, real_pair
from PIL import Image, ImageCms, ImageFile

from app import imaging
from app.errors import ApiError
from model import Harmonizer

S2CRNET = Path(sys.executable).parent / "s2crnet"


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey H×W or RGB H×W×3) written by hand: Pillow cannot save 48-bit RGB."""
    height, width = samples.shape[:2]
    colour_type = 2 if samples.ndim == 3 else 0
    rows = samples.astype(">u2").reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    data = zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def local() -> Harmonizer:
    return Harmonizer.load(device="cpu")


@pytest.fixture(scope="module")
def pair():
    return real_pair(160, 120, 2)


def _cases(pair) -> dict[str, tuple[bytes, bytes, np.ndarray, np.ndarray]]:
    """name → (composite file, mask file, the 8-bit composite and mask they stand for)."""
    composite, mask = pair
    rgb, grey, soft = np.asarray(composite), np.asarray(composite.convert("L")), np.asarray(mask)
    half = np.where(soft > 0, 128, 0).astype(np.uint8)  # 32768 of 65535 is half strength
    return {
        "16-bit grey composite": (png16(grey.astype(np.uint16) * 257), encode(mask, "PNG"),
                                  np.repeat(grey[..., None], 3, -1), soft),
        "48-bit RGB composite": (png16(rgb.astype(np.uint16) * 257), encode(mask, "PNG"), rgb, soft),
        "16-bit mask at 32768": (encode(composite, "PNG"), png16(np.where(soft > 0, 32768, 0).astype(np.uint16)),
                                 rgb, half),
    }


CASES = ["16-bit grey composite", "48-bit RGB composite", "16-bit mask at 32768"]


def _run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(S2CRNET), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", CASES)
def test_wide_samples_give_the_same_pixels_everywhere(server, local, pair, tmp_path, case):
    composite_file, mask_file, composite8, mask8 = _cases(pair)[case]
    expected = np.asarray(local.harmonize(composite8, mask8)).astype(int)
    assert expected.mean() < 250  # (the bug: an all-white output)

    served = post_image(server.url, composite_file, mask_file, fields={"format": "png"})
    assert served.status_code == 200, served.text
    (tmp_path / "c.png").write_bytes(composite_file)
    (tmp_path / "m.png").write_bytes(mask_file)
    result = _run_cli("harmonize", tmp_path / "c.png", tmp_path / "m.png", "-o", tmp_path / "out.png",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    python = local.harmonize(Image.open(tmp_path / "c.png"), Image.open(tmp_path / "m.png"))
    outputs = {"server": np.asarray(decode(served.content).convert("RGB")).astype(int),
               "cli": np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int),
               "python": np.asarray(python.convert("RGB")).astype(int)}
    for name, output in outputs.items():
        assert output.shape == expected.shape, name
        assert np.abs(output - expected).max() <= 1, f"{name}: mean {output.mean():.1f}, expected {expected.mean():.1f}"


def test_float_tiff_mask_in_unit_range_is_scaled(server, local, pair):
    composite, mask = pair
    unit = Image.fromarray(np.asarray(mask).astype(np.float32) / 255, "F")
    response = post_image(server.url, encode(composite, "PNG"), encode(unit, "TIFF"))
    assert response.status_code == 200, response.text
    served = np.asarray(decode(response.content)).astype(int)
    expected = np.asarray(local.harmonize(composite, mask)).astype(int)
    assert np.abs(served - expected).max() <= 1
    assert np.abs(served - np.asarray(composite).astype(int)).max() > 8  # it did change something


def test_eight_bit_mask_whose_top_is_one_is_refused(server, pair, local):
    composite, mask = pair
    zero_one = (np.asarray(mask) > 127).astype(np.uint8)
    response = post_image(server.url, encode(composite, "PNG"), encode(zero_one_image(zero_one), "PNG"))
    assert response.status_code == 422 and response.json()["code"] == "invalid_mask"
    assert "0–255" in response.json()["detail"]
    with pytest.raises(ValueError, match="0–255"):
        local.harmonize(composite, zero_one)


def zero_one_image(array: np.ndarray):
    return Image.fromarray(array, "L")


def test_lab_composite_is_converted_not_read_as_alpha(server, pair):
    composite, mask = pair
    lab = ImageCms.applyTransform(composite, ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"))
    response = post_image(server.url, encode(lab, "TIFF"), encode(mask, "PNG"), fields={"format": "png"})
    assert response.status_code == 200, response.text
    served = decode(response.content)
    assert served.mode == "RGB"
    outside = np.asarray(mask) == 0  # untouched background: the LAB pixels converted back to about the RGB
    difference = np.abs(np.asarray(served).astype(int) - np.asarray(composite).astype(int))[outside]
    assert difference.mean() < 4, difference.mean()


# --- a JPEG header that lies ------------------------------------------------------------------------------
def lying_jpeg(progressive: bool, side: int = 7000) -> bytes:
    """A real 64×48 JPEG whose frame header claims side×side: libjpeg would fill the rest with grey."""
    composite, _ = real_pair(64, 48, 0)
    data = bytearray(encode(composite, "JPEG", quality=90, progressive=progressive))
    at = 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in (0xC0, 0xC2):  # SOF0 / SOF2: precision, height, width
            data[at + 5:at + 9] = struct.pack(">HH", side, side)
            return bytes(data)
        at += 2 + length
    raise AssertionError("no frame header")


def _mask_png(side: int) -> bytes:
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, side // 2, side // 2))
    return encode(mask, "PNG")


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_with_a_lying_header_is_corrupt_and_cheap(server, progressive):
    process = psutil.Process(server.process.pid)
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # VmHWM := current RSS
    before = process.memory_info().rss
    response = post_image(server.url, lying_jpeg(progressive), _mask_png(7000), timeout=120)
    assert response.status_code == 400 and response.json()["code"] == "corrupt_image", response.text
    assert "truncated" in response.json()["detail"]
    high_water = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{process.pid}/status").read_text()
                      .splitlines() if line.startswith("VmHWM:"))
    # Decoded, the composite alone would be 196 MB (Pillow keeps RGB at 4 bytes a pixel). The check costs a few
    # MB for a baseline JPEG; a progressive one needs libjpeg's coefficient buffer (~147 MB at 4:2:0) whatever
    # the decoder, and the mask (49 MB) is decoded beside it.
    full_size = 7000 * 7000 * 4
    assert high_water - before < (full_size if progressive else 150 * 2**20), (high_water - before) / 2**20


def test_jpeg_with_a_lying_header_in_the_cli(tmp_path):
    (tmp_path / "c.jpg").write_bytes(lying_jpeg(False, side=2000))
    (tmp_path / "m.png").write_bytes(_mask_png(2000))
    result = _run_cli("harmonize", tmp_path / "c.jpg", tmp_path / "m.png", "-o", tmp_path / "o.jpg")
    assert result.returncode == 1 and "truncated" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.jpg").exists()


def test_truncated_data_is_never_padded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # set by app/imaging.py
    with pytest.raises(ApiError, match="truncated or corrupt"):
        imaging.decode(encode(real_pair(640, 480)[0], "PNG")[:3000], "composite", None, True)
