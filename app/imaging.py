"""Bytes ↔ images for the service and the CLI alike: format whitelist, pixel limit before decoding, data that
ends early refused, EXIF orientation, modes (model/modes.py, which the Python API uses too), encoding.

Images stay 8-bit Pillow images end to end; nothing here makes a float copy of a full-size image.
"""

import logging
import math
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from model import modes

from .errors import ApiError

__all__ = ["Decoded", "Reduced", "INPUT_FORMATS", "OUTPUT_FORMATS", "acceptable_formats", "decode", "decode_opened",
           "decode_reduced", "check_jpeg", "encode", "format_name", "open_image", "output_format_for"]

log = logging.getLogger(__name__)

# Data that ends early is an error, never an image padded with grey (Pillow's default; said here so that no
# import elsewhere can have flipped it).
ImageFile.LOAD_TRUNCATED_IMAGES = False

# what pipelines and phones send (HEIF: pillow-heif, registered by model.inputs; AVIF: Pillow's own); else → 415
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF", "AVIF")
# request name → (Pillow format, media type)
OUTPUT_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp"),
                  "avif": ("AVIF", "image/avif")}
FORMAT_ALIASES = {"jpg": "jpeg"}  # other names a client may give a format (in any case)
_MAX_SIDE = {"jpeg": 65535, "webp": 16383, "avif": 65536}  # the formats' own limits (PNG's, 2^31, is past max_pixels)
AVIF_SPEED = 8  # libavif's 0 (slowest) to 10: 8 encodes 2048² in about WebP's time; its default, 6, takes 5×


PNG_COMPRESS_LEVEL = 1  # zlib level of PNG output, service and CLI: Pillow's 6 takes ~3× as long for ~10% less


@dataclass
class Decoded:
    image: Image.Image  # EXIF orientation applied; composite: RGB or RGBA, mask: any mode the model accepts
    format: str | None  # "jpeg", "png", "webp" or "avif" when the source was one of those, else None
    icc_profile: bytes | None  # kept only when it describes RGB data (a CMYK or grey profile would lie)


def open_image(source: BinaryIO | bytes | str, what: str, max_pixels: int | None) -> Image.Image:
    """Read one image's header (no pixels yet): format whitelist and pixel limit. `what` names it in errors
    ("composite", "mask"); max_pixels None = no limit of ours (the CLI: the user's own files)."""
    fp = BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = Image.open(fp, formats=INPUT_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own fence: twice MAX_IMAGE_PIXELS (when we set no limit)
        limit = max_pixels or 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ApiError(413, "image_too_large", f"the {what} has more than {limit} pixels") from None
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_image", f"the {what} is not an image in a supported format "
                       f"({', '.join(INPUT_FORMATS)})") from None
    except OSError as e:
        if isinstance(source, str) and e.errno is not None:  # the CLI's file could not be read at all
            raise
        log.info("cannot open the %s: %r", what, e)
        raise ApiError(400, "corrupt_image", f"the {what} has a corrupt header") from None
    except Exception as e:  # Pillow raises many types on hostile headers: all mean "cannot read this"
        log.info("cannot open the %s: %r", what, e)
        raise ApiError(400, "corrupt_image", f"the {what} has a corrupt header") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ApiError(413, "image_too_large", f"the {what} is {width}×{height} = {width * height} pixels, "
                       f"over the limit of {max_pixels}")
    if width == 0 or height == 0:
        raise ApiError(400, "corrupt_image", f"the {what} is empty ({width}×{height})")
    return image


def decode_opened(image: Image.Image, what: str, composite: bool, checked: bool = False) -> Decoded:
    """Decode the pixels of an image from open_image: EXIF orientation applied, mode normalised. checked: a
    JPEG's data was already read by decode_reduced."""
    source_format = image.format.lower() if image.format and image.format.lower() in OUTPUT_FORMATS else None
    icc = image.info.get("icc_profile")
    if image.format == "JPEG" and not checked:
        _check_jpeg_data(image, what)
    try:
        image.load()
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large", f"the {what} has more than {Image.MAX_IMAGE_PIXELS} pixels") \
            from None
    except Exception as e:  # LOAD_TRUNCATED_IMAGES is off: data that ends early raises here
        log.info("cannot decode the %s: %r", what, e)
        raise ApiError(400, "corrupt_image", f"the {what} is truncated or corrupt") from None
    _apply_exif_orientation(image, what)
    image = _normalise_mode(image, what, composite)
    keep_icc = composite and isinstance(icc, bytes) and icc[16:20] == b"RGB "  # ICC header: data colour space
    return Decoded(image, source_format, icc if keep_icc else None)


