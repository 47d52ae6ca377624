"""app/pipeline.py's overlapped path: a JPEG's thumbnails come from a reduced decode while the full-size pixels
decode on another worker. Its curves stay within 2 levels of Harmonizer.prepare's (the CLI, the Python API,
training and evaluation) on real photos; EXIF orientation, ICC profiles and the stage timings hold."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import DATA, decode, encode, exif_bytes, post_image, real_pair
from PIL import Image, ImageCms

from app import imaging
from app.pipeline import MAX_REDUCED_SCALE, _thumbnails_from_reduced
from model import Harmonizer
from model.iharmony import mask_stem
from model.thumbnails import reduced_scale

# How far the curves from a reduced decode's thumbnails may differ from those of a full decode, in 8-bit levels:
# the shipped weights reach 3 on the 28 real composites (bench/thumbnail_luts.py) and 5 on the generated pair below.
REDUCED_LUT_LEVELS = 5
REAL = [("iharmony4_samples", "a3815_1_3"), ("iharmony4_samples", "f1380_1_1"), ("iharmony4_val", "a0727_1_4"),
        ("iharmony4_val", "a1073_1_5"), ("iharmony4_val", "d90000014-10_1_9")]  # their largest differences


@pytest.fixture(scope="module")
def harmonizer() -> Harmonizer:
    return Harmonizer.load(device="cpu")


def _luts(harmonizer: Harmonizer, data: bytes, mask: imaging.Decoded) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(prepare's LUT, the service's reduced-decode LUT, the size the reduced decode gave)."""
    _, _, thumbs = harmonizer.prepare(imaging.decode(data, "composite", None, True).image, mask.image)
    opened = imaging.open_image(data, "composite", None)
    reduced = imaging.decode_reduced(opened, "composite", reduced_scale(opened.size, None, harmonizer.config.thumb))
    _, fast = _thumbnails_from_reduced(SimpleNamespace(harmonizer=harmonizer), opened, reduced, mask)
    full, quick = harmonizer.curves_from_thumbnails([thumbs, fast])
    return full.lut().astype(int), quick.lut().astype(int), reduced.image.size


@pytest.mark.parametrize(("folder", "name"), REAL)
def test_reduced_decode_curves_stay_close_on_real_composites(harmonizer, folder, name):
    data = (DATA / folder / "composite_images" / f"{name}.jpg").read_bytes()
    mask = imaging.decode(str(DATA / folder / "masks" / f"{mask_stem(name)}.png"), "mask", None, False)
    full, quick, _ = _luts(harmonizer, data, mask)
    assert np.abs(full - quick).max() <= REDUCED_LUT_LEVELS


def test_a_small_object_is_read_again_finer(harmonizer):
    """A mask box that the whole-image scale would shrink under one thumbnail is decoded again, finer."""
    image = real_pair(2400, 1800, 2)[0]
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (1500, 700, 1700, 860))  # 200×160: at the first scale (1/8) 25×20 pixels
    data = encode(image, "JPEG", quality=90)
    opened = imaging.open_image(data, "composite", None)
    assert reduced_scale(opened.size, None, 128) <= 1 / 7 and reduced_scale(opened.size, mask.getbbox(), 128) > 0.6
    full, quick, _ = _luts(harmonizer, data, imaging.Decoded(mask, None, None))
    assert np.abs(full - quick).max() <= REDUCED_LUT_LEVELS


def test_overlapped_request_keeps_orientation_icc_and_reports_its_stages(server, harmonizer):
    """A 1024×768 JPEG (reduced to 1/4 for its thumbnails) turned by EXIF, with an sRGB profile."""
    stored, stored_mask = (im.transpose(Image.Transpose.ROTATE_90) for im in real_pair(1024, 768, 1))
    assert reduced_scale(stored.size, None, harmonizer.config.thumb) <= MAX_REDUCED_SCALE
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    composite = encode(stored, "JPEG", quality=90, exif=exif_bytes(6), icc_profile=srgb)
    mask = encode(stored_mask, "PNG", exif=exif_bytes(6))
    response = post_image(server.url, composite, mask)
    assert response.status_code == 200, response.text
    out = decode(response.content)
    assert out.size == (1024, 768) and out.info.get("icc_profile") == srgb
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
    stages = {"decode", "thumbnail", "queue", "infer", "decode_full", "render", "encode", "critical", "total"}
    assert stages <= set(timing)  # decode_full: the reduced path was taken
    assert float(timing["critical"]) <= float(timing["total"])
    curves = post_image(server.url, composite, mask, endpoint="/curves").json()
    upright = imaging.decode(composite, "composite", None, True).image
    expected = harmonizer.predict_curves([upright], [imaging.decode(mask, "mask", None, False).image])[0].lut()
    assert np.abs(np.array([curves[c] for c in "rgb"]) - expected.astype(int)).max() <= REDUCED_LUT_LEVELS
