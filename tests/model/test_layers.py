"""model.layers and the Python API's layer input, strength and mismatch: compose by placement, scale, box and
feather; PIL and numpy in, the same kind out; strength as one formula; the mismatch score's definition."""

import numpy as np
import pytest
import torch
from helpers import identity_net, real_cutout, real_pair
from PIL import Image

from model import Curves, Harmonizer
from model.layers import LayerError, compose, cut_layer, parse_box, parse_point, place


@pytest.fixture(scope="module")
def shipped() -> Harmonizer:
    return Harmonizer.load(device="cpu")


@pytest.fixture(scope="module")
def cutout() -> Image.Image:
    return real_cutout(2)  # 300×193


@pytest.fixture(scope="module")
def background() -> Image.Image:
    return real_pair(400, 300, 1)[0]


def test_compose_is_the_over_operator_and_leaves_the_rest(cutout, background):
    layered = compose(cutout, background, at=(-50, 140))
    composite = np.asarray(layered.composite).astype(np.float64)
    mask = np.asarray(layered.mask)
    assert layered.composite.size == background.size and layered.composite.mode == "RGB"
    assert (layered.placement.x, layered.placement.y) == (-50, 140)
    fg = np.asarray(cutout).astype(np.float64)[:160, 50:]  # the part that lands: rows 140..299, columns 0..249
    alpha = fg[..., 3:] / 255
    bg = np.asarray(background).astype(np.float64)
    expected = bg.copy()
    expected[140:, :250] = bg[140:, :250] * (1 - alpha) + fg[..., :3] * alpha
    assert np.abs(composite - expected).max() <= 1
    assert np.array_equal(mask[140:, :250], fg[..., 3].astype(np.uint8)) and mask[:140].max() == 0
    assert np.asarray(background).shape == (300, 400, 3)  # the caller's background is untouched
    assert not np.array_equal(np.asarray(background), np.asarray(layered.composite))


def test_numpy_in_numpy_out_and_pil_in_pil_out(cutout, background):
    composite, mask = Harmonizer.compose(np.asarray(cutout), np.asarray(background), at=(10, 20))
    assert isinstance(composite, np.ndarray) and composite.shape == (300, 400, 3) and mask.shape == (300, 400)
    pil_composite, pil_mask = Harmonizer.compose(cutout, background, at=(10, 20))
    assert isinstance(pil_composite, Image.Image) and pil_mask.mode == "L"
    assert np.array_equal(composite, np.asarray(pil_composite)) and np.array_equal(mask, np.asarray(pil_mask))
    rgb_and_matte = Harmonizer.compose(np.asarray(cutout)[..., :3], np.asarray(background), at=(10, 20),
                                       foreground_mask=np.asarray(cutout)[..., 3])
    assert np.array_equal(rgb_and_matte[0], composite)


def test_rgba_background_keeps_its_mode_and_composes_over(cutout, background):
    rgba = background.convert("RGBA")
    rgba.putalpha(128)
    layered = compose(cutout, rgba, at=(0, 0))
    assert layered.composite.mode == "RGBA"
    alpha = np.asarray(layered.composite)[..., 3]
    opaque = np.asarray(cutout)[..., 3] == 255
    assert (alpha[:193, :300][opaque] == 255).all() and alpha[250:, 350:].max() == 128


def test_scale_and_box(cutout, background):
    assert place(cutout.size, background.size, at=(5, 6), scale=0.5) == place((300, 193), (400, 300), (5, 6), 0.5)
    half = compose(cutout, background, at=(5, 6), scale=0.5)
    assert half.foreground.size == (150, 96) and half.mask.getbbox()[0] >= 5
    fitted = compose(cutout, background, box=(100, 100, 300, 150))  # 50 high: the height decides
    assert fitted.foreground.height == 50 and fitted.foreground.width == round(300 * 50 / 193)
    left, top, right, bottom = fitted.mask.getbbox()
    assert left >= 100 and right <= 300 and top >= 100 and bottom <= 150
    assert abs((left + right) / 2 - 200) <= 3  # centred across the box


def test_feather_softens_inwards_only(cutout, background):
    sharp = np.asarray(compose(cutout, background, at=(30, 30)).mask)
    soft = np.asarray(compose(cutout, background, at=(30, 30), feather=3).mask)
    assert (soft <= sharp).all() and (soft < sharp).any()
    assert soft[sharp == 0].max() == 0  # nothing that was transparent shows


def test_the_layer_equals_the_flattened_result_inside_the_matte(shipped, cutout, background):
    flat = shipped.harmonize(foreground=cutout, background=background, at=(40, 50))
    layer = shipped.harmonize(foreground=cutout, background=background, at=(40, 50), layer=True)
    assert layer.mode == "RGBA" and layer.size == cutout.size
    alpha = np.asarray(cutout)[..., 3]
    assert np.array_equal(np.asarray(layer)[..., 3], alpha)
    opaque = alpha == 255
    window = np.asarray(flat)[50:50 + cutout.height, 40:40 + cutout.width]
    assert np.array_equal(np.asarray(layer)[..., :3][opaque], window[opaque])
    composite, mask = Harmonizer.compose(cutout, background, at=(40, 50))
    assert np.array_equal(np.asarray(flat), np.asarray(shipped.harmonize(composite, mask)))


