"""model.onnx_export and the onnx runtime (model.runtime): the exported graph checks, runs in onnxruntime and gives
the PyTorch runtime's LUTs within one level; stale, foreign and corrupt exports fail at load, naming the file."""

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import SAMPLES, real_pair, sample_names, shipped_weights_with_onnx
from PIL import Image, ImageFilter

from model import DEFAULT_WEIGHTS, Harmonizer, ModelConfig, S2CRNet, WeightsError
from model.harmonizer import save_weights
from model.iharmony import mask_stem
from model.onnx_export import export_onnx, parse_batch
from model.runtime import META_CONFIG, META_SHA256, META_THUMB, choose_runtime, sha256_of


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory) -> Path:
    """The shipped weights copied to a folder of their own, with their ONNX export beside them."""
    return shipped_weights_with_onnx(tmp_path_factory.mktemp("shipped"))


@pytest.fixture(scope="module")
def runtimes(shipped_copy) -> tuple[Harmonizer, Harmonizer]:
    return (Harmonizer.load(shipped_copy, "cpu", runtime="torch"),
            Harmonizer.load(shipped_copy, "cpu", runtime="onnx", threads=1))


def _lut_gap(a, b) -> int:
    return max(int(np.abs(x.lut().astype(int) - y.lut().astype(int)).max()) for x, y in zip(a, b, strict=True))


def _samples() -> list[tuple[Image.Image, Image.Image]]:
    """The 10 iHarmony4 samples (JPEG-drafted to ~1024 px: the thumbnails are 128² either way)."""
    pairs = []
    for name in sample_names():
        image = Image.open(SAMPLES / "composite_images" / f"{name}.jpg")
        image.draft("RGB", (1024, 1024))
        image = image.convert("RGB")
        mask = Image.open(SAMPLES / "masks" / f"{mask_stem(name)}.png").convert("L").resize(image.size)
        pairs.append((image, mask))
    return pairs


