"""Piecewise-linear colour curves: parameters → knots, the differentiable tensor path, 8-bit LUTs, rendering.

A curve with L pieces and positive weights p_i is y(x) = (L / Σp) · Σ_i clamp(x − i/L, 0, 1/L) · p_i, which
is the straight line through the knots (i/L, Σ_{j<i} p_j / Σp). The network predicts log-weights; p = exp(z)
keeps every curve monotone with y(0) = 0 and y(1) = 1, and clamping z bounds the normaliser away from zero.
Cascaded stages compose: C(x) = c_S(…c_2(c_1(x))), and the mask blends once: out = x + m·(C(x) − x). A calibrated
strength s < 1 applies part of the change, x + s·(C(x) − x): still monotone, still from 0 to 1. The same
formula serves a per-request strength (`Curves.with_strength`, 0 ≤ s ≤ 1; 0 = the composite unchanged).

The mismatch score is how far the applied 8-bit LUT moves the foreground's levels: Σ_v h(v)·|LUT(v) − v| / Σ_v h(v)
per channel, h the foreground's mask-weighted level histogram (see thumbnails.foreground_histogram).

The LUT, strength, mismatch and render are numpy and Pillow, shared by both runtimes; the tensor functions
(training and the GPU render) import torch when called, so serving with onnxruntime never loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = ["Curves", "apply_curves", "check_strength", "curve_knots", "render", "render_tensor", "MAX_LOG_SLOPE"]

MAX_LOG_SLOPE = 6.0  # |log p| bound: slopes within e^±12 of each other, normaliser ≥ L·e^-6
LEVELS = np.arange(256, dtype=np.float64) / 255.0
# Pixels per render strip: large enough that per-call overhead vanishes, small enough to stay in cache and
# to keep the render's temporaries a sliver of a big image (a whole-box crop + its curved copy were 2 copies).
RENDER_STRIP_PIXELS = 1 << 18
# Render tiles (width, height), under RENDER_STRIP_PIXELS: small enough that most tiles of a real mask are all
# 0, all 255 or binary (the fast paths of _render_tile), large enough that the per-tile calls cost little.
RENDER_TILE = (256, 256)


def curve_knots(log_slopes: torch.Tensor) -> torch.Tensor:
    """(..., L) log-weights → (..., L + 1) knot heights from 0 to 1."""
    import torch

    p = log_slopes.clamp(-MAX_LOG_SLOPE, MAX_LOG_SLOPE).exp()
    cum = torch.cat([torch.zeros_like(p[..., :1]), p.cumsum(-1)], -1)
    return cum / cum[..., -1:]


def apply_curve(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Evaluate one curve per channel. x: (B, 3, H, W) in [0, 1]; knots: (B, 3, L + 1)."""
    B, C, H, W = x.shape  # batch, channels, height, width
    pieces = knots.shape[-1] - 1
    t = x.clamp(0, 1).reshape(B, C, H * W) * pieces
    index = t.floor().clamp(max=pieces - 1)
    frac = t - index
    index = index.long()
    y0 = knots.gather(-1, index)
    y1 = knots.gather(-1, index + 1)
    return (y0 + frac * (y1 - y0)).reshape(B, C, H, W)


def apply_curves(x: torch.Tensor, mask: torch.Tensor, knots: torch.Tensor, strength: float = 1.0) -> list[torch.Tensor]:
    """Cascade every stage and blend with the mask. knots: (B, S, 3, L + 1); mask: (B, 1, H, W).

    Returns one output per stage (the cascade up to that stage), each x + s·m·(C_k(x) − x).
    """
    outputs = []
    curved = x
    for stage in range(knots.shape[1]):
        curved = apply_curve(curved, knots[:, stage])
        outputs.append(x + strength * mask * (curved - x))
    return outputs


