"""Masks without painting on the command line, `s2crnet` run for real with the real U²-Netp: `s2crnet mask`,
`harmonize --mask auto` (one composite, a folder with --boxes), a plain-photo --foreground, and their errors."""

import numpy as np
import pytest
from helpers import PHOTOS, REAL_VAL, encode, real_pair
from PIL import Image
from test_cli import assert_one_error_line, run_cli, summary_counts

from model import Harmonizer
from model.iharmony import mask_stem
from model.segmentation import Segmenter

NAME = "f1881_1_2"


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
    """A real val composite (PNG: the CLI and this test decode it alike), its true box and mask."""
    folder = tmp_path_factory.mktemp("masks")
    image = Image.open(REAL_VAL / "composite_images" / f"{NAME}.jpg").convert("RGB")
    image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    truth = np.asarray(Image.open(REAL_VAL / "masks" / f"{mask_stem(NAME)}.png").convert("L").resize(image.size)) > 127
    ys, xs = np.nonzero(truth)
    path = folder / "comp.png"
    image.save(path)
    return path, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), truth


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.load()


@pytest.fixture(scope="module")
def harmonizer(segmenter) -> Harmonizer:
    h = Harmonizer.load(device="cpu")
    h.segmenter = segmenter
    return h


def _box(box) -> str:
    return ",".join(map(str, box))


def test_mask_writes_the_found_mask(tmp_path, composite, segmenter):
    path, box, truth = composite
    result = run_cli("mask", path, "-o", tmp_path / "mask.png", "--box", _box(box))
    assert result.returncode == 0, result.stderr
    written = Image.open(tmp_path / "mask.png")
    assert written.mode == "L" and written.size == (truth.shape[1], truth.shape[0])
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(written), np.asarray(segmenter.mask(image.convert("RGB"), box)))
    found = np.asarray(written) > 127
    assert (found & truth).sum() / (found | truth).sum() > 0.9


def test_harmonize_with_mask_auto_is_harmonize_with_the_found_mask(tmp_path, composite, harmonizer):
    path, box, _ = composite
    result = run_cli("harmonize", path, "--mask", "auto", "--box", _box(box), "-o", tmp_path / "out.png",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    with Image.open(path) as image:
        expected = harmonizer.harmonize(image.convert("RGB"), mask="auto", box=box)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))


def test_folder_mode_with_mask_auto_takes_boxes_from_a_manifest(tmp_path, composite, harmonizer):
    path, box, _ = composite
    folder = tmp_path / "comps"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(path.read_bytes())
    (folder / "sub" / "b.png").write_bytes(path.read_bytes())
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f'composite,box\nsub/b.png,"{_box(box)}"\n')
    out = tmp_path / "out"
    result = run_cli("harmonize", "--composites", folder, "--mask", "auto", "--boxes", boxes, "-o", out, "-r",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert summary_counts(result) == (2, 0, 0, 0)
    with Image.open(path) as image:
        image = image.convert("RGB")
        boxed = np.asarray(harmonizer.harmonize(image, mask="auto", box=box))
        whole = np.asarray(harmonizer.harmonize(image, mask="auto"))
    assert np.array_equal(np.asarray(Image.open(out / "sub" / "b.png")), boxed)
    assert np.array_equal(np.asarray(Image.open(out / "a.png")), whole)  # not in --boxes: the whole image


def test_a_plain_photo_foreground_is_cut_out(tmp_path, harmonizer):
    photo = Image.open(PHOTOS / "bsds" / "images" / "100075.jpg").convert("RGB")
    background = real_pair(640, 480, index=2)[0]
    (tmp_path / "photo.png").write_bytes(encode(photo, "PNG"))
    (tmp_path / "bg.png").write_bytes(encode(background, "PNG"))
    result = run_cli("harmonize", "--foreground", tmp_path / "photo.png", "--background", tmp_path / "bg.png",
                     "--at", "40,30", "-o", tmp_path / "out.png", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "photo.png has no alpha: its subject was cut out automatically" in result.stderr
    expected = harmonizer.harmonize(foreground=photo, background=background, at=(40, 30))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))


@pytest.mark.parametrize("args, words", [
    (["mask", "{comp}", "-o", "{tmp}/m.png", "--box", "5000,5000,6000,6000"], "--box: 5000,5000,6000,6000 lies "
                                                                              "outside"),
    (["mask", "{flat}", "-o", "{tmp}/m.png"], "no object found in the image"),
    (["harmonize", "{flat}", "--mask", "auto", "-o", "{tmp}/o.png"], "no object found"),
    (["harmonize", "{comp}", "{comp}", "--mask", "auto", "-o", "{tmp}/o.png"], "give no MASK file"),
    (["harmonize", "--composites", "{tmp}", "--mask", "auto", "--box", "1,1,9,9", "-o", "{tmp}/o"], "--boxes CSV"),
    (["harmonize", "{comp}", "--mask", "auto", "--boxes", "{tmp}/b.csv", "-o", "{tmp}/o.png"], "folder mode"),
    (["harmonize", "{comp}", "--mask", "auto", "--scale", "2", "-o", "{tmp}/o.png"], "--scale: layer input only"),
])
def test_mistakes_are_one_line(tmp_path, composite, args, words):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 150), (128, 128, 128)).save(flat)
    filled = [a.format(comp=composite[0], flat=flat, tmp=tmp_path) for a in args]
    assert_one_error_line(run_cli(*filled, "--device", "cpu") if filled[0] == "harmonize" else run_cli(*filled),
                          words)


def test_harmonize_video_with_mask_auto(tmp_path):
    from helpers import make_clip, video_frames

    video, mask, masks, _ = make_clip(tmp_path, count=8, size=(320, 192), audio=False)
    ys, xs = np.nonzero(masks[0] > 127)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    result = run_cli("harmonize-video", video, "--mask", "auto", "--box", _box(box), "--mask-every", "3",
                     "-o", tmp_path / "out.mp4", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("8 frames") and len(video_frames(tmp_path / "out.mp4")) == 8
    assert_one_error_line(run_cli("harmonize-video", video, "--mask", mask, "--box", _box(box), "-o",
                                  tmp_path / "o.mp4"), "--box goes with INPUT --mask auto")
