"""model.curves: the curve formula, the differentiable tensor path, the 8-bit LUT render and .cube export.

The two render paths are compared on random images and masks (binary and soft) of odd sizes, RGB, RGBA and
grayscale: the float tensor path (training) and LUT + Pillow (serving) must agree within 1/255, and the tensor
LUT render (the GPU path, run here on the CPU) must equal Pillow's render exactly.
"""

import zlib

import numpy as np
import pytest
import torch
from helpers import real_pair
from PIL import Image

from model.curves import (
    MAX_LOG_SLOPE,
    RENDER_STRIP_PIXELS,
    RENDER_TILE,
    Curves,
    apply_curve,
    apply_curves,
    curve_knots,
    render,
    render_tensor,
)

SIZES = [(1, 1), (1, 7), (7, 1), (13, 17), (33, 64), (101, 3)]  # (height, width)


def random_knots(rng: np.random.Generator, stages: int, pieces: int = 64, scale: float = 1.0) -> torch.Tensor:
    """(1, stages, 3, pieces + 1) knots from random log-slopes: clearly non-identity curves."""
    return curve_knots(torch.from_numpy(rng.normal(0, scale, (1, stages, 3, pieces))).float())


def random_mask(rng: np.random.Generator, shape: tuple[int, int], soft: bool) -> np.ndarray:
    if soft:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return (rng.random(shape) < 0.5).astype(np.uint8) * 255


