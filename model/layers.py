"""Layer input: a foreground (RGBA cutout, or RGB + matte) placed on a background → composite + mask, and the
harmonized foreground cut back out as a layer. The service, the CLI and `Harmonizer` all call this module.

    layered = compose(cutout, background, at=(120, 40), scale=0.5, feather=2)
    layered.composite, layered.mask          # what the network harmonizes, exactly like a composite + mask
    cut_layer(layered, curves.lut())         # RGBA of the scaled foreground's size, its alpha unchanged

Rules, each for a reason:
- Placement is in background pixels: `at` is the scaled foreground's top-left and may be negative (what falls
  outside is cut off); `scale` resamples foreground and alpha together with Pillow (premultiplied, so no dark
  fringes), or `box` fits the foreground into x0,y0,x1,y1 keeping its aspect, centred.
- `feather` blurs the matte (Gaussian, that many pixels) and keeps the darker of blurred and original: the edge
  softens inwards only, because cutouts from segmenters hold black or stale colours where alpha is 0, and
  spreading alpha outwards would show them as a dark halo.
- Composition is 8-bit and in place on the background (Pillow `paste` with the matte, or `alpha_composite` for
  an RGBA background): no float copy of a full-size image.
- The layer is the scaled foreground with the curves applied to every pixel and its own (unfeathered) alpha:
  where the matte is opaque, its pixels are exactly the flattened result's.
Bad placements raise `LayerError`, a ValueError that names the request field at fault.
"""

import math
import numbers
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from .inputs import image_to_pil, mask_to_pil

__all__ = ["Layered", "LayerError", "MAX_FEATHER", "MAX_LAYER_PIXELS", "Placement", "compose", "cut_layer",
           "parse_box", "parse_point", "place", "whole_number"]

MAX_FEATHER = 1000.0  # pixels; wider is no edge any more, and a huge blur radius only costs time
# Default ceiling on the scaled foreground (width × height) for callers without their own limit: Pillow's own
# decompression-bomb error threshold, so a typo in `scale` fails at once instead of exhausting memory.
MAX_LAYER_PIXELS = 2 * 89_478_485
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0  # box-reduce first when shrinking a lot: fast, and Lanczos on the rest keeps it sharp


class LayerError(ValueError):
    """A placement or layer input that cannot work; `field` names the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Placement:
    """Where the scaled foreground lands: top-left (x, y) in background pixels and its scaled size."""

    x: int
    y: int
    width: int
    height: int


@dataclass
class Layered:
    """A composed layer input: what to harmonize, and what cut_layer needs."""

    composite: Image.Image  # the background's mode and size, with the foreground pasted in
    mask: Image.Image  # "L", background size: the placed (feathered) matte
    foreground: Image.Image  # "RGBA", the scaled foreground with its own alpha (not feathered)
    placement: Placement


# --- parsing and checking -------------------------------------------------------------------------------------
def whole_number(value, field: str) -> int:
    """An int from an int, an integral float or a decimal string; LayerError naming `field` else."""
    if isinstance(value, bool):
        raise LayerError(field, f"must be a whole number of pixels, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise LayerError(field, f"must be a whole number of pixels, got {str(value)[:40]!r}")


def parse_point(text: str, field: str = "at") -> tuple[int, int]:
    """'X,Y' → (x, y), negatives allowed."""
    parts = str(text).split(",")
    if len(parts) != 2:
        raise LayerError(field, f"must be X,Y (two whole numbers), got {str(text)[:40]!r}")
    return whole_number(parts[0], field), whole_number(parts[1], field)


def parse_box(text: str, field: str = "box") -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' → a tuple of four ints (checked by place: x1 > x0, y1 > y0)."""
    parts = str(text).split(",")
    if len(parts) != 4:
        raise LayerError(field, f"must be x0,y0,x1,y1 (four whole numbers), got {str(text)[:40]!r}")
    return tuple(whole_number(part, field) for part in parts)  # type: ignore[return-value]


