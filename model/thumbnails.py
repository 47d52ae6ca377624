"""Composite + mask → the network's thumbnails, straight from uint8 images (no full-size float copy).

One thumbnail tensor per image, (8, S, S) float in [0, 1]:
  [0:3] the foreground crop (the mask's bounding box) resized, [3] the mask over that crop,
  [4:7] the whole composite resized,                            [7] the mask over the whole image.
The network multiplies them into the paper's inputs: composite × mask and composite × (1 − mask).
`thumbnail_array` is numpy (what serving uses, with either runtime); `make_thumbnails` is the same as a tensor,
for training, and importing it imports torch.
"""

import numpy as np
from PIL import Image

__all__ = ["foreground_histogram", "reduced_scale", "thumbnail_array", "THUMB_CHANNELS"]  # + make_thumbnails (lazily)

THUMB_CHANNELS = 8
_REDUCING_GAP = 2.0  # lets Pillow box-reduce huge images before the antialiased resize: fast and still smooth


def reduced_scale(size: tuple[int, int], box: tuple | None, thumb: int) -> float:
    """How small a reduced decode of a composite of `size` may be for make_thumbnails (1.0: full size): the whole
    image keeps 2·thumb a side (the resize's reducing gap) and the mask's `box` (None: not known yet) thumb.
    Then the curves stay within 2 levels of the full-size thumbnails' on the 28 real composites; with the box
    at 1/8 regardless they moved up to 5 (bench/thumbnail_luts.py, docs/BENCHMARKS.md)."""
    scale = _REDUCING_GAP * thumb / min(size)
    if box is not None:
        scale = max(scale, thumb / max(1, min(box[2] - box[0], box[3] - box[1])))
    return min(1.0, scale)


def _resize(im: Image.Image, size: int, box=None) -> np.ndarray:
    if im.mode == "RGBA":
        # Pillow premultiplies RGBA through a full-size copy before any filtered resize (1 s and +1 image at
        # 8192²). One band at a time costs a quarter image and gives exactly the RGB thumbnail (alpha is
        # ignored, as by the render's curves).
        return np.stack([_resize(im.getchannel(band), size, box) for band in "RGB"], -1)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=_REDUCING_GAP))


def _scaled_box(box: tuple, size: tuple, onto: tuple) -> tuple:
    """A box in an image of `size` → the same area in a resampled copy of size `onto` (floats; Pillow takes them)."""
    if size == onto:
        return box
    sx, sy = onto[0] / size[0], onto[1] / size[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def thumbnail_array(image: Image.Image, mask: Image.Image, size: int) -> np.ndarray:
    """image: RGB/RGBA, mask: L with at least one non-zero pixel → (8, size, size) float32.

    The image may be smaller than the mask: a reduced decode of the same picture (JPEG DCT scaling), which
    the service reads while the full-size pixels are still decoding. The mask's box is scaled onto it; the
    resize averages the same areas, so the thumbnails differ by decoder rounding only (docs/BENCHMARKS.md).
    """
    box = mask.getbbox()
    if box is None:
        raise ValueError("the mask selects nothing: it needs at least one non-zero pixel")
    fg = _resize(image, size, _scaled_box(box, mask.size, image.size))
    fg_mask = _resize(mask, size, box)
    bg = _resize(image, size)
    bg_mask = _resize(mask, size)
    stacked = np.stack([*np.moveaxis(fg, -1, 0), fg_mask, *np.moveaxis(bg, -1, 0), bg_mask])  # 8, S, S uint8
    return stacked.astype(np.float32) / np.float32(255.0)


def _make_thumbnails(image: Image.Image, mask: Image.Image, size: int):
    """thumbnail_array as a torch tensor (8, size, size) float32, for training."""
    import torch

    return torch.from_numpy(thumbnail_array(image, mask, size))


def __getattr__(name: str):
    """`make_thumbnails` imports torch when it is imported (training code, at the top of its module), not at its
    first call: a call measured for time or memory then costs only the thumbnails."""
    if name == "make_thumbnails":
        import torch  # noqa: F401

        _make_thumbnails.__name__ = _make_thumbnails.__qualname__ = "make_thumbnails"
        return _make_thumbnails
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def foreground_histogram(thumbs) -> np.ndarray:
    """(8, S, S) thumbnails → (3, 256) float64: the foreground's level histogram, each pixel weighted by its mask.

    Read from the foreground crop thumbnail (channels 0-3: the mask's bounding box at S², so every image costs
    the same S² pixels, however large): an area-averaged view of the full-size crop. Its levels are exact 8-bit
    values (uint8 / 255 in float32 rounds back), so an identity curve scores exactly 0.
    """
    crop = np.asarray(thumbs[:4].detach().cpu() if hasattr(thumbs, "detach") else thumbs[:4])
    levels = np.rint(crop[:3] * 255.0).astype(np.int64).reshape(3, -1)  # 3, S·S
    weight = crop[3].astype(np.float64).reshape(-1)
    return np.stack([np.bincount(levels[c], weights=weight, minlength=256) for c in range(3)])
