"""app.imaging in-process: format whitelist, pixel limits from the header, modes, EXIF, ICC, alpha, encode."""

from io import BytesIO

import numpy as np
import pytest
from helpers import display_p3_icc, encode, exif_bytes, heif_bytes, real_pair
from PIL import Image, ImageCms, ImageOps

from app.errors import ApiError
from app.imaging import OUTPUT_FORMATS, decode, decode_reduced, format_name, open_image, output_format_for
from app.imaging import encode as encode_output

LIMIT = 50_000_000


def _error(data: bytes, max_pixels: int = LIMIT, composite: bool = True) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode(data, "composite", max_pixels, composite)
    return info.value


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return real_pair(96, 64, 2)[0]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_whitelisted_formats_decode_to_rgb(photo, fmt):
    decoded = decode(encode(photo, fmt), "composite", LIMIT, True)
    assert decoded.image.mode == "RGB" and decoded.image.size == photo.size
    assert decoded.format == (fmt.lower() if fmt in ("JPEG", "PNG", "WEBP") else None)


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "ICO", "PPM"])
def test_other_formats_are_refused_with_415(photo, fmt):
    error = _error(encode(photo, fmt))
    assert (error.status_code, error.code) == (415, "unsupported_image")


def test_random_bytes_and_empty_file_are_415():
    assert _error(np.random.default_rng(0).bytes(5000)).status_code == 415
    assert _error(b"").status_code == 415


def test_truncated_jpeg_is_400(photo):
    data = encode(photo, "JPEG")
    error = _error(data[: len(data) // 2])
    assert (error.status_code, error.code) == (400, "corrupt_image")


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "TIFF"])
def test_pixel_limit_is_checked_from_the_header(fmt):
    # 6000×6000 of one colour compresses to a few kB: a decompression bomb with a small limit
    params = {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
    bomb = encode(Image.new("1" if fmt != "GIF" else "P", (6000, 6000)), fmt, **params)
    assert len(bomb) < 1_000_000
    error = _error(bomb, max_pixels=1_000_000)
    assert (error.status_code, error.code) == (413, "image_too_large")
    assert "36000000" in error.detail


def test_pillow_bomb_check_is_413_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow refuses above twice this
    error = _error(encode(Image.new("L", (300, 300)), "PNG"))
    assert (error.status_code, error.code) == (413, "image_too_large")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(photo, orientation):
    decoded = decode(encode(photo, "JPEG", exif=exif_bytes(orientation)), "composite", LIMIT, True)
    expected = photo.size[::-1] if orientation >= 5 else photo.size
    assert decoded.image.size == expected
    assert decoded.image.getexif().get(0x0112, 1) == 1  # no longer claims a rotation


def test_exif_orientation_of_the_mask_is_applied_too():
    mask = Image.new("L", (40, 20), 0)
    mask.paste(255, (0, 0, 10, 20))  # the left quarter
    decoded = decode(encode(mask, "PNG", exif=exif_bytes(6)), "mask", LIMIT, False)
    assert decoded.image.size == (20, 40)
    assert np.asarray(decoded.image)[:10].min() == 255  # the stored left edge is now the top


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "I", "F", "I;16"])
def test_composite_modes_become_rgb(photo, mode):
    image = photo.convert("L").convert(mode) if mode in ("I", "F", "I;16") else photo.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "YCbCr", "I", "F") else "PNG"
    decoded = decode(encode(image, fmt), "composite", LIMIT, True)
    assert decoded.image.mode == "RGB" and decoded.image.size == photo.size


def test_sixteen_bit_keeps_the_high_byte():
    array = np.full((8, 8), 0xAB12, np.uint16)
    image = Image.frombytes("I;16", (8, 8), array.tobytes())
    decoded = decode(encode(image, "PNG"), "composite", LIMIT, True)
    assert np.asarray(decoded.image)[0, 0].tolist() == [0xAB] * 3


@pytest.mark.parametrize("make", [
    lambda p: p.convert("RGBA"),
    lambda p: p.convert("LA"),
    lambda p: p.convert("P", palette=Image.Palette.ADAPTIVE),
])
def test_alpha_and_transparency_become_rgba(photo, make):
    image = make(photo)
    if image.mode == "P":
        image.info["transparency"] = 0
    else:
        alpha = Image.linear_gradient("L").resize(photo.size)
        image.putalpha(alpha)
    decoded = decode(encode(image, "PNG"), "composite", LIMIT, True)
    assert decoded.image.mode == "RGBA"
    assert decoded.image.getchannel("A").getextrema()[0] < 255