def _positive_real(value, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LayerError(field, f"must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise LayerError(field, f"must be a number greater than 0, got {str(value)[:40]!r}")
    return number


def _feather(value) -> float:
    try:
        radius = float(value)
    except (TypeError, ValueError):
        raise LayerError("feather", f"must be a number of pixels, got {str(value)[:40]!r}") from None
    if not (math.isfinite(radius) and 0 <= radius <= MAX_FEATHER):
        raise LayerError("feather", f"must be from 0 to {MAX_FEATHER:g} pixels, got {str(value)[:40]!r}")
    return radius


def place(foreground_size: tuple[int, int], background_size: tuple[int, int], at=None, scale=None, box=None,
          max_pixels: int | None = MAX_LAYER_PIXELS) -> Placement:
    """Where a foreground of `foreground_size` lands: at (x, y) with `scale` (default (0, 0) and 1), or fitted
    into `box` (x0, y0, x1, y1), aspect kept, centred. Checks everything that does not need pixels."""
    fw, fh = foreground_size
    if box is not None:
        if at is not None or scale is not None:
            raise LayerError("box", "give either x, y (with an optional scale) or a box, not both")
        x0, y0, x1, y1 = (whole_number(v, "box") for v in (box if not isinstance(box, str) else parse_box(box)))
        if x1 <= x0 or y1 <= y0:
            raise LayerError("box", f"needs x1 > x0 and y1 > y0, got {x0},{y0},{x1},{y1}")
        factor, field = min((x1 - x0) / fw, (y1 - y0) / fh), "box"
    else:
        factor, field = (1.0 if scale is None else _positive_real(scale, "scale")), "scale"
    width, height = fw * factor, fh * factor  # floats first: a huge factor must not build a huge int
    if max_pixels is not None and width * height > max_pixels:
        raise LayerError(field, f"makes the foreground {width:.0f}×{height:.0f} pixels, over the limit of "
                         f"{max_pixels}")
    width, height = round(width), round(height)
    if width < 1 or height < 1:
        raise LayerError(field, f"makes the {fw}×{fh} foreground smaller than one pixel")
    if box is not None:
        x, y = x0 + (x1 - x0 - width) // 2, y0 + (y1 - y0 - height) // 2
    else:
        x, y = (0, 0) if at is None else (whole_number(at[0], "x"), whole_number(at[1], "y"))
    bw, bh = background_size
    if x >= bw or y >= bh or x + width <= 0 or y + height <= 0:
        where = "box" if box is not None else "x, y"
        raise LayerError(where, f"the {width}×{height} foreground at {x},{y} lands entirely outside the "
                         f"{bw}×{bh} background")
    return Placement(x, y, width, height)


# --- composing and cutting out --------------------------------------------------------------------------------
def _rgba_foreground(foreground, foreground_mask) -> Image.Image:
    """The foreground as RGBA: its own alpha, or `foreground_mask` (which wins) as the matte."""
    try:
        image = image_to_pil(foreground)
    except ValueError as e:
        raise LayerError("foreground", str(e)) from None
    if foreground_mask is not None:
        try:
            matte = mask_to_pil(foreground_mask)
        except ValueError as e:
            raise LayerError("foreground_mask", str(e)) from None
        if matte.size != image.size:
            raise LayerError("foreground_mask", f"is {matte.size[0]}×{matte.size[1]} but the foreground is "
                             f"{image.size[0]}×{image.size[1]}; they must be the same size")
        image = image.convert("RGB") if image.mode != "RGB" else image.copy()
        image.putalpha(matte)
    elif image.mode != "RGBA":
        image = image.convert("RGBA")  # no matte at all: the whole rectangle is the object
    if image.getchannel("A").getbbox() is None:
        raise LayerError("foreground_mask" if foreground_mask is not None else "foreground",
                         "the matte is fully transparent: there is no object to place")
    return image


def compose(foreground, background, at=None, scale=None, box=None, feather=0.0, foreground_mask=None,
            max_pixels: int | None = MAX_LAYER_PIXELS, copy: bool = True) -> Layered:
    """Place `foreground` on `background` → Layered (composite, mask, scaled foreground, placement).

    foreground: RGBA (alpha = matte) or RGB/grey with `foreground_mask`; PIL or uint8 numpy. background: PIL or
    numpy RGB/RGBA (grey comes back RGB). copy=False composes into a PIL background in place (the service's
    decoded upload: no second full-size image).
    """
    fg = _rgba_foreground(foreground, foreground_mask)
    try:
        bg = image_to_pil(background)
    except ValueError as e:
        raise LayerError("background", str(e)) from None
    if copy and bg is background:
        bg = bg.copy()  # never modify the caller's image
    radius = _feather(feather)
    placement = place(fg.size, bg.size, at, scale, box, max_pixels)
    if fg.size != (placement.width, placement.height):
        fg = fg.resize((placement.width, placement.height), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    alpha = fg.getchannel("A")
    matte = alpha
    if radius > 0:
        matte = ImageChops.darker(alpha.filter(ImageFilter.GaussianBlur(radius)), alpha)
    # The part of the foreground that lands on the background, in foreground and in background coordinates.
    x, y, width, height = placement.x, placement.y, placement.width, placement.height
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + width, bg.width), min(y + height, bg.height)
    inside = (left - x, top - y, right - x, bottom - y)
    visible = matte.crop(inside)
    if visible.getbbox() is None:
        where = "box" if box is not None else "x, y"
        raise LayerError(where, "only transparent parts of the foreground land on the background")
    mask = Image.new("L", bg.size, 0)
    mask.paste(visible, (left, top))
    if mask.getextrema()[0] == 255:
        raise LayerError("box" if box is not None else "x, y", "the opaque foreground covers the whole "
                         "background: there is no background left to harmonize toward")
    if bg.mode == "RGBA":  # an RGBA background: Porter-Duff "over", so its own transparency composes too
        region = bg.crop((left, top, right, bottom))
        piece = fg.crop(inside)
        piece.putalpha(visible)
        region.alpha_composite(piece)
        bg.paste(region, (left, top))
    else:
        bg.paste(fg.crop(inside).convert("RGB"), (left, top), visible)
    return Layered(bg, mask, fg, placement)


def cut_layer(layered: Layered, lut: np.ndarray) -> Image.Image:
    """The harmonized foreground as RGBA at its scaled size: the (3, 256) LUT on every pixel, alpha unchanged."""
    table = np.asarray(lut, dtype=np.uint8).reshape(-1).tolist() + list(range(256))
    return layered.foreground.point(table)
