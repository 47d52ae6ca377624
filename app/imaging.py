"""Bytes ↔ images: format whitelist, pixel limit before decoding, EXIF orientation, modes, encoding.

Images stay 8-bit Pillow images end to end; nothing here makes a float copy of a full-size image.
"""

import logging
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ApiError

__all__ = ["Decoded", "INPUT_FORMATS", "OUTPUT_FORMATS", "decode", "encode", "output_format_for"]

log = logging.getLogger(__name__)

INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")  # what pipelines send; anything else → 415
# request name → (Pillow format, media type)
OUTPUT_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_MAX_SIDE = {"jpeg": 65535, "webp": 16383}  # the formats' own limits (PNG's, 2^31, is past max_pixels)


@dataclass
class Decoded:
    image: Image.Image  # EXIF orientation applied; composite: RGB or RGBA, mask: any mode the model accepts
    format: str | None  # "jpeg", "png" or "webp" when the source was one of those, else None
    icc_profile: bytes | None  # kept only when it describes RGB data (a CMYK or grey profile would lie)


def decode(source: BinaryIO | bytes, what: str, max_pixels: int, composite: bool) -> Decoded:
    """Decode one uploaded image. `what` names it in errors ("composite", "mask").

    The pixel limit is checked from the header, before any pixel is decoded; Pillow's own decompression-bomb
    check (Image.MAX_IMAGE_PIXELS, set by the app) is a second fence. Only the first frame of an animation or
    a multi-page file is used.
    """
    fp = BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = Image.open(fp, formats=INPUT_FORMATS)
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large", f"the {what} has more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_image", f"the {what} is not an image in a supported format "
                       f"({', '.join(INPUT_FORMATS)})") from None
    except Exception as e:  # Pillow raises many types on hostile headers: all mean "cannot read this"
        log.info("cannot open the %s: %r", what, e)
        raise ApiError(400, "corrupt_image", f"the {what} has a corrupt header") from None

    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, "image_too_large", f"the {what} is {width}×{height} = {width * height} pixels, "
                       f"over the limit of {max_pixels}")
    if width == 0 or height == 0:
        raise ApiError(400, "corrupt_image", f"the {what} is empty ({width}×{height})")
    source_format = image.format.lower() if image.format and image.format.lower() in OUTPUT_FORMATS else None
    icc = image.info.get("icc_profile")
    try:
        image.load()
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large", f"the {what} has more than {max_pixels} pixels") from None
    except Exception as e:
        log.info("cannot decode the %s: %r", what, e)
        raise ApiError(400, "corrupt_image", f"the {what} is truncated or corrupt") from None
    _apply_exif_orientation(image, what)
    image = _normalise_mode(image, composite)
    keep_icc = composite and isinstance(icc, bytes) and icc[16:20] == b"RGB "  # ICC header: data colour space
    return Decoded(image, source_format, icc if keep_icc else None)


def _normalise_mode(image: Image.Image, composite: bool) -> Image.Image:
    """Composite → RGB or RGBA; mask → L (or a mode with alpha, which the model reads as the mask)."""
    if image.mode in _SIXTEEN_BIT:  # keep the high byte: the 16-bit range maps onto 0-255
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8), "L")
    elif image.mode in ("I", "F"):  # 32-bit integer/float samples: read as 8-bit levels, clipped
        image = image.convert("L")
    if not composite:
        return image if image.mode in ("L", "RGB", "RGBA", "LA", "PA", "P", "1") else image.convert("RGB")
    if image.mode in ("RGB", "RGBA"):
        return image
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info
    try:
        return image.convert("RGBA" if has_alpha else "RGB")
    except ValueError:
        raise ApiError(415, "unsupported_image", f"images in mode {image.mode} are not supported") from None


def _apply_exif_orientation(image: Image.Image, what: str) -> None:
    """Rotate/flip the pixels in place as EXIF says (no copy when upright); a broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as e:
        log.info("ignoring the %s's unreadable EXIF orientation: %r", what, e)


def output_format_for(requested: str | None, source: str | None) -> str:
    """The request's format, else the composite's own (when JPEG/PNG/WebP), else jpeg."""
    return requested or source or "jpeg"


def encode(image: Image.Image, fmt: str, quality: int, png_compress_level: int,
           icc_profile: bytes | None) -> tuple[memoryview, str]:
    """Encode to fmt ("jpeg", "png", "webp") → (bytes view, media type). JPEG has no alpha: it is dropped."""
    pillow_format, media_type = OUTPUT_FORMATS[fmt]
    width, height = image.size
    if max(width, height) > _MAX_SIDE.get(fmt, max(width, height)):
        raise ApiError(422, "invalid_field", f"{fmt} cannot hold a {width}×{height} image (at most "
                       f"{_MAX_SIDE[fmt]} pixels a side); ask for format=png")
    params: dict = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "jpeg":
        if image.mode != "RGB":
            image = image.convert("RGB")
        params.update(quality=quality)
    elif fmt == "png":
        params.update(compress_level=png_compress_level)
    else:
        params.update(quality=quality)
    buffer = BytesIO()
    image.save(buffer, pillow_format, **params)
    return buffer.getbuffer(), media_type
