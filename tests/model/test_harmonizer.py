"""model.harmonizer and model.thumbnails: the API every other part uses, on real photos.

Nothing here assumes what the shipped weights predict (trained ones will replace them): where curves must
differ between images or categories, the test makes its own weights with a livelier random head.
"""

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, photo_pair, real_pair
from PIL import Image

from model import DEFAULT_WEIGHTS, Harmonizer, ModelConfig, S2CRNet, WeightsError, count_parameters
from model.curves import render
from model.harmonizer import resolve_device, save_weights, to_pil_pair
from model.thumbnails import THUMB_CHANNELS, make_thumbnails


@pytest.fixture(scope="module")
def shipped() -> Harmonizer:
    return Harmonizer.load(device="cpu")


def lively_net(config: ModelConfig, seed: int = 0) -> S2CRNet:
    """An untrained network whose curves clearly depend on the input (and category) and whose batch-norm
    running statistics are not the defaults, so a save/load that lost anything would show."""
    torch.manual_seed(seed)
    net = S2CRNet(config)
    for crm in net.crms:
        torch.nn.init.normal_(crm.bg_proj.weight, std=0.05)
        torch.nn.init.normal_(crm.fg_proj.weight, std=0.05)
        if crm.mlp is not None:
            torch.nn.init.normal_(crm.mlp[-1].weight, std=0.05)
    net.train()
    with torch.no_grad():
        net.forward_features(torch.rand(4, THUMB_CHANNELS, config.thumb, config.thumb))  # moves running stats
    return net.eval()


@pytest.fixture(scope="module")
def lively(tmp_path_factory) -> tuple[Harmonizer, Path]:
    """A semantic model with lively weights, saved to a file and loaded back through Harmonizer.load."""
    path = tmp_path_factory.mktemp("weights") / "lively.pt"
    save_weights(path, lively_net(ModelConfig(thumb=64, semantic=True)), meta={"note": "test"})
    return Harmonizer.load(path, device="cpu"), path


