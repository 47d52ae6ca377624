"""Layer input, per-request strength and the mismatch score over real HTTP (uvicorn subprocess): foreground +
background + placement equals composing by hand, the background outside the matte is untouched, output=layer
keeps the cutout's alpha, strength 0 is the identity and 0.5 halfway, and every bad placement is its 422."""

import os
import re
import shutil
import subprocess

import httpx
import numpy as np
import pytest
from helpers import REPO, decode, encode, identity_net, photo_pair, post_image, real_cutout, real_pair, start_server
from PIL import Image

from model.harmonizer import save_weights


@pytest.fixture(scope="module")
def cutout() -> Image.Image:
    return real_cutout(1)  # 228×257 RGBA, black where transparent


@pytest.fixture(scope="module")
def background() -> Image.Image:
    return real_pair(480, 360, 2)[0]


def post_layer(url: str, foreground: bytes, background: bytes, fields: dict | None = None,
               endpoint: str = "/harmonize", extra: dict | None = None) -> httpx.Response:
    files = {"foreground": ("fg.png", foreground, "image/png"), "background": ("bg.png", background, "image/png")}
    files.update({name: (f"{name}.png", data, "image/png") for name, data in (extra or {}).items()})
    return httpx.post(url + endpoint, files=files, data=fields or {}, timeout=60)


def compose_by_hand(cutout: Image.Image, background: Image.Image, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """The textbook 'over' in float: composite = bg·(1 − a) + fg·a, mask = the placed alpha (cut at the edges)."""
    bg = np.asarray(background).astype(np.float64)
    fg = np.asarray(cutout).astype(np.float64)
    mask = np.zeros(bg.shape[:2])
    h, w = fg.shape[:2]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + h, bg.shape[0]), min(x + w, bg.shape[1])
    mask[top:bottom, left:right] = fg[top - y:bottom - y, left - x:right - x, 3]
    placed = np.zeros_like(bg)
    placed[top:bottom, left:right] = fg[top - y:bottom - y, left - x:right - x, :3]
    a = mask[..., None] / 255
    composite = np.rint(bg * (1 - a) + placed * a).astype(np.uint8)
    return composite, mask.astype(np.uint8)