def tensor_path(rgb: np.ndarray, mask: np.ndarray, knots: torch.Tensor) -> np.ndarray:
    """The training path on float32: (H, W, 3) + (H, W) uint8 → the last stage as floats in [0, 255]."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255  # 1, 3, H, W
    m = torch.from_numpy(mask)[None, None].float() / 255  # 1, 1, H, W
    out = apply_curves(x, m, knots)[-1]
    return out[0].permute(1, 2, 0).numpy() * 255


# --- the curve itself ------------------------------------------------------------------------------------
def test_identity_parameters_give_the_identity():
    knots = curve_knots(torch.zeros(2, 3, 3, 64))  # equal weights: the straight line
    assert torch.allclose(knots, torch.linspace(0, 1, 65).expand_as(knots), atol=1e-6)
    x = torch.rand(2, 3, 9, 11)
    for out in apply_curves(x, torch.rand(2, 1, 9, 11), knots):
        assert torch.allclose(out, x, atol=1e-6)
    curves = Curves(knots[0].double().numpy())
    assert np.array_equal(curves.lut(), np.tile(np.arange(256, dtype=np.uint8), (3, 1)))

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    mask = random_mask(rng, (23, 31), soft=True)
    out = render(Image.fromarray(image.copy()), Image.fromarray(mask), curves.lut())
    assert np.array_equal(np.asarray(out), image)


@pytest.mark.parametrize("scale", [0.5, 3.0, 100.0])  # 100: far beyond the clamp, still a valid curve
def test_curves_start_at_0_end_at_1_and_rise(scale):
    rng = np.random.default_rng(2)
    knots = random_knots(rng, stages=3, scale=scale)
    assert torch.isfinite(knots).all()
    assert (knots[..., 0] == 0).all() and (knots[..., -1] == 1).all()
    assert (knots.diff(dim=-1) > 0).all()  # positive weights: strictly increasing knots

    curves = Curves(knots[0].double().numpy())
    ends = curves.evaluate(np.array([0.0, 1.0]))
    assert np.allclose(ends[:, 0], 0) and np.allclose(ends[:, 1], 1)
    lut = curves.lut().astype(int)
    assert (lut[:, 0] == 0).all() and (lut[:, -1] == 255).all() and (np.diff(lut, axis=1) >= 0).all()


def test_log_slopes_are_bounded_so_the_normaliser_never_vanishes():
    knots = curve_knots(torch.tensor([[-1e4] * 63 + [1e4]]))
    smallest_step = knots.diff(dim=-1).min().item()
    assert smallest_step >= np.exp(-2 * MAX_LOG_SLOPE) / 64 * 0.99


def test_tensor_curve_matches_the_paper_formula():
    """y(x) = (L / Σp) · Σ_i clamp(x − i/L, 0, 1/L) · p_i, with p = exp(clamped log-slopes)."""
    pieces = 16
    log_slopes = torch.randn(2, 3, pieces, dtype=torch.float64)
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])
    p = log_slopes.clamp(-MAX_LOG_SLOPE, MAX_LOG_SLOPE).exp()  # B, 3, L
    starts = torch.arange(pieces, dtype=torch.float64) / pieces
    segments = (x[..., None] - starts).clamp(0, 1 / pieces)  # B, 3, H, W, L
    expected = pieces / p.sum(-1)[..., None, None] * (segments * p[:, :, None, None, :]).sum(-1)
    assert torch.allclose(apply_curve(x, curve_knots(log_slopes)), expected, atol=1e-12)


def test_apply_curves_returns_every_cascade_stage():
    rng = np.random.default_rng(3)
    knots = random_knots(rng, stages=3).double()
    x = torch.rand(1, 3, 6, 5, dtype=torch.float64)
    mask = torch.rand(1, 1, 6, 5, dtype=torch.float64)
    outputs = apply_curves(x, mask, knots)
    assert len(outputs) == 3
    curved = x
    for stage, out in enumerate(outputs):
        curved = apply_curve(curved, knots[:, stage])
        assert torch.allclose(out, x + mask * (curved - x), atol=1e-12)
    # The numpy evaluation behind the LUT composes the stages the same way.
    levels = torch.linspace(0, 1, 256, dtype=torch.float64).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    cascaded = levels
    for stage in range(3):
        cascaded = apply_curve(cascaded, knots[:, stage])
    assert np.allclose(Curves(knots[0].numpy()).evaluate(np.linspace(0, 1, 256)), cascaded[0, :, 0].numpy())


def test_strength_applies_part_of_the_change_on_both_paths():
    rng = np.random.default_rng(4)
    knots = random_knots(rng, stages=2).double()
    x = torch.rand(1, 3, 6, 5, dtype=torch.float64)
    mask = torch.rand(1, 1, 6, 5, dtype=torch.float64)
    full, part = apply_curves(x, mask, knots)[-1], apply_curves(x, mask, knots, strength=0.6)[-1]
    assert torch.allclose(part - x, 0.6 * (full - x), atol=1e-12)
    levels = np.linspace(0, 1, 256)
    full_lut, part_lut = Curves(knots[0].numpy()).evaluate(levels), Curves(knots[0].numpy(), 0.6).evaluate(levels)
    assert np.allclose(part_lut - levels, 0.6 * (full_lut - levels))
    assert np.all(np.diff(part_lut) >= 0) and np.allclose(part_lut[:, [0, -1]], [0, 1])  # still a curve
    assert np.abs(full_lut - levels).max() > 0.05  # the curves do change colours, so the check means something


# --- LUT path ≡ tensor path --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("soft", [False, True])
def test_lut_render_matches_tensor_path(size, mode, soft):
    rng = np.random.default_rng(zlib.crc32(repr((size, mode, soft)).encode()))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
    source = pixels[..., 0] if mode == "L" else pixels
    mask = random_mask(rng, size, soft)
    if mode == "L":  # grayscale is rendered as RGB with three equal channels
        image = Image.fromarray(source, "L").convert("RGB")
    else:
        image = Image.fromarray(source.copy(), mode)
    before = np.asarray(image).copy()
    knots = random_knots(rng, stages=int(rng.integers(1, 4)))
    curves = Curves(knots[0].double().numpy())

    out = render(image, Image.fromarray(mask, "L"), curves.lut())
    assert out is image  # in place
    rendered = np.asarray(out)
    expected = tensor_path(before[..., :3], mask, knots)
    assert np.abs(rendered[..., :3] - expected).max() <= 1 + 1e-3  # 1/255, plus float32 rounding
    if mode == "RGBA":
        assert np.array_equal(rendered[..., 3], before[..., 3])  # alpha untouched

    lut = torch.from_numpy(curves.lut())
    on_tensors = render_tensor(torch.from_numpy(before), torch.from_numpy(mask), lut)
    assert on_tensors.dtype == torch.uint8
    assert np.array_equal(on_tensors.numpy(), rendered)


@pytest.mark.parametrize("size", [(700, 1000), (2, RENDER_STRIP_PIXELS + 3)])
def test_render_in_strips_covers_the_whole_box(size):
    """Images larger than one render strip: every strip boundary must be rendered exactly once."""
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = random_mask(rng, size, soft=True)
    mask[0, 0] = mask[-1, -1] = 255  # the box is the whole image
    lut = Curves(random_knots(rng, stages=2)[0].double().numpy()).lut()
    out = np.asarray(render(Image.fromarray(pixels.copy()), Image.fromarray(mask), lut))
    expected = render_tensor(torch.from_numpy(pixels), torch.from_numpy(mask), torch.from_numpy(lut))
    assert np.array_equal(out, expected.numpy())


def test_render_on_a_real_photo_changes_only_the_masked_pixels():
    image, mask = real_pair(257, 191)
    rng = np.random.default_rng(5)
    lut = Curves(random_knots(rng, stages=2)[0].double().numpy()).lut()
    before, weights = np.asarray(image).copy(), np.asarray(mask)
    out = np.asarray(render(image, mask, lut))
    outside, inside = weights == 0, weights == 255
    assert np.array_equal(out[outside], before[outside])
    assert np.array_equal(out[inside], np.stack([lut[c][before[..., c]] for c in range(3)], -1)[inside])
    assert not np.array_equal(out, before)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize("edge", ["binary", "soft-edged", "one soft pixel"])
def test_render_fast_paths_give_the_blend_exactly(mode, edge):
    """A real photo and mask over many tiles: tiles all 0 (skipped), all 255 (copied), binary (pasted through a
    1-bit mask) and soft (blended) must give exactly the per-pixel blend of the reference path."""
    image, mask = real_pair(3 * RENDER_TILE[0] + 37, 2 * RENDER_TILE[1] + 11, 1)
    weights = np.where(np.asarray(mask) >= 128, 255, 0).astype(np.uint8)
    if edge == "soft-edged":
        weights = np.array(Image.fromarray(weights).resize((weights.shape[1] // 4, weights.shape[0] // 4))
                             .resize(mask.size, Image.Resampling.BILINEAR))
    elif edge == "one soft pixel":
        weights = weights.copy()
        weights[tuple(np.argwhere(weights == 255)[0])] = 200
    levels = [np.unique(weights[y:y + RENDER_TILE[1], x:x + RENDER_TILE[0]])
              for y in range(0, weights.shape[0], RENDER_TILE[1]) for x in range(0, weights.shape[1], RENDER_TILE[0])]
    assert any(len(t) == 1 and t[0] == 255 for t in levels)
    assert any(len(t) == 2 for t in levels) == (edge != "soft-edged")
    assert any(len(t) > 2 for t in levels) == (edge != "binary")
    pixels = np.asarray(image.convert(mode)).copy()
    if mode == "RGBA":
        pixels[..., 3] = np.arange(pixels.shape[1], dtype=np.uint8)
    lut = Curves(random_knots(np.random.default_rng(6), stages=2)[0].double().numpy()).lut()
    out = np.asarray(render(Image.fromarray(pixels.copy(), mode), Image.fromarray(weights, "L"), lut))
    expected = render_tensor(torch.from_numpy(pixels), torch.from_numpy(weights), torch.from_numpy(lut))
    assert np.array_equal(out, expected.numpy())


@pytest.mark.parametrize(("image", "mask"), [
    (Image.new("L", (4, 4)), Image.new("L", (4, 4))),
    (Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))),
    (Image.new("RGB", (4, 4)), Image.new("L", (4, 5))),
])
def test_render_refuses_wrong_modes_and_sizes(image, mask):
    with pytest.raises(ValueError, match="render needs"):
        render(image, mask, np.zeros((3, 256), np.uint8))


# --- exports ---------------------------------------------------------------------------------------------
def test_cube_text_parses_as_a_1d_lut():
    curves = Curves(random_knots(np.random.default_rng(6), stages=2)[0].double().numpy())
    lines = curves.to_cube().splitlines()
    header = [line for line in lines if line and not line[0].isdigit()]
    rows = [line for line in lines if line and line[0].isdigit()]
    assert "LUT_1D_SIZE 256" in header
    assert all(line.startswith(("TITLE", "LUT_1D_SIZE", "DOMAIN_MIN", "DOMAIN_MAX")) for line in header)
    table = np.array([[float(v) for v in row.split()] for row in rows])
    assert table.shape == (256, 3)
    assert (table >= 0).all() and (table <= 1).all()
    assert np.allclose(table, curves.evaluate(np.arange(256) / 255).T, atol=1e-6)
    assert np.allclose(table[0], 0) and np.allclose(table[-1], 1)


def test_to_dict_holds_the_lut():
    curves = Curves(random_knots(np.random.default_rng(7), stages=1)[0].double().numpy())
    as_dict = curves.to_dict()
    assert sorted(as_dict) == ["b", "g", "r"]
    assert np.array_equal(np.array([as_dict["r"], as_dict["g"], as_dict["b"]]), curves.lut())
    assert all(type(v) is int for v in as_dict["r"])