# --- loading -------------------------------------------------------------------------------------------
def test_shipped_weights_load_and_describe_themselves(shipped):
    info = shipped.info()
    for key in ("backbone", "thumb", "pieces", "stages", "semantic", "categories", "norm", "color_stats",
                "parameters", "device", "weights", "sha256", "meta"):
        assert key in info
    assert info["parameters"] == count_parameters(shipped.net) == shipped.num_parameters()
    assert info["sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert info["weights"] == str(DEFAULT_WEIGHTS) and info["device"] == "cpu"
    assert "unknown" in shipped.config.categories
    json.dumps(info)  # plain types only: the service returns it as JSON


def test_save_load_round_trip_is_bit_identical(lively):
    loaded, path = lively
    original = Harmonizer(lively_net(ModelConfig(thumb=64, semantic=True)), torch.device("cpu"))
    assert loaded.config == original.config and loaded.meta == {"note": "test"}
    for a, b in zip(loaded.net.state_dict().values(), original.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    image, mask = real_pair(160, 120)
    for category in (None, "person", "sky"):
        (ours,), (theirs,) = (h.predict_curves([image], [mask], [category]) for h in (loaded, original))
        assert np.array_equal(ours.knots, theirs.knots)
        assert np.array_equal(np.asarray(loaded.harmonize(image, mask, category)),
                              np.asarray(original.harmonize(image, mask, category)))


def test_load_uses_weights_only(lively, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Harmonizer.load(lively[1], device="cpu")
    assert calls and all(kwargs.get("weights_only") is True for kwargs in calls)


class _TouchOnUnpickle:
    """A pickle payload: unpickling it calls Path.touch, the way a malicious file would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    net = S2CRNet(ModelConfig(thumb=64))
    payload = _TouchOnUnpickle(marker)
    torch.save({"config": net.config.to_dict(), "model": net.state_dict(), "meta": payload}, path)
    with pytest.raises(WeightsError, match=str(path)):
        Harmonizer.load(path, device="cpu")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proof that the payload is live: a plain unpickle runs it
    assert marker.exists()


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    good = DEFAULT_WEIGHTS.read_bytes()
    files = {"empty": b"", "random bytes": np.random.default_rng(0).bytes(4096),
             "truncated": good[: len(good) // 2], "text": b'{"config": {}}'}
    paths = {name: tmp_path / f"{name.replace(' ', '_')}.pt" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    net = S2CRNet(ModelConfig(thumb=64))
    paths["unknown config key"] = tmp_path / "extra_key.pt"
    torch.save({"config": {**net.config.to_dict(), "dropout": 0.5}, "model": net.state_dict()},
               paths["unknown config key"])
    paths["weights of another model"] = tmp_path / "mismatch.pt"
    torch.save({"config": ModelConfig(backbone="vgg16").to_dict(), "model": net.state_dict()},
               paths["weights of another model"])
    paths["not a dict"] = tmp_path / "list.pt"
    torch.save([1, 2, 3], paths["not a dict"])
    paths["missing"] = tmp_path / "no-such-file.pt"
    paths["a directory"] = tmp_path
    return paths


def test_bad_weights_files_give_weights_error_naming_the_path(tmp_path):
    for name, path in _corrupt_files(tmp_path).items():
        with pytest.raises(WeightsError) as caught:
            Harmonizer.load(path, device="cpu")
        assert str(path) in str(caught.value), name


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Harmonizer.load(device="cuda")


# --- harmonize -----------------------------------------------------------------------------------------
def test_harmonize_changes_only_the_masked_pixels(shipped):
    """Any weights: mask 0 keeps the pixel, mask 255 gives exactly the curve's LUT value."""
    image, mask = real_pair(403, 301, index=2)
    (curves,) = shipped.predict_curves([image], [mask])
    lut = curves.lut()
    before, weights = np.asarray(image).copy(), np.asarray(mask)
    out = shipped.harmonize(image, mask)
    assert isinstance(out, Image.Image) and out.size == image.size and out.mode == "RGB"
    assert np.array_equal(np.asarray(image), before)  # the caller's image is untouched
    result = np.asarray(out)
    outside, inside = weights == 0, weights == 255
    assert np.array_equal(result[outside], before[outside])
    assert np.array_equal(result[inside], np.stack([lut[c][before[..., c]] for c in range(3)], -1)[inside])


def test_harmonize_numpy_in_numpy_out(lively):
    h = lively[0]
    image, mask = photo_pair(3)
    rgb, weights = np.asarray(image), np.asarray(mask)
    out = h.harmonize(rgb, weights, "animal")
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.array_equal(out, np.asarray(h.harmonize(image, mask, "animal")))
    # Float [0, 1] and bool inputs are accepted the same way.
    as_float = h.harmonize(rgb.astype(np.float32) / 255, weights > 127)
    assert as_float.shape == rgb.shape and as_float.dtype == np.uint8


def test_rgba_keeps_its_alpha_and_grayscale_comes_back_rgb(lively):
    h = lively[0]
    image, mask = real_pair(97, 61, index=1)
    rgb = np.asarray(image)
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    rgba = np.dstack([rgb, alpha])
    out = h.harmonize(rgba, np.asarray(mask))
    assert out.shape == rgba.shape and np.array_equal(out[..., 3], alpha)
    assert np.array_equal(out[..., :3], h.harmonize(rgb, np.asarray(mask)))  # alpha does not sway the curves
    pil_out = h.harmonize(Image.fromarray(rgba, "RGBA"), mask)
    assert pil_out.mode == "RGBA" and np.array_equal(np.asarray(pil_out), out)

    gray = np.asarray(image.convert("L"))
    for gray_in in (gray, Image.fromarray(gray, "L")):
        out = np.asarray(h.harmonize(gray_in, mask))
        assert out.shape == (*gray.shape, 3)
        outside = np.asarray(mask) == 0
        assert all(np.array_equal(out[..., c][outside], gray[outside]) for c in range(3))


def test_batch_of_mixed_sizes_equals_one_by_one(lively, monkeypatch):
    h = lively[0]
    pairs = [real_pair(320, 240, 0), real_pair(57, 203, 1), real_pair(1, 40, 2), real_pair(640, 480, 3),
             photo_pair(5)]
    categories = ["person", None, "sky", "unknown", "animal"]
    forward_calls = []
    forward_features = h.inference_net.forward_features

    def counting(thumbs):
        forward_calls.append(len(thumbs))
        return forward_features(thumbs)

    monkeypatch.setattr(h.inference_net, "forward_features", counting)
    batched = h.predict_curves([p[0] for p in pairs], [p[1] for p in pairs], categories)
    assert forward_calls == [len(pairs)]  # one forward pass for the whole batch
    single = [h.predict_curves([im], [mask], [c])[0] for (im, mask), c in zip(pairs, categories, strict=True)]
    for b, s in zip(batched, single, strict=True):
        assert b.knots.shape == (h.config.stages, 3, h.config.pieces + 1)
        assert np.allclose(b.knots, s.knots, atol=1e-5)
        assert np.abs(b.lut().astype(int) - s.lut()).max() <= 1
    assert not np.allclose(batched[0].knots, batched[1].knots, atol=1e-3)  # the images got their own curves


def test_concurrent_harmonize_matches_sequential(lively):
    h = lively[0]
    pairs = [real_pair(200 + 13 * i, 150, i) for i in range(4)]
    expected = [np.asarray(h.harmonize(image, mask)) for image, mask in pairs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = np.asarray(h.harmonize(*pairs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(np.array_equal(results[i], expected[i]) for i in range(len(pairs)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_render_equals_pillow_render_in_place():
    h = Harmonizer.load(device="cuda")
    image, mask = real_pair(1536, 1024)
    (curves,) = h.predict_curves([image], [mask])
    on_cpu = render(image.copy(), mask, curves.lut())
    target = image.copy()
    assert h.render(target, mask, curves) is target
    assert np.array_equal(np.asarray(target), np.asarray(on_cpu))


# --- bad input -----------------------------------------------------------------------------------------
def _bad_inputs():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 255
    nan_image = rgb.astype(np.float32) / 255
    nan_image[3, 4, 1] = np.nan
    inf_mask = mask.astype(np.float64) / 255
    inf_mask[0, 0] = np.inf
    return [
        ("mask size", rgb, mask[:, :29], None, "differs from image size"),
        ("empty mask", rgb, np.zeros_like(mask), None, "selects nothing"),
        ("all foreground", rgb, np.full_like(mask, 255), None, "whole image"),
        ("NaN image", nan_image, mask, None, "NaN or infinite"),
        ("inf mask", rgb, inf_mask, None, "NaN or infinite"),
        ("float out of range", rgb.astype(np.float32), mask, None, r"\[0, 1\]"),
        ("int64 image", rgb.astype(np.int64), mask, None, "dtype"),
        ("complex mask", rgb, mask.astype(np.complex64), None, "dtype"),
        ("strings", np.full((20, 30, 3), "a"), mask, None, "dtype"),
        ("2 channels", rgb[..., :2], mask, None, "shape"),
        ("5 channels", np.dstack([rgb, rgb[..., :2]]), mask, None, "shape"),
        ("4-D image", rgb[None], mask, None, "shape"),
        ("1-D image", rgb[0, :, 0], mask, None, "shape"),
        ("2-channel mask", rgb, np.dstack([mask, mask]), None, "shape"),
        ("empty image", rgb[:0], mask[:0], None, "empty"),
        ("unknown category", rgb, mask, "dragon", "unknown category 'dragon'"),
    ]


@pytest.mark.parametrize(("image", "mask", "category", "message"),
                         [case[1:] for case in _bad_inputs()], ids=[case[0] for case in _bad_inputs()])
def test_bad_input_is_a_clear_value_error(shipped, image, mask, category, message):
    with pytest.raises(ValueError, match=message):
        shipped.harmonize(image, mask, category)
    with pytest.raises(ValueError, match=message):
        shipped.predict_curves([image], [mask], [category])


def test_mismatched_batch_lengths_are_value_errors(shipped):
    image, mask = real_pair(64, 48)
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        shipped.predict_curves([image, image], [mask])
    with pytest.raises(ValueError, match="2 categories for 1 images"):
        shipped.predict_curves([image], [mask], ["person", "sky"])
    assert shipped.predict_curves([], []) == []


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I",
                                  "I;16", "I;16B", "F", "La", "RGBa"])
def test_every_pillow_mode_is_converted_or_refused(shipped, mode):
    mask = Image.new("L", (8, 6), 0)
    mask.paste(255, (0, 0, 4, 6))
    other = Image.new(mode, (8, 6))
    for image, mask_in in ((other, mask), (Image.new("RGB", (8, 6)), other)):
        try:
            out = shipped.harmonize(image, mask_in)
        except ValueError as e:
            assert str(e)
        else:
            assert out.mode in ("RGB", "RGBA") and out.size == (8, 6)


def test_tiny_images_work(shipped):
    for shape, mask in (((1, 2), [[255, 0]]), ((2, 1), [[0], [128]])):
        image = np.arange(np.prod(shape) * 3, dtype=np.uint8).reshape(*shape, 3)
        out = shipped.harmonize(image, np.array(mask, np.uint8))
        assert out.shape == (*shape, 3) and out.dtype == np.uint8


def test_pil_masks_of_other_modes(shipped):
    image, mask = real_pair(80, 60)
    expected = np.asarray(mask)
    rgba_alpha = Image.new("RGBA", mask.size, (0, 0, 0, 0))
    rgba_alpha.putalpha(mask)
    for other in (mask.convert("RGB"), rgba_alpha, mask.point(lambda v: 255 * (v > 127), "1")):
        _, normalised = to_pil_pair(image, other)
        assert normalised.mode == "L" and np.array_equal(np.asarray(normalised) > 127, expected > 127)


# --- thumbnails ----------------------------------------------------------------------------------------
def test_thumbnails_hold_the_crop_and_the_whole_image():
    image, mask = real_pair(300, 200)
    box = (40, 30, 160, 110)
    rect = Image.new("L", image.size, 0)
    rect.paste(255, box)
    thumbs = make_thumbnails(image, rect, 64)
    assert thumbs.shape == (THUMB_CHANNELS, 64, 64) and thumbs.dtype == torch.float32
    assert thumbs.min() >= 0 and thumbs.max() <= 1
    # The mask fills its own bounding box (the resize filter reaches one pixel beyond the box at the edges).
    assert torch.equal(thumbs[3, 1:-1, 1:-1], torch.ones(62, 62)) and thumbs[3].min() > 0.5
    crop_mean = np.asarray(image.crop(box)).reshape(-1, 3).mean(0) / 255
    whole_mean = np.asarray(image).reshape(-1, 3).mean(0) / 255
    assert np.allclose(thumbs[0:3].mean((1, 2)).numpy(), crop_mean, atol=0.02)
    assert np.allclose(thumbs[4:7].mean((1, 2)).numpy(), whole_mean, atol=0.02)
    assert abs(thumbs[7].mean().item() - (120 * 80) / (300 * 200)) < 0.02
    with pytest.raises(ValueError, match="selects nothing"):
        make_thumbnails(image, Image.new("L", image.size, 0), 64)


def test_rgba_thumbnails_equal_rgb_thumbnails():
    image, mask = real_pair(513, 257, index=4)
    rgba = image.copy()
    rgba.putalpha(Image.fromarray(np.random.default_rng(0).integers(0, 256, (257, 513), dtype=np.uint8)))
    assert torch.equal(make_thumbnails(rgba, mask, 128), make_thumbnails(image, mask, 128))


_MEMORY_PROBE = r"""
import json, sys, tracemalloc
from pathlib import Path
import numpy as np
from PIL import Image
from model.thumbnails import make_thumbnails

def status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

side = 8192
results = {}
for mode in ("RGB", "RGBA"):
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, len(mode)), dtype=np.uint8)
    image = Image.fromarray(noise, mode).resize((side, side), Image.Resampling.NEAREST)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (1000, 2000, 5000, 7000))
    before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark VmHWM to the current RSS
    tracemalloc.start()
    thumbs = make_thumbnails(image, mask, 128)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results[mode] = {"extra": status("VmHWM") - before, "traced": traced, "shape": list(thumbs.shape)}
    del image, mask
sys.stdout.write(json.dumps(results))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc for peak memory")
def test_thumbnails_of_an_8192_image_need_no_full_size_copy():
    """Peak memory of make_thumbnails on an 8192² image, in a fresh process: well under half the image
    (Pillow holds 4 bytes per pixel: 256 MiB), where one float32 copy would be 768 MiB."""
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    image_bytes = 8192 * 8192 * 4
    for mode, result in json.loads(done.stdout).items():
        assert result["shape"] == [THUMB_CHANNELS, 128, 128]
        assert result["extra"] < 0.5 * image_bytes, (mode, result)
        assert result["traced"] < 0.02 * image_bytes, (mode, result)  # numpy/Python: thumbnails only