@pytest.mark.parametrize("kwargs, field", [
    ({"at": (400, 0)}, "x, y"), ({"at": (0, -193)}, "x, y"), ({"at": (10**40, 0)}, "x, y"),
    ({"scale": 0}, "scale"), ({"scale": -1.0}, "scale"), ({"scale": float("nan")}, "scale"),
    ({"scale": 1e200}, "scale"), ({"scale": 1e-9}, "scale"), ({"box": (5, 5, 5, 50)}, "box"),
    ({"box": (0, 0, 10, 10), "at": (1, 1)}, "box"), ({"box": (0, 0, 10, 10), "scale": 2}, "box"),
    ({"feather": -1}, "feather"), ({"feather": float("inf")}, "feather"), ({"at": (1.5, 0)}, "x"),
    ({"at": (True, 0)}, "x"), ({"foreground_mask": np.zeros((5, 5), np.uint8)}, "foreground_mask"),
])
def test_bad_placements_name_their_field(cutout, background, kwargs, field):
    with pytest.raises(LayerError) as error:
        compose(cutout, background, **kwargs)
    assert error.value.field == field and str(error.value).startswith(f"{field}: ")


def test_parsing():
    assert parse_point("-10,20") == (-10, 20) and parse_box(" 1, 2,3,4") == (1, 2, 3, 4)
    for text in ("1", "1,2,3", "a,b", "1.5,2"):
        with pytest.raises(LayerError):
            parse_point(text)
    with pytest.raises(LayerError):
        compose(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), Image.new("RGB", (16, 16)))  # fully transparent


def test_harmonize_refuses_mixed_and_half_forms(shipped, cutout, background):
    composite, mask = Harmonizer.compose(cutout, background)
    with pytest.raises(ValueError, match="not both"):
        shipped.harmonize(composite, mask, foreground=cutout, background=background)
    with pytest.raises(ValueError, match="both a foreground and a background"):
        shipped.harmonize(foreground=cutout)
    with pytest.raises(ValueError, match="layer=True needs"):
        shipped.harmonize(composite, mask, layer=True)


# --- strength ---------------------------------------------------------------------------------------------------
def test_strength_is_one_formula_on_both_render_paths(shipped):
    composite, mask = real_pair(320, 240, 2)
    (curves,) = shipped.predict_curves([composite], [mask])
    levels = np.arange(256) / 255
    full = curves.with_strength(1.0).evaluate(levels)
    for s in (0.0, 0.3, 1.0):
        part = curves.with_strength(s)
        assert np.allclose(part.evaluate(levels), levels + s * (full - levels))
        from model.curves import render_tensor

        pixels = torch.from_numpy(np.asarray(composite).copy())
        weights = torch.from_numpy(np.asarray(mask).copy())
        on_tensor = render_tensor(pixels, weights, torch.from_numpy(part.lut())).numpy()
        on_pillow = np.asarray(shipped.harmonize(composite, mask, strength=s))
        assert np.array_equal(on_tensor, on_pillow), s
    assert np.array_equal(np.asarray(shipped.harmonize(composite, mask, strength=0)), np.asarray(composite))
    assert curves.with_strength(None) is curves
    for bad in (-0.1, 1.01, float("nan"), "x"):
        with pytest.raises(ValueError, match="strength"):
            curves.with_strength(bad)


def test_predict_curves_at_a_strength_gives_that_lut(shipped):
    composite, mask = real_pair(200, 150, 3)
    (zero,) = shipped.predict_curves([composite], [mask], strength=0)
    assert (zero.lut() == np.arange(256)).all() and zero.mismatch == {"mean": 0, "r": 0, "g": 0, "b": 0}


# --- the mismatch score -----------------------------------------------------------------------------------------
def _full_resolution_mismatch(image: Image.Image, mask: Image.Image, lut: np.ndarray) -> list[float]:
    pixels, weight = np.asarray(image).astype(int), np.asarray(mask).astype(float)
    return [(np.abs(lut[c][pixels[..., c]] - pixels[..., c]) * weight).sum() / weight.sum() for c in range(3)]


@pytest.mark.parametrize("index", range(4))
def test_mismatch_estimate_is_within_a_level_of_the_full_resolution_figure(shipped, index):
    composite, mask = real_pair(900, 700, index)
    (curves,) = shipped.predict_curves([composite], [mask])
    exact = _full_resolution_mismatch(composite, mask, curves.lut())
    for channel, value in zip("rgb", exact, strict=True):
        assert abs(curves.mismatch[channel] - value) <= 1 + 0.05 * value, (channel, curves.mismatch, exact)
    assert curves.mismatch["mean"] == pytest.approx(np.mean([curves.mismatch[c] for c in "rgb"]))


def test_mismatch_is_zero_for_the_identity_and_follows_a_known_curve():
    identity = Harmonizer(identity_net(), torch.device("cpu"))
    composite, mask = real_pair(320, 240, 0)
    (curves,) = identity.predict_curves([composite], [mask])
    assert curves.mismatch == {"mean": 0, "r": 0, "g": 0, "b": 0}
    # A known curve (red up by ~20 levels) on a known histogram: the score is its mean change.
    knots = np.tile(np.linspace(0, 1, 65), (1, 3, 1))
    knots[0, 0] = np.minimum(np.linspace(0, 1, 65) + 20 / 255, 1.0)
    knots[0, 0, 0] = 0.0
    histogram = np.zeros((3, 256))
    histogram[:, 100] = 3.0
    histogram[:, 250] = 1.0
    known = Curves(knots, 1.0, histogram).mismatch
    assert known["r"] == pytest.approx((3 * 20 + 1 * 5) / 4) and known["g"] == known["b"] == 0
    assert known["mean"] == pytest.approx(known["r"] / 3)
    assert Curves(knots).mismatch is None  # no histogram, no score


def test_layers_and_cut_layer_keep_uint8(cutout, background):
    layered = compose(cutout, background, at=(0, 0))
    layer = cut_layer(layered, np.tile(np.arange(256, dtype=np.uint8), (3, 1)))
    assert layer.mode == "RGBA" and np.array_equal(np.asarray(layer), np.asarray(cutout))