def _random_composites(count: int = 8) -> list[tuple[Image.Image, Image.Image]]:
    """Real crops at odd sizes with soft masks (blurred edges, or a gradient times the object)."""
    rng = np.random.default_rng(7)
    pairs = []
    for i in range(count):
        width, height = (int(v) for v in rng.integers(17, 700, 2) | 1)
        image, mask = real_pair(width, height, index=i)
        if i % 2:
            mask = mask.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
        else:
            ramp = Image.linear_gradient("L").resize(mask.size)
            mask = Image.fromarray((np.asarray(mask, np.uint16) * np.asarray(ramp) // 255).astype(np.uint8))
            if mask.getbbox() is None:
                mask = ramp
        pairs.append((image, mask))
    return pairs


def test_export_passes_the_checker_and_carries_its_identity(shipped_copy):
    path = shipped_copy.with_suffix(".onnx")
    onnx.checker.check_model(str(path), full_check=True)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props[META_SHA256] == sha256_of(shipped_copy)
    config = ModelConfig.from_dict(json.loads(props[META_CONFIG]))
    assert int(props[META_THUMB]) == config.thumb
    assert config == Harmonizer.load(shipped_copy, "cpu").config


@pytest.mark.parametrize("source", ["samples", "random composites"])
def test_onnx_luts_are_within_one_level_of_torch_at_batch_1_and_8(runtimes, source):
    torch_h, onnx_h = runtimes
    pairs = _samples() if source == "samples" else _random_composites()
    thumbs = [torch_h.prepare(image, mask)[2] for image, mask in pairs]
    for batch in (1, 8):
        for start in range(0, len(thumbs), batch):
            chunk = thumbs[start:start + batch]
            assert _lut_gap(torch_h.curves_from_thumbnails(chunk), onnx_h.curves_from_thumbnails(chunk)) <= 1
    # And a batch gives each image the curves it gets alone.
    together = onnx_h.curves_from_thumbnails(thumbs[:8])
    assert _lut_gap(together, [onnx_h.curves_from_thumbnails([t])[0] for t in thumbs[:8]]) <= 1


def test_harmonize_and_info_with_the_onnx_runtime(runtimes, shipped_copy):
    torch_h, onnx_h = runtimes
    image, mask = real_pair(333, 251, index=3)
    a, b = np.asarray(torch_h.harmonize(image, mask), int), np.asarray(onnx_h.harmonize(image, mask), int)
    assert np.abs(a - b).max() <= 1
    info = onnx_h.info()
    assert info["runtime"] == "onnx" and info["device"] == "cpu" and info["sha256"] == torch_h.sha256
    assert info["parameters"] == torch_h.num_parameters() and info["meta"] == torch_h.meta
    with pytest.raises(AttributeError, match="runtime='torch'"):
        onnx_h.net  # noqa: B018


def test_semantic_model_with_a_fixed_batch_export(tmp_path):
    """Categories are a graph input; a fixed batch of 3 serves 5 images (chunks, the last padded)."""
    torch.manual_seed(1)
    net = S2CRNet(ModelConfig(thumb=64, semantic=True))
    for crm in net.crms:
        torch.nn.init.normal_(crm.fg_proj.weight, std=0.5)
    for layer in net.category_embed:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=1.0)
    weights = tmp_path / "semantic.pt"
    save_weights(weights, net.eval())
    export_onnx(weights, weights.with_suffix(".onnx"), batch=parse_batch("3"))
    torch_h, onnx_h = (Harmonizer.load(weights, "cpu", runtime=r) for r in ("torch", "onnx"))
    pairs = [real_pair(97 + 10 * i, 61, index=i) for i in range(5)]
    categories = ["person", "animal", None, "sky", "water"]
    a = torch_h.predict_curves(*zip(*pairs, strict=True), categories)
    b = onnx_h.predict_curves(*zip(*pairs, strict=True), categories)
    assert _lut_gap(a, b) <= 1
    assert len({c.lut().tobytes() for c in b}) > 1  # the categories (and images) really change the curves


def test_batch_flag_is_checked():
    assert parse_batch("dynamic") == 0 and parse_batch("8") == 8
    for bad in ("0", "-2", "eight"):
        with pytest.raises(ValueError, match="dynamic"):
            parse_batch(bad)


def test_stale_foreign_and_corrupt_exports_fail_at_load_naming_the_file(shipped_copy, tmp_path):
    export = shipped_copy.with_suffix(".onnx")
    # Other weights (the same network, one bias changed) beside an export of the shipped ones: sha256 mismatch.
    other = tmp_path / "other.pt"
    checkpoint = torch.load(shipped_copy, weights_only=True)
    name = next(k for k in checkpoint["model"] if k.endswith("bias"))
    checkpoint["model"][name] = checkpoint["model"][name] + 1
    torch.save(checkpoint, other)
    shutil.copyfile(export, other.with_suffix(".onnx"))
    with pytest.raises(WeightsError, match="sha256") as caught:
        Harmonizer.load(other, "cpu", runtime="onnx")
    assert str(other.with_suffix(".onnx")) in str(caught.value)
    # Metadata that claims another thumb size than the graph takes.
    model = onnx.load(str(export))
    for prop in model.metadata_props:
        if prop.key == META_THUMB:
            prop.value = "256"
    wrong_thumb = tmp_path / "thumb.onnx"
    onnx.save(model, str(wrong_thumb))
    with pytest.raises(WeightsError, match="thumb size") as caught:
        Harmonizer.load(wrong_thumb, "cpu", runtime="onnx")
    assert str(wrong_thumb) in str(caught.value)
    # Corrupt and truncated files, and an ONNX model that is not ours.
    corrupt, truncated, foreign = tmp_path / "corrupt.onnx", tmp_path / "truncated.onnx", tmp_path / "foreign.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated.write_bytes(export.read_bytes()[:100_000])
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    for path, words in ((corrupt, "not a valid ONNX"), (truncated, "not a valid ONNX"), (foreign, "not an S2CRNet")):
        with pytest.raises(WeightsError, match=words) as caught:
            Harmonizer.load(path, "cpu", runtime="auto")
        assert str(path) in str(caught.value)


def test_auto_runtime_picks_onnx_only_where_the_export_is(shipped_copy, tmp_path):
    assert choose_runtime("auto", "cpu", shipped_copy) == "onnx"
    assert choose_runtime("auto", "cuda", shipped_copy) == "torch"
    assert choose_runtime("auto", "cpu", tmp_path / "no-export-here.pt") == "torch"
    assert choose_runtime("torch", "cpu", shipped_copy) == "torch"
    assert choose_runtime("auto", "cpu", shipped_copy.with_suffix(".onnx")) == "onnx"
    with pytest.raises(ValueError, match="runtime must be"):
        choose_runtime("tensorrt", "cpu", shipped_copy)
    with pytest.raises(ValueError, match="PyTorch weights"):
        choose_runtime("torch", "cpu", shipped_copy.with_suffix(".onnx"))


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_the_export_has_a_normal_files_mode(tmp_path, umask, mode):
    """Not mkstemp's 0600: a service running as another user must be able to read what `s2crnet export` wrote."""
    old = os.umask(umask)
    try:
        out = export_onnx(DEFAULT_WEIGHTS, tmp_path / "model.onnx", None)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
