"""Whole-photo renderings, the way HAdobe5k and Hday2night composites were made.

HAdobe5k pasted an object from one photographer's rendering of a raw photo into another photographer's rendering
of the same photo; Hday2night pasted it from the same scene at another time of day. `render_pair` does both kinds
on one of our photos: the real image is the photo in one look (or as it is), the composite takes its object from
the photo in another look. A look is a film or camera 3D LUT (`../shared/data/luts/film_luts.npz`) blended with
the identity, plus the exposure and white balance a photographer changes; a time-of-day look is a larger exposure
and colour-temperature change with the saturation that goes with it. 3D LUTs cross channels, which three
per-channel curves cannot undo exactly: an honest target.
"""

from pathlib import Path

import numpy as np

__all__ = ["FilmLooks", "render_pair"]

Array = np.ndarray
NIGHT_SHARE = 0.25  # of rendered pairs, those whose object comes from another time of day


class FilmLooks:
    """76 3D LUTs, 33³ entries each, indexed [blue, green, red] → (R, G, B), as luts/README.md describes."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise ValueError(f"film looks not found: {path} (../shared/data/luts/film_luts.npz, or --looks PATH)")
        with np.load(path) as data:
            self.luts = data["luts"].astype(np.float32) / 255  # K, 33, 33, 33, 3
            self.names = [str(n) for n in data["names"]]

    def __len__(self):
        return len(self.luts)

    def apply(self, index: int, x: Array) -> Array:
        """Trilinear lookup of float RGB (..., 3) in [0, 1] through LUT `index`."""
        lut = self.luts[index]
        n = lut.shape[0] - 1
        pos = np.clip(x, 0, 1) * n
        lo = np.minimum(pos.astype(np.int32), n - 1)
        frac = pos - lo
        r0, g0, b0 = lo[..., 0], lo[..., 1], lo[..., 2]
        fr, fg, fb = frac[..., 0:1], frac[..., 1:2], frac[..., 2:3]
        out = 0.0
        for db, wb in ((0, 1 - fb), (1, fb)):
            for dg, wg in ((0, 1 - fg), (1, fg)):
                for dr, wr in ((0, 1 - fr), (1, fr)):
                    out = out + wb * wg * wr * lut[b0 + db, g0 + dg, r0 + dr]
        return out


def _look(rng: np.random.Generator, looks: FilmLooks, x: Array, night: bool) -> Array:
    """One rendering of the photo x (float RGB in [0, 1])."""
    y = x
    if rng.random() < 0.8:
        film = looks.apply(int(rng.integers(len(looks))), x)
        y = x + rng.uniform(0.25, 1.0) * (film - x)
    # Colour temperature moves red and blue against each other; tint moves green against both.
    temperature, tint = rng.normal(0, 0.35 if night else 0.1), rng.normal(0, 0.04)
    gains = np.exp([temperature, tint, -temperature]).astype(np.float32)
    exposure = 2.0 ** (rng.uniform(-2.0, -0.5) if night else rng.uniform(-0.6, 0.6))
    y = y * (gains / (gains @ np.array([0.299, 0.587, 0.114], dtype=np.float32))) * exposure
    if night:  # less light, less colour
        luma = (y @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        y = luma + (y - luma) * rng.uniform(0.4, 0.9)
    return np.clip(y, 0, 1)


def render_pair(rng: np.random.Generator, photo: Array, mask: Array, looks: FilmLooks) -> tuple[Array, Array]:
    """photo (H, W, 3) uint8, mask (H, W) uint8 → (composite, real), uint8: the real image is the photo in one look
    (half the time as it is), the composite is the real image with its masked object from the photo in another."""
    x = photo.astype(np.float32) / 255
    night = rng.random() < NIGHT_SHARE
    real = x if rng.random() < 0.5 else _look(rng, looks, x, night=False)
    pasted = _look(rng, looks, x, night=night)
    if night and rng.random() < 0.5:  # a night scene with an object from the day, as often as the reverse
        real, pasted = pasted, real
    m = mask.astype(np.float32)[..., None] / 255
    composite = real + m * (pasted - real)
    return np.rint(composite * 255).astype(np.uint8), np.rint(real * 255).astype(np.uint8)
