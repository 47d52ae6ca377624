"""PIL images or numpy arrays in → a validated RGB(A) image and an L mask of one size; a ValueError that names
the input and what was expected otherwise. Sample formats (16-bit, float) follow model/modes.py."""

import numpy as np
from PIL import Image, ImageOps
from pillow_heif import register_heif_opener

from .modes import composite_rgb, eight_bit

# HEIC/HEIF (phones' default) opens with Image.open once `model` is imported: the service, the CLI and Python
# callers alike. libheif applies the file's rotation and mirroring (and resets EXIF's orientation to 1, so it is
# not applied twice) and hands over 10- and 12-bit images as 8-bit; the ICC profile and EXIF are in `info`.
# AVIF is Pillow's own.
register_heif_opener()

__all__ = ["check_mask", "check_not_swapped", "image_to_pil", "mask_to_pil", "open_upright", "to_pil_pair"]


def _to_uint8_array(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:  # 16-bit samples: the high byte, as for 16-bit files (model/modes.py)
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"the {what} contains NaN or infinite values")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"a float {what} must hold values in [0, 1]")
        return np.rint(array * 255).astype(np.uint8)
    raise ValueError(f"the {what} must be uint8, uint16, bool or float in [0, 1], got dtype {array.dtype}")


def image_to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return composite_rgb(image)  # 16-bit and float samples scaled, not clipped (model/modes.py)
    array = _to_uint8_array(np.asarray(image), "image")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"the image must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    if min(array.shape[:2]) == 0:
        raise ValueError("the image is empty")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[-1] == 3 else "RGBA")


def mask_to_pil(mask) -> Image.Image:
    if isinstance(mask, Image.Image):
        mask = eight_bit(mask)  # a 16-bit mask at 32768 is half strength, a float one in [0, 1] scaled
        if mask.mode == "L":
            return mask
        if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
            # An alpha mask wins only when it is not fully opaque; else the grey levels are the mask.
            alpha = mask.convert("RGBA").getchannel("A")
            if alpha.getextrema()[0] < 255:
                return alpha
        return mask.convert("L")
    array = _to_uint8_array(np.asarray(mask), "mask")
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"the mask must be H×W (or H×W×1|3|4), got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array), "L")


def check_mask(size: tuple[int, int], mask: Image.Image) -> None:
    """A mask (L, from mask_to_pil) fits a composite of `size` and holds both foreground and background."""
    if size != mask.size:
        raise ValueError(f"mask size {mask.size[0]}×{mask.size[1]} differs from image size {size[0]}×{size[1]}")
    low, high = mask.getextrema()
    if high == 0:
        raise ValueError("the mask selects nothing: it needs at least one non-zero (foreground) pixel")
    if low == 255:
        raise ValueError("the mask selects the whole image: there is no background to harmonize toward")
    if high == 1:  # a 0/1 mask would blend at 1/255 strength: nothing visible, which looks like a bug of ours
        raise ValueError("the mask's largest value is 1, but masks are 0–255 (255 = the pasted object, grey "
                         "levels blend): scale a 0/1 mask by 255")


SWAP_CHECK_SIDE = 64  # the swapped-arguments check looks at both inputs at this size (nearest: levels kept)


def _levels(image: Image.Image) -> np.ndarray:
    small = image.convert("RGB").resize((SWAP_CHECK_SIDE, SWAP_CHECK_SIDE), Image.Resampling.NEAREST)
    return np.asarray(small, np.int16)  # S, S, 3


def check_not_swapped(image: Image.Image, mask) -> None:
    """A composite in black and white beside a mask in colour: the arguments were given the wrong way round
    (which would otherwise 'harmonize' the matte). Only both together count: a grey photo, or a mask saved as
    RGB, is fine."""
    if isinstance(mask, np.ndarray) and mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = Image.fromarray(np.ascontiguousarray(_to_uint8_array(mask[..., :3], "mask")), "RGB")
    if not isinstance(mask, Image.Image) or mask.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return
    composite, photo = _levels(image), _levels(mask)
    spread = composite.max(-1) - composite.min(-1)
    grey = composite[..., 0]
    matte_like = ((spread <= 8).mean() > 0.99 and ((grey <= 16) | (grey >= 239)).mean() > 0.9
                  and grey.min() <= 16 and grey.max() >= 239)
    in_colour = ((photo.max(-1) - photo.min(-1)) > 24).mean() > 0.1
    if matte_like and in_colour:
        raise ValueError("the composite looks like a mask (black and white) and the mask like a photo (in "
                         "colour): were the two swapped? The composite is the photo; the mask is its matte")


def to_pil_pair(image, mask) -> tuple[Image.Image, Image.Image]:
    """Validate and normalise a composite and its mask: RGB/RGBA image, L mask, same size, mixed fg and bg, not
    given the wrong way round."""
    image = image_to_pil(image)
    check_not_swapped(image, mask)
    mask = mask_to_pil(mask)
    check_mask(image.size, mask)
    return image, mask


def open_upright(source, mode: str) -> Image.Image:
    """A file (path or PIL image) in `mode`, turned by its EXIF orientation as cameras mean it to be shown — the
    rule of the service's decoder (app/imaging.py), for the tools that read local files (evaluation, video)."""
    if isinstance(source, Image.Image):
        return source.convert(mode)
    with Image.open(source) as im:
        return ImageOps.exif_transpose(im).convert(mode)
