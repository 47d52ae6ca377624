"""Pillow modes → the 8-bit images the model works on: the one rule for the service, the CLI and the Python API.

The network and the render take 8-bit RGB/RGBA composites and 8-bit masks. Pillow's own `convert` clips
16-bit and 32-bit samples at 255 (a 16-bit photo turns white, a 16-bit mask at 32768 becomes full strength),
so wider samples are scaled onto 0–255 here first:
  16-bit (I;16*)            → the high byte (65535 → 255, 32768 → 128)
  32-bit integer (I)        → the same when any sample is over 255 (16-bit data Pillow widened), else as is
  float (F)                 → × 255 when every sample lies in [0, 1] (as the Python API reads float arrays),
                              else read as 0–255 levels; both clipped
48-bit RGB and 64-bit RGBA PNGs already open as RGB/RGBA with the high byte of each sample.
"""

import numpy as np
from PIL import Image

__all__ = ["ALPHA_MODES", "eight_bit", "composite_rgb", "has_alpha"]

ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")  # modes whose last band is transparency (not LAB's "A")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def eight_bit(image: Image.Image) -> Image.Image:
    """The image unchanged when its samples are 8-bit (or 1-bit), else an 8-bit "L" copy scaled as above."""
    if image.mode in _SIXTEEN_BIT:
        return _grey(np.asarray(image), 256)
    if image.mode == "I":
        samples = np.asarray(image)
        return _grey(samples, 256 if samples.size and samples.max() > 255 else 1)
    if image.mode == "F":
        samples = np.asarray(image)
        if not np.isfinite(samples).all():
            raise ValueError("the image holds NaN or infinite samples")
        in_unit_range = samples.size and samples.min() >= 0 and samples.max() <= 1
        return Image.fromarray(np.clip(np.rint(samples * 255 if in_unit_range else samples), 0, 255)
                               .astype(np.uint8), "L")
    return image


def _grey(samples: np.ndarray, divisor: int) -> Image.Image:
    if samples.dtype != np.uint16:  # 32-bit samples may be negative or past 16 bits
        samples = np.clip(samples, 0, 255 * divisor + divisor - 1)
    return Image.fromarray((samples // divisor).astype(np.uint8), "L")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def composite_rgb(image: Image.Image) -> Image.Image:
    """A composite as RGB, or RGBA when it has transparency; every other colour space (grey, palette, CMYK,
    YCbCr, LAB, HSV, 16-bit, float) converted. ValueError for a mode Pillow cannot convert."""
    if image.mode in ("RGB", "RGBA"):
        return image
    alpha = has_alpha(image)
    image = eight_bit(image)
    try:
        return image.convert("RGBA" if alpha else "RGB")
    except ValueError:
        raise ValueError(f"images in mode {image.mode} are not supported") from None