def test_first_frame_of_animations_and_multipage_files(photo):
    frames = [photo, ImageOps.invert(photo)]
    for fmt in ("GIF", "TIFF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        assert decode(data, "composite", LIMIT, True).image.size == photo.size


def test_rgb_icc_profile_is_kept_and_others_dropped(photo):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert decode(encode(photo, "JPEG", icc_profile=srgb), "composite", LIMIT, True).icc_profile == srgb
    grey = photo.convert("L")
    lab_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not an RGB profile
    assert decode(encode(grey, "JPEG", icc_profile=lab_profile), "composite", LIMIT, True).icc_profile is None
    assert decode(encode(photo, "JPEG", icc_profile=srgb), "mask", LIMIT, False).icc_profile is None


def test_masks_keep_their_mode_for_the_model():
    for mode in ("L", "RGB", "RGBA", "LA", "1"):
        mask = Image.new(mode, (16, 16))
        assert decode(encode(mask, "PNG"), "mask", LIMIT, False).image.mode == mode


@pytest.mark.parametrize("fmt,media", [("jpeg", "image/jpeg"), ("png", "image/png"), ("webp", "image/webp"),
                                       ("avif", "image/avif")])
def test_encode_formats_alpha_and_icc(photo, fmt, media):
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    body, media_type = encode_output(rgba, fmt, 90, 1, srgb)
    out = Image.open(BytesIO(bytes(body)))
    assert media_type == media and out.format == fmt.upper() and out.size == photo.size
    assert out.info.get("icc_profile") == srgb
    assert out.mode == ("RGB" if fmt == "jpeg" else "RGBA")  # JPEG has no alpha
    if fmt == "png":
        assert np.array_equal(np.asarray(out), np.asarray(rgba))  # lossless, alpha included


def test_png_compress_level_is_used(photo):
    big = photo.resize((400, 300))
    fast, _ = encode_output(big, "png", 95, 0, None)
    small, _ = encode_output(big, "png", 95, 9, None)
    assert len(fast) > len(small)


def test_output_format_defaults_to_the_composites_own():
    assert output_format_for(None, "png") == "png"
    assert output_format_for(None, None) == "jpeg"
    assert output_format_for("webp", "png") == "webp"


# --- the reduced decode (app/pipeline.py's thumbnails) ---------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decode_is_the_same_picture_smaller_and_upright(orientation):
    stored = real_pair(640, 480, 3)[0]
    data = encode(stored, "JPEG", quality=90, exif=exif_bytes(orientation))
    full = decode(data, "composite", LIMIT, True).image
    reduced = decode_reduced(open_image(data, "composite", LIMIT), "composite", 0.25)
    assert reduced.size == full.size and reduced.image.mode == "RGB"
    assert reduced.image.size == (full.width // 4, full.height // 4)  # DCT scaling 2/8
    difference = np.abs(np.asarray(full.reduce(4), np.int16) - np.asarray(reduced.image, np.int16))
    assert difference.mean() < 2, difference.mean()  # the same picture, the same way up


def test_reduced_decode_refuses_truncated_data_as_decode_does(photo):
    data = encode(real_pair(640, 480)[0], "JPEG", quality=90)[:6000]
    with pytest.raises(ApiError) as info:
        decode_reduced(open_image(data, "composite", LIMIT), "composite", 0.25)
    assert (info.value.status_code, info.value.code) == (_error(data).status_code, _error(data).code)


@pytest.mark.parametrize("make", [lambda p: encode(p, "PNG"), lambda p: encode(p.convert("CMYK"), "JPEG"),
                                  lambda p: encode(p, "WEBP")])
def test_reduced_decode_is_none_where_only_pillow_decodes(photo, make):
    """Not a JPEG, or a JPEG libjpeg-turbo cannot give as RGB: the service decodes in full, as before."""
    assert decode_reduced(open_image(make(photo), "composite", LIMIT), "composite", 0.25) is None


def test_grey_jpeg_reduces_to_rgb_like_its_full_decode():
    grey = real_pair(512, 512, 4)[0].convert("L")
    data = encode(grey, "JPEG", quality=90)
    reduced = decode_reduced(open_image(data, "composite", LIMIT), "composite", 0.25).image
    expected = decode(data, "composite", LIMIT, True).image.reduce(4)
    assert reduced.mode == expected.mode == "RGB"
    assert np.abs(np.asarray(reduced, np.int16) - np.asarray(expected, np.int16)).mean() < 2


# --- phone photos: HEIC/HEIF (pillow-heif) and AVIF (Pillow) ---------------------------------------------------
def _phone_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0110] = orientation, "Apple", "iPhone 15"  # Orientation, Make, Model
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_phone_photo_decodes_upright_with_its_p3_profile_and_exif(fmt):
    """Stored sideways with orientation 6 (the camera held upright), tagged Display P3: decoded upright, the
    profile kept for the output, the EXIF read."""
    upright = real_pair(96, 128, 1)[0]
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 turns back upright
    p3 = display_p3_icc()
    data = heif_bytes(stored, exif=_phone_exif(6), icc_profile=p3, quality=95) if fmt == "HEIF" else \
        encode(stored, "AVIF", exif=_phone_exif(6), icc_profile=p3, quality=95)
    decoded = decode(data, "composite", LIMIT, True)
    assert decoded.image.size == upright.size and decoded.image.mode == "RGB"
    difference = np.abs(np.asarray(decoded.image, int) - np.asarray(upright, int)).mean()
    assert difference < 4, difference  # the codec's loss, not a turned picture (that differs by ~40)
    assert decoded.icc_profile == p3
    assert decoded.format == ("avif" if fmt == "AVIF" else None)  # a HEIC answers JPEG unless asked otherwise
    assert Image.open(BytesIO(data)).getexif()[0x010F] == "Apple"


def test_ten_bit_heic_is_reduced_to_eight_bits_by_scale():
    """A lossless 10-bit HEIC of full-range ramps: each 8-bit level is v·255/1023 within one level, 1023 → 255
    (not the low byte, nor the high byte of a 16-bit reading)."""
    import pillow_heif

    width, height = 64, 64
    ramp = (np.arange(width * height).reshape(height, width) * 1023 // (width * height - 1)).astype(np.uint16)
    samples = np.stack([ramp, ramp[::-1], np.full_like(ramp, 512)], -1) << 6  # 10-bit in 16-bit words
    buffer = BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(width, height), data=samples.tobytes()).save(
        buffer, quality=-1, chroma=444)
    assert Image.open(BytesIO(buffer.getvalue())).info["bit_depth"] == 10
    pixels = np.asarray(decode(buffer.getvalue(), "composite", LIMIT, True).image, float)
    assert np.abs(pixels[..., 0] - ramp.astype(float) * 255 / 1023).max() <= 1
    assert pixels[..., 0].max() == 255 and pixels[..., 0].min() == 0
    assert abs(pixels[..., 2].mean() - 512 * 255 / 1023) <= 1


def _with_declared_size(heic: bytes, width: int, height: int) -> bytes:
    """The HEIC with its image spatial extents ('ispe' box: version/flags, width, height) rewritten."""
    at = heic.index(b"ispe") + 8
    return heic[:at] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + heic[at + 8:]


def test_heic_pixel_limit_is_checked_from_its_header():
    small = heif_bytes(real_pair(128, 128)[0], quality=50)  # whole 64-pixel blocks: no 'clap' crop box
    for side in (9000, 20000):  # declared, 128² coded: refused by our limit, or Pillow's fence past 2×89 MP
        error = _error(_with_declared_size(small, side, side), max_pixels=1_000_000)
        assert (error.status_code, error.code) == (413, "image_too_large")
    assert "9000×9000" in _error(_with_declared_size(small, 9000, 9000), max_pixels=1_000_000).detail
    big = heif_bytes(Image.new("RGB", (1500, 1000)), quality=10)  # a real 1.5 MP HEIC of a few kB
    assert len(big) < 100_000
    assert _error(big, max_pixels=1_000_000).code == "image_too_large"


@pytest.mark.parametrize(("written", "name"), [("jpg", "jpeg"), ("JPG", "jpeg"), ("PNG", "png"), ("Webp", "webp"),
                                               (" avif ", "avif")])
def test_format_names_take_aliases_in_any_case(written, name):
    assert format_name(written, OUTPUT_FORMATS) == name


def test_an_unknown_format_name_lists_ours():
    with pytest.raises(ApiError) as info:
        format_name("gif", OUTPUT_FORMATS)
    assert info.value.code == "invalid_field" and "jpeg (jpg), png, webp, avif" in info.value.detail