def decode(source: BinaryIO | bytes | str, what: str, max_pixels: int | None, composite: bool) -> Decoded:
    """Decode one uploaded image (or a file path, for the CLI): open_image, then decode_opened.

    The pixel limit is checked from the header, before any pixel is decoded; Pillow's own decompression-bomb
    check (Image.MAX_IMAGE_PIXELS, set by the app) is a second fence. Only the first frame of an animation or
    a multi-page file is used.
    """
    return decode_opened(open_image(source, what, max_pixels), what, composite)


def _jpeg_data(image: Image.Image) -> bytes:
    fp = image.fp
    position = fp.tell()
    fp.seek(0)
    data = fp.read()
    fp.seek(position)
    return data


def _check_jpeg_data(image: Image.Image, what: str, colorspace: str = "GRAY", scale: float = 0.0,
                     data: bytes | None = None) -> np.ndarray | None:
    """A JPEG whose scan data ends before its declared size (an EOI marker after 64×48 pixels of data under a
    7000×7000 header) decodes without an error in Pillow: libjpeg fills the rest grey and only warns. So the
    entropy-coded data is read once, scaled down in the DCT domain (to at least `scale` of the size; 1/8 at
    most), by libjpeg-turbo with warnings as errors: about a quarter of a full decode's time and 1/64 of its
    memory, before the full-size image is allocated. Returns those pixels (H, W, 1|3 uint8); None when
    libjpeg-turbo could not give them (a recoverable warning, a variant it refuses: Pillow decides, as before)."""
    try:
        return simplejpeg.decode_jpeg(data or _jpeg_data(image), colorspace=colorspace, strict=True,
                                      min_width=max(1, math.ceil(image.width * scale)),
                                      min_height=max(1, math.ceil(image.height * scale)))
    except ValueError as e:
        # Only data that ends early is refused: cameras write files with harmless warnings ("extraneous
        # bytes before marker 0xd9") that every viewer shows.
        if "premature end" in str(e).lower():
            raise ApiError(400, "corrupt_image", f"the {what} is truncated: its data ends before the "
                           f"{image.width}×{image.height} pixels its header declares") from None
        log.info("the %s's JPEG data has a recoverable problem: %s", what, e)
    except Exception as e:  # a JPEG variant libjpeg-turbo's API refuses (a 12-bit one): Pillow decides
        log.info("cannot check the %s's JPEG data: %r", what, e)
    return None


def check_jpeg(image: Image.Image, what: str) -> None:
    """The truncated-data check on its own (see _check_jpeg_data); decode_opened(..., checked=True) skips it."""
    _check_jpeg_data(image, what)


@dataclass
class Reduced:
    image: Image.Image  # RGB at `scale` of the full size or a little more (DCT scaling: k/8), EXIF orientation applied
    size: tuple[int, int]  # the full image's size, EXIF orientation applied
    data: bytes  # the JPEG file: a finer decode_reduced reads it here while the full decode reads the upload


def decode_reduced(image: Image.Image, what: str, scale: float, data: bytes | None = None) -> Reduced | None:
    """Decode a composite from open_image at about `scale` of its size by the JPEG data check itself (same
    cost), so that thumbnails need not wait for the full-size pixels.

    None when the image is not a baseline JPEG or libjpeg-turbo cannot give RGB (CMYK, 12-bit, a recoverable warning):
    decode_opened then checks and decodes as before. Data that ends early raises what decode_opened raises;
    after success, decode_opened(image, ..., checked=True) need not read the data a second time.
    """
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    if image.info.get("progressive"):  # libjpeg buffers a progressive file's whole coefficients: in colour that
        return None                    # costs ~40 MB more at 49 MP than the grey check, so it takes the old path
    data = data or _jpeg_data(image)
    pixels = _check_jpeg_data(image, what, "RGB", scale, data)
    if pixels is None:
        return None
    reduced = Image.fromarray(pixels, "RGB")
    reduced.info = dict(image.info)  # EXIF and XMP: the orientation is read exactly as for the full image
    _apply_exif_orientation(reduced, what)
    turned = reduced.size != pixels.shape[1::-1]
    return Reduced(reduced, image.size[::-1] if turned else image.size, data)