def check_strength(strength) -> float:
    """A share of the curves' change to apply: a finite number in [0, 1] (ValueError naming `strength` else)."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength: must be a number from 0 to 1, got {strength!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"strength: must be from 0 to 1, got {strength!r}")
    return value


@dataclass(frozen=True)
class Curves:
    """The predicted curves of one image: knot heights (stages, 3, L + 1), float64, each row 0 → 1, the share of
    their change to apply, and (when known) the foreground's mask-weighted level histogram (3, 256), which gives
    the mismatch score."""

    knots: np.ndarray
    strength: float = 1.0
    histogram: np.ndarray | None = None

    def with_strength(self, strength: float | None) -> Curves:
        """The same curves applying `strength` of their change (None: keep this one). One formula for every
        path: evaluate, lut, to_cube and mismatch all read `self.strength`."""
        return self if strength is None else replace(self, strength=check_strength(strength))

    @property
    def mismatch(self) -> dict[str, float] | None:
        """How far the applied curves move the foreground, in 8-bit levels: the mask-weighted mean absolute
        change per channel ("r", "g", "b") and over all three ("mean"). 0 for an identity curve or strength 0.
        The model's own estimate of how far off the composite was, not a quality score. None without a
        histogram."""
        if self.histogram is None:
            return None
        change = np.abs(self.lut().astype(np.int64) - np.arange(256))  # (3, 256) levels moved
        weight = self.histogram.sum(axis=1)
        per_channel = (self.histogram * change).sum(axis=1) / np.maximum(weight, 1e-12)
        values = dict(zip("rgb", (float(v) for v in per_channel), strict=True))
        return {"mean": float(per_channel.mean()), **values}

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """The cascaded curve of each channel at values x in [0, 1] → (3, len(x))."""
        stages, _, n = self.knots.shape
        grid = np.linspace(0.0, 1.0, n)
        x = np.stack([np.asarray(x, dtype=np.float64)] * 3)
        y = x
        for s in range(stages):
            y = np.stack([np.interp(y[c], grid, self.knots[s, c]) for c in range(3)])
        return x + self.strength * (y - x)

    def lut(self) -> np.ndarray:
        """(3, 256) uint8 lookup table: the curve at every 8-bit level."""
        return np.rint(self.evaluate(LEVELS) * 255.0).astype(np.uint8)

    def to_cube(self, title: str = "S2CRNet harmonization curve") -> str:
        """An Adobe .cube 1D LUT (LUT_1D_SIZE 256) that image tools can apply."""
        table = self.evaluate(LEVELS).T
        lines = [f'TITLE "{title}"', "LUT_1D_SIZE 256", "DOMAIN_MIN 0.0 0.0 0.0", "DOMAIN_MAX 1.0 1.0 1.0"]
        lines += [f"{r:.6f} {g:.6f} {b:.6f}" for r, g, b in table]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, list[int]]:
        lut = self.lut()
        return {"r": lut[0].tolist(), "g": lut[1].tolist(), "b": lut[2].tolist()}


def render(image: Image.Image, mask: Image.Image, lut: np.ndarray) -> Image.Image:
    """Apply a (3, 256) LUT inside the mask, in place, at full resolution; returns `image`.

    image: "RGB" or "RGBA" (alpha passes through); mask: "L" of the same size (value/255 = weight, soft masks
    blend linearly). Only the mask's bounding box is touched, in tiles, so the temporaries (crop, its curved copy,
    the mask crop) stay around RENDER_STRIP_PIXELS however large the image is.
    """
    if image.mode not in ("RGB", "RGBA") or mask.mode != "L" or image.size != mask.size:
        raise ValueError(f"render needs an RGB/RGBA image and an L mask of one size, got "
                         f"{image.mode} {image.size} and {mask.mode} {mask.size}")
    box = mask.getbbox()
    if box is None:
        return image
    table = lut.astype(np.uint8).reshape(-1).tolist()
    if image.mode == "RGBA":
        table += list(range(256))
    left, top, right, bottom = box
    for y in range(top, bottom, RENDER_TILE[1]):
        for x in range(left, right, RENDER_TILE[0]):
            _render_tile(image, mask, table, (x, y, min(x + RENDER_TILE[0], right), min(y + RENDER_TILE[1], bottom)))
    return image


def _render_tile(image: Image.Image, mask: Image.Image, table: list[int], tile: tuple[int, int, int, int]) -> None:
    """One tile of render: where the mask is 0 nothing, where it is 255 the curved pixels copied, and a blend
    only in a tile with soft (1-254) levels. A binary tile pastes through a 1-bit mask: about 4× faster than the
    8-bit blend, and the same bytes, since the blend gives exactly the curved pixel at 255 and the old at 0."""
    weights = mask.crop(tile)
    histogram = weights.histogram()
    pixels = weights.width * weights.height
    if histogram[0] == pixels:
        return
    curved = image.crop(tile).point(table)
    if histogram[255] == pixels:
        image.paste(curved, tile)
    elif histogram[0] + histogram[255] == pixels:
        image.paste(curved, tile, weights.convert("1", dither=Image.Dither.NONE))
    else:
        image.paste(curved, tile, weights)


def render_tensor(image: torch.Tensor, mask: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """The same render on a device tensor (the GPU path). image: (H, W, 3|4) uint8; mask: (H, W) uint8."""
    import torch

    curved = torch.stack([lut[c].long()[image[..., c].long()] for c in range(3)], -1)
    rgb = image[..., :3].to(torch.int32)
    weight = mask.to(torch.int32).unsqueeze(-1)
    # Same rounding as Pillow's paste: (a·m + b·(255 − m) + 127) / 255.
    blended = ((curved * weight + rgb * (255 - weight) + 127) // 255).to(torch.uint8)
    if image.shape[-1] == 4:
        blended = torch.cat([blended, image[..., 3:]], -1)
    return blended