def _assert_error(response: httpx.Response, code: str, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == code, body
    assert field in body["detail"], body


# --- layer input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, y", [(120, 60), (-40, 200)])  # inside; cut off at the left and the bottom
def test_layer_input_equals_composing_by_hand(server, cutout, background, x, y):
    response = post_layer(server.url, encode(cutout, "PNG"), encode(background, "PNG"), {"x": x, "y": y})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"  # the background's own format
    served = np.asarray(decode(response.content)).astype(int)
    assert served.shape == (360, 480, 3)

    composite, mask = compose_by_hand(cutout, background, x, y)
    by_hand = post_image(server.url, encode(Image.fromarray(composite), "PNG"), encode(Image.fromarray(mask), "PNG"))
    expected = np.asarray(decode(by_hand.content)).astype(int)
    assert np.abs(served - expected).max() <= 1
    outside = mask == 0  # everything outside the placed matte is the background, bit for bit
    assert np.array_equal(served[outside], np.asarray(background).astype(int)[outside])
    assert not np.array_equal(served[~outside], np.asarray(background).astype(int)[~outside])


def test_rgb_foreground_with_its_mask_equals_the_rgba_cutout(server, cutout, background):
    rgba = post_layer(server.url, encode(cutout, "PNG"), encode(background, "PNG"), {"x": 30, "y": 20})
    matte = encode(cutout.getchannel("A"), "PNG")
    rgb = post_layer(server.url, encode(cutout.convert("RGB"), "PNG"), encode(background, "PNG"),
                     {"x": 30, "y": 20}, extra={"foreground_mask": matte})
    assert rgb.status_code == 200, rgb.text
    difference = np.asarray(decode(rgba.content)).astype(int) - np.asarray(decode(rgb.content))
    assert np.abs(difference).max() <= 1


def test_layer_output_is_the_harmonized_cutout_with_its_own_alpha(server, cutout, background):
    fields = {"x": 100, "y": 50}
    flat = decode(post_layer(server.url, encode(cutout, "PNG"), encode(background, "PNG"), fields).content)
    response = post_layer(server.url, encode(cutout, "PNG"), encode(background, "PNG"),
                          {**fields, "output": "layer"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
    layer = decode(response.content)
    assert layer.mode == "RGBA" and layer.size == cutout.size
    alpha = np.asarray(cutout)[..., 3]
    assert np.array_equal(np.asarray(layer)[..., 3], alpha)
    opaque = alpha == 255  # where the matte is opaque the layer's pixels are the flattened result's
    window = np.asarray(flat).astype(int)[50:50 + cutout.height, 100:100 + cutout.width]
    assert np.abs(np.asarray(layer)[..., :3].astype(int)[opaque] - window[opaque]).max() <= 1
    assert not np.array_equal(np.asarray(layer)[..., :3][opaque], np.asarray(cutout)[..., :3][opaque])


def test_scale_box_and_feather(server, cutout, background):
    png, bg = encode(cutout, "PNG"), encode(background, "PNG")
    half = decode(post_layer(server.url, png, bg, {"x": 10, "y": 10, "scale": 0.5, "output": "layer"}).content)
    assert half.size == (round(cutout.width / 2), round(cutout.height / 2))
    # box: fitted (aspect kept) and centred; nothing outside the box changes
    fitted = decode(post_layer(server.url, png, bg, {"box": "200,40,400,140", "output": "layer"}).content)
    assert fitted.height == 100 and abs(fitted.width - round(cutout.width * 100 / cutout.height)) <= 1
    flat = np.asarray(decode(post_layer(server.url, png, bg, {"box": "200,40,400,140"}).content)).astype(int)
    outside = np.ones((360, 480), bool)
    outside[40:140, 200:400] = False
    assert np.array_equal(flat[outside], np.asarray(background).astype(int)[outside])
    # feather softens the matte inwards only: still nothing changes outside the (unfeathered) cutout
    soft = np.asarray(decode(post_layer(server.url, png, bg, {"x": 100, "y": 50, "feather": 4}).content))
    sharp = np.asarray(decode(post_layer(server.url, png, bg, {"x": 100, "y": 50}).content))
    _, mask = compose_by_hand(cutout, background, 100, 50)
    assert np.array_equal(soft[mask == 0], np.asarray(background)[mask == 0])
    assert not np.array_equal(soft, sharp)


def test_curves_take_layer_input_too(server, cutout, background):
    response = post_layer(server.url, encode(cutout, "PNG"), encode(background, "PNG"), {"x": 5, "y": 5},
                          endpoint="/curves")
    assert response.status_code == 200, response.text
    assert {"r", "g", "b", "mismatch", "strength"} <= set(response.json())
    assert "compose" in response.json()["timings_ms"]


# --- strength -------------------------------------------------------------------------------------------------
def test_strength_zero_is_the_identity_and_half_is_halfway(server):
    composite, mask = real_pair(400, 300, 3)
    png, mask_png = encode(composite, "PNG"), encode(mask, "PNG")
    unchanged = post_image(server.url, png, mask_png, {"strength": "0"})
    assert unchanged.status_code == 200 and unchanged.headers["x-harmonization-mismatch"] == "0.000"
    assert np.array_equal(np.asarray(decode(unchanged.content)), np.asarray(composite))
    full = np.asarray(decode(post_image(server.url, png, mask_png, {"strength": "1"}).content)).astype(int)
    half = np.asarray(decode(post_image(server.url, png, mask_png, {"strength": "0.5"}).content)).astype(int)
    midway = (full + np.asarray(composite).astype(int)) / 2
    assert np.abs(half - midway).max() <= 1
    assert np.abs(full - np.asarray(composite)).max() > 10  # the curves do move these pixels

    curves = post_image(server.url, png, mask_png, {"strength": "0"}, endpoint="/curves").json()
    assert [curves[c] for c in "rgb"] == [list(range(256))] * 3
    assert curves["strength"] == 0 and curves["mismatch"] == {"mean": 0, "r": 0, "g": 0, "b": 0}


def test_strength_zero_for_layer_input_returns_the_composite(server, cutout, background):
    png, bg = encode(cutout, "PNG"), encode(background, "PNG")
    response = post_layer(server.url, png, bg, {"x": 60, "y": 40, "strength": 0})
    composite, _ = compose_by_hand(cutout, background, 60, 40)
    assert np.abs(np.asarray(decode(response.content)).astype(int) - composite).max() <= 1
    layer = decode(post_layer(server.url, png, bg, {"x": 60, "y": 40, "strength": 0, "output": "layer"}).content)
    assert np.array_equal(np.asarray(layer), np.asarray(cutout))  # the cutout itself, alpha and all


# --- the mismatch score ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def identity_server(tmp_path_factory):
    """A server whose curves are exactly the identity: every log-slope 0."""
    path = tmp_path_factory.mktemp("identity") / "identity.pt"
    save_weights(path, identity_net())
    handle = start_server({"S2CRNET_WEIGHTS": str(path), "S2CRNET_LOG_LEVEL": "warning"})
    yield handle
    handle.stop()


def test_mismatch_is_zero_for_the_identity_curve(identity_server):
    composite, mask = real_pair(320, 240, 1)
    curves = post_image(identity_server.url, encode(composite, "PNG"), encode(mask, "PNG"), endpoint="/curves")
    assert curves.json()["mismatch"] == {"mean": 0, "r": 0, "g": 0, "b": 0}
    image = post_image(identity_server.url, encode(composite, "PNG"), encode(mask, "PNG"))
    assert image.headers["x-harmonization-mismatch"] == "0.000"


def test_mismatch_is_the_mean_change_of_the_masked_pixels(server):
    """/curves' mismatch is Σ m·|LUT(x) − x| / Σ m per channel (estimated on the thumbnail: within ~a level)."""
    composite, mask = real_pair(640, 480, 0)
    response = post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG"), endpoint="/curves").json()
    lut = np.array([response[c] for c in "rgb"])
    pixels, weight = np.asarray(composite).astype(int), np.asarray(mask).astype(float)
    exact = [(np.abs(lut[c][pixels[..., c]] - pixels[..., c]) * weight).sum() / weight.sum() for c in range(3)]
    for c, value in zip("rgb", exact, strict=True):
        assert abs(response["mismatch"][c] - value) <= 1 + 0.05 * value, (c, response["mismatch"], exact)
    assert response["mismatch"]["mean"] == pytest.approx(np.mean([response["mismatch"][c] for c in "rgb"]),
                                                         abs=1e-3)
    header = post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG")).headers
    assert float(header["x-harmonization-mismatch"]) == pytest.approx(response["mismatch"]["mean"], abs=0.05)


def test_mismatch_grows_with_a_known_recolouring(server):
    """Real photos (each its own ground truth) with an orange cast of growing strength on the object."""
    means = {}
    for cast in (0.0, 0.6):
        scores = []
        for index in (0, 3, 12, 15, 24, 36):
            photo, mask = photo_pair(index)
            pixels = np.asarray(photo).astype(np.float64)
            weight = (np.asarray(mask) / 255.0)[..., None]
            tinted = pixels * (1 - cast) + cast * np.array([255.0, 120.0, 30.0])
            composite = Image.fromarray(np.rint(pixels * (1 - weight) + tinted * weight).astype(np.uint8))
            response = post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG"))
            scores.append(float(response.headers["x-harmonization-mismatch"]))
        means[cast] = np.mean(scores)
    assert means[0.6] > means[0.0] + 5, means


# --- bad input: every one its 422 -----------------------------------------------------------------------------
def _bad_layer_requests(cutout: Image.Image, background: Image.Image):
    fg, bg = encode(cutout, "PNG"), encode(background, "PNG")
    transparent = encode(Image.new("RGBA", (40, 30), (200, 10, 10, 0)), "PNG")
    composite, mask = real_pair(480, 360, 2)
    comp, mask_png = encode(composite, "PNG"), encode(mask, "PNG")
    both = {"foreground": fg, "background": bg}
    return [
        ("composite and foreground", {"composite": comp, "mask": mask_png, "foreground": fg}, {}, "mixed_inputs",
         "foreground"),
        ("composite with x", {"composite": comp, "mask": mask_png}, {"x": "3"}, "mixed_inputs", "x"),
        ("foreground without background", {"foreground": fg}, {}, "missing_field", "background"),
        ("background without foreground", {"background": bg}, {"x": "1"}, "missing_field", "foreground"),
        # A form without any of our parts (with none at all the body is not multipart: 400, test_service_requests)
        ("nothing at all", {"notes": bg}, {"format": "png"}, "missing_field", "composite"),
        ("outside on the right", both, {"x": "480", "y": "0"}, "invalid_placement", "x, y"),
        ("outside above", both, {"x": "0", "y": str(-cutout.height)}, "invalid_placement", "x, y"),
        ("far outside", both, {"x": str(10**30), "y": "0"}, "invalid_placement", "x, y"),
        ("only transparent pixels land", both, {"x": str(-cutout.width + 2), "y": "0"}, "invalid_placement",
         "x, y"),
        ("fully transparent", {"foreground": transparent, "background": bg}, {}, "invalid_foreground",
         "foreground"),
        ("scale 0", both, {"scale": "0"}, "invalid_placement", "scale"),
        ("scale negative", both, {"scale": "-2"}, "invalid_placement", "scale"),
        ("scale NaN", both, {"scale": "NaN"}, "invalid_placement", "scale"),
        ("scale infinite", both, {"scale": "inf"}, "invalid_placement", "scale"),
        ("scale over the pixel limit", both, {"scale": "1000"}, "invalid_placement", "scale"),
        ("scale to nothing", both, {"scale": "0.0001"}, "invalid_placement", "scale"),
        ("scale text", both, {"scale": "big"}, "invalid_field", "scale"),
        ("box x1 = x0", both, {"box": "100,10,100,50"}, "invalid_placement", "box"),
        ("box y1 < y0", both, {"box": "0,50,100,10"}, "invalid_placement", "box"),
        ("box of three numbers", both, {"box": "1,2,3"}, "invalid_placement", "box"),
        ("box text", both, {"box": "a,b,c,d"}, "invalid_placement", "box"),
        ("box and x", both, {"box": "0,0,100,100", "x": "4"}, "invalid_placement", "box"),
        ("box over the pixel limit", both, {"box": f"0,0,{10**9},{10**9}"}, "invalid_placement", "box"),
        ("feather negative", both, {"feather": "-1"}, "invalid_placement", "feather"),
        ("feather huge", both, {"feather": "1e12"}, "invalid_placement", "feather"),
        ("x not a number", both, {"x": "left"}, "invalid_field", "x"),
        ("x fractional", both, {"x": "1.5"}, "invalid_field", "x"),
        ("foreground_mask of another size", {**both, "foreground_mask": encode(cutout.getchannel("A").resize(
            (50, 50)), "PNG")}, {}, "invalid_foreground", "foreground_mask"),
        ("strength above 1", both, {"strength": "1.5"}, "invalid_field", "strength"),
        ("strength negative", both, {"strength": "-0.1"}, "invalid_field", "strength"),
        ("strength NaN", both, {"strength": "NaN"}, "invalid_field", "strength"),
        ("strength text", {"composite": comp, "mask": mask_png}, {"strength": "full"}, "invalid_field", "strength"),
        ("layer output for a composite", {"composite": comp, "mask": mask_png}, {"output": "layer"},
         "invalid_field", "output"),
        ("layer output as JPEG", both, {"output": "layer", "format": "jpeg"}, "invalid_field", "format"),
        ("unknown output", both, {"output": "psd"}, "invalid_field", "output"),
    ]


BAD_LAYER_COUNT = 35


def test_the_bad_request_list_is_complete(cutout, background):
    assert len(_bad_layer_requests(cutout, background)) == BAD_LAYER_COUNT


@pytest.mark.parametrize("index", range(BAD_LAYER_COUNT))
def test_bad_layer_input_gets_its_422(server, cutout, background, index):
    name, files, fields, code, field = _bad_layer_requests(cutout, background)[index]
    multipart = {part: (f"{part}.png", data, "image/png") for part, data in files.items()}
    for endpoint in ("/harmonize", "/curves"):
        if endpoint == "/curves" and ("output" in fields or fields.get("format")):
            continue  # /curves has no output field and its own formats
        response = httpx.post(server.url + endpoint, files=multipart, data=fields, timeout=60)
        _assert_error(response, code, field)


# --- the README's ffmpeg recipe ---------------------------------------------------------------------------------
def _readme_ffmpeg_command() -> str:
    reference = (REPO / "docs" / "API.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", reference, re.S) if "maskedmerge" in b]
    assert len(blocks) == 1, "docs/API.md needs one ```bash block with the lut1d + maskedmerge recipe"
    lines = [line for line in blocks[0].replace("\\\n", " ").splitlines() if line.startswith("ffmpeg ")]
    assert len(lines) == 1
    return lines[0]


def test_readme_ffmpeg_recipe_recolours_only_the_masked_region(server, tmp_path):
    """The .cube from /curves through ffmpeg's lut1d + maskedmerge equals /harmonize within one level."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        if os.environ.get("CI"):
            pytest.fail("ffmpeg is not installed (CI installs Debian's ffmpeg in .ci/run)")
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    composite, mask = real_pair(400, 300, 1)
    composite.save(tmp_path / "comp.png")
    mask.save(tmp_path / "mask.png")
    cube = post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG"), {"format": "cube"},
                      endpoint="/curves")
    (tmp_path / "curves.cube").write_text(cube.text)
    served = post_image(server.url, encode(composite, "PNG"), encode(mask, "PNG"), {"format": "png"})

    result = subprocess.run(["bash", "-c", _readme_ffmpeg_command().replace("ffmpeg ", f"{ffmpeg} ", 1)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int)
    expected = np.asarray(decode(served.content)).astype(int)
    assert out.shape == expected.shape and np.abs(out - expected).max() <= 1
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(composite).astype(int)[outside])
    assert np.abs(out - np.asarray(composite)).max() > 10  # the recipe did recolour the object