def _normalise_mode(image: Image.Image, what: str, composite: bool) -> Image.Image:
    """Composite → RGB or RGBA; mask → 8-bit (L, or a mode with alpha, which the model reads as the mask).
    16-bit and float samples are scaled onto 0–255 by the model's own rule (model/modes.py)."""
    try:
        if composite:
            return modes.composite_rgb(image)
        image = modes.eight_bit(image)
    except ValueError as e:
        raise ApiError(415, "unsupported_image", f"the {what}: {e}") from None
    return image if image.mode in ("L", "RGB", "RGBA", "LA", "PA", "P", "1") else image.convert("RGB")


def _apply_exif_orientation(image: Image.Image, what: str) -> None:
    """Rotate/flip the pixels in place as EXIF says (no copy when upright); a broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as e:
        log.info("ignoring the %s's unreadable EXIF orientation: %r", what, e)


def format_name(value: str | None, names) -> str | None:
    """A format as a client wrote it ("JPG", "Png") → our name for it among `names`, or a 422 that lists them."""
    if value is None:
        return None
    name = value.strip().lower()
    name = FORMAT_ALIASES.get(name, name)
    if name not in names:
        aliases = {ours: alias for alias, ours in FORMAT_ALIASES.items()}
        listed = ", ".join(f"{n} ({aliases[n]})" if n in aliases else n for n in names)
        raise ApiError(422, "invalid_field", f"format: {value[:40]!r} is not one of {listed}")
    return name


def output_format_for(requested: str | None, source: str | None, has_alpha: bool = False) -> str:
    """The request's format, else the composite's own (when JPEG/PNG/WebP), else PNG when the image has alpha
    (a TIFF or GIF with transparency: JPEG would drop it silently), else jpeg."""
    return requested or source or ("png" if has_alpha else "jpeg")


def acceptable_formats(accept: str | None) -> list[str] | None:
    """Our output formats the `Accept` header allows, best first; None when it allows any image (absent,
    `*/*`, `image/*`); [] when it allows none of them (→ 406)."""
    if not accept or not accept.strip():
        return None
    ranked: dict[str, float] = {}
    wildcard = 0.0
    for item in accept.split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        media_type = media_type.lower()
        if media_type in ("*/*", "image/*"):
            wildcard = max(wildcard, quality)
        for fmt, (_, ours) in OUTPUT_FORMATS.items():
            if media_type == ours:
                ranked[fmt] = quality
    if wildcard > 0 and all(q > 0 for q in ranked.values()):
        return None
    for fmt in OUTPUT_FORMATS:
        ranked.setdefault(fmt, wildcard)
    return [fmt for fmt, q in sorted(ranked.items(), key=lambda item: -item[1]) if q > 0]


FORMATS_WITHOUT_ALPHA = {"JPEG", "BMP"}  # Pillow format names
FORMATS_WITH_ICC = {"JPEG", "PNG", "WEBP", "TIFF", "AVIF"}


def save_options(image: Image.Image, pillow_format: str, quality: int, icc_profile: bytes | None,
                 png_compress_level: int = PNG_COMPRESS_LEVEL) -> tuple[Image.Image, dict]:
    """The one rule for writing an image, the service's answers and the CLI's files alike → (image to save, its
    `Image.save` options): formats without alpha get RGB, JPEG and WebP the quality, PNG the zlib level, and the
    ICC profile goes wherever the format holds one."""
    if pillow_format in FORMATS_WITHOUT_ALPHA and image.mode != "RGB":
        image = image.convert("RGB")
    params: dict = {}
    if pillow_format in ("JPEG", "WEBP", "AVIF"):
        params["quality"] = quality
    if pillow_format == "AVIF":
        params["speed"] = AVIF_SPEED
    elif pillow_format == "PNG":
        params["compress_level"] = png_compress_level
    if icc_profile and pillow_format in FORMATS_WITH_ICC:
        params["icc_profile"] = icc_profile
    return image, params


def encode(image: Image.Image, fmt: str, quality: int, png_compress_level: int,
           icc_profile: bytes | None) -> tuple[memoryview, str]:
    """Encode to fmt (an OUTPUT_FORMATS name) → (bytes view, media type). JPEG has no alpha: it is dropped."""
    pillow_format, media_type = OUTPUT_FORMATS[fmt]
    width, height = image.size
    if max(width, height) > _MAX_SIDE.get(fmt, max(width, height)):
        raise ApiError(422, "invalid_field", f"{fmt} cannot hold a {width}×{height} image (at most "
                       f"{_MAX_SIDE[fmt]} pixels a side); ask for format=png")
    image, params = save_options(image, pillow_format, quality, icc_profile, png_compress_level)
    buffer = BytesIO()
    image.save(buffer, pillow_format, **params)
    return buffer.getbuffer(), media_type
