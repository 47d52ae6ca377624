"""Training data: real photos recoloured on the fly, and an iHarmony4-format reader.

A training pair is (composite, real, mask): the real photo, and the same photo with its masked object recoloured
the way iHarmony4 was built — colour-statistics transfer toward another photo's object or region (Lab or RGB),
retouching (exposure, white balance, gamma, contrast, saturation, vibrance, tone curves, mild hue shifts), or a
combination — plus a share of untouched pairs, so the network also learns to leave harmonious images alone.
Every sample is a pure function of (seed, index), which makes training resumable exactly.
"""

import csv
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import color

from ..config import UNKNOWN, ModelConfig
from ..iharmony import read_iharmony_labels, read_iharmony_split
from ..thumbnails import make_thumbnails
from .kinds import object_kinds
from .looks import FilmLooks, render_pair

__all__ = ["Pair", "PhotoSource", "IHarmonySource", "HarmonyPairs", "is_validation", "recolour", "lab_to_rgb",
           "validation_batches", "colour_neighbours", "THING_CATEGORIES", "VAL_SEED", "OBJECTS_BUILD"]

VAL_PERCENT = 10
VAL_SEED = 20211  # fixed: the held-out pairs that training validates on and `s2crnet eval` scores never change
UNTOUCHED_SHARE = 0.1  # the default; training can ask for more (--untouched-share), validation keeps this
TRANSFER_SHARE = 4 / 9  # of the recoloured pairs, those made by statistics transfer (the rest: retouching only)
SIMILAR_DONORS = 20  # a "similar" donor is one of this many photos whose objects' mean colour is nearest
# Foreground classes that are things (iHarmony4's foregrounds are objects: people, animals, food, products); the
# rest of the manifest's classes are stuff regions (sky, terrain, vegetation, water, building).
THING_CATEGORIES = frozenset({"person", "animal", "vehicle", "other", UNKNOWN})
Array = np.ndarray
OBJECTS_BUILD = ("MIRROR_ROOT=<fetch's snapshot folder> python ../shared/data/objects/build.py --out ../objects "
                 "--check (after fetching the three snapshots that ../shared/data/objects/README.md names)")


def is_validation(photo_id: str) -> bool:
    """A fixed ~10% of photos, by a stable hash of the id: never trained on."""
    return int(hashlib.sha1(photo_id.encode()).hexdigest(), 16) % 100 < VAL_PERCENT


@dataclass
class Pair:
    composite: Array  # H, W, 3 uint8
    real: Array  # H, W, 3 uint8
    mask: Array  # H, W uint8
    category: str


# ----------------------------------------------------------------------------------------------------------------
# Recolouring: each op maps float RGB (H, W, 3) in [0, 1] to the same, drawn from an rng
def _luma(x: Array) -> Array:
    return x @ np.array([0.299, 0.587, 0.114], dtype=x.dtype)


def _exposure(rng, x, **_):
    return x * 2.0 ** rng.uniform(-1.0, 1.0)


def _white_balance(rng, x, **_):
    gains = np.exp(rng.normal(0, 0.12, 3))
    return x * (gains / (gains @ [0.299, 0.587, 0.114]))


def _gamma(rng, x, **_):
    return np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.45, 0.45))


def _contrast(rng, x, mask, **_):
    mean = x[mask > 0.5].mean(0) if (mask > 0.5).any() else x.mean((0, 1))
    return (x - mean) * rng.uniform(0.65, 1.45) + mean


def _saturation(rng, x, **_):
    luma = _luma(x)[..., None]
    return luma + (x - luma) * rng.uniform(0.45, 1.6)


def _vibrance(rng, x, **_):
    luma = _luma(x)[..., None]
    saturation = np.clip(x.max(-1, keepdims=True) - x.min(-1, keepdims=True), 0, 1)
    return luma + (x - luma) * (1 + rng.uniform(-0.6, 0.8) * (1 - saturation))


def _tone_curve(rng, x, **_):
    """A random monotone curve through 6 knots, shared by the channels or one per channel."""
    grid = np.linspace(0, 1, 6)
    per_channel = rng.random() < 0.5
    out = np.empty_like(x)
    for c in range(3):
        if c == 0 or per_channel:
            steps = rng.dirichlet(np.full(5, 6.0))
            knots = np.concatenate([[0], np.cumsum(steps)])
        out[..., c] = np.interp(x[..., c], grid, knots)
    return out


def _hue_shift(rng, x, **_):
    """Rotate chroma in YIQ by up to ±18°."""
    yiq = color.rgb2yiq(x)
    angle = np.deg2rad(rng.uniform(-18, 18))
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1] = i * np.cos(angle) - q * np.sin(angle)
    yiq[..., 2] = i * np.sin(angle) + q * np.cos(angle)
    return color.yiq2rgb(yiq)


RETOUCH_OPS = (_exposure, _white_balance, _gamma, _contrast, _saturation, _vibrance, _tone_curve, _hue_shift)


def _match_histograms(values: Array, region: Array, donor: Array) -> Array:
    """Per channel, map each value to the donor's value at the quantile it has in `region` (non-parametric)."""
    levels = np.linspace(0, 1, 65)
    out = np.empty_like(values)
    for c in range(values.shape[1]):
        out[:, c] = np.interp(values[:, c], np.quantile(region[:, c], levels), np.quantile(donor[:, c], levels))
    return out


def _statistics_transfer(rng, x, mask, donor: Array, donor_weight: Array, histogram_share: float = 0.0):
    """Move the masked region's colour statistics toward a donor region's (Lab or RGB), as iHarmony4 did: per-channel
    mean/std (parametric) or, for `histogram_share` of the draws, the whole per-channel histogram."""
    lab = rng.random() < 0.6
    src = color.rgb2lab(x) if lab else x
    dst = color.rgb2lab(donor) if lab else donor
    w_src = (mask > 0.5).reshape(-1)
    w_dst = (donor_weight > 0.5).reshape(-1)
    if w_src.sum() < 4 or w_dst.sum() < 4:
        return x
    s, d = src.reshape(-1, 3)[w_src], dst.reshape(-1, 3)[w_dst]
    strength = rng.uniform(0.4, 1.0)
    if histogram_share > 0 and rng.random() < histogram_share:
        moved = _match_histograms(src.reshape(-1, 3), s, d).reshape(src.shape)
    else:
        mu_s, sd_s, mu_d, sd_d = s.mean(0), s.std(0) + 1e-3, d.mean(0), d.std(0) + 1e-3
        ratio = np.clip(sd_d / sd_s, 0.5, 2.0)
        moved = (src - mu_s) * ratio + mu_d
    moved = src + strength * (moved - src)
    return lab_to_rgb(moved) if lab else moved


def lab_to_rgb(lab: Array) -> Array:
    """Lab → RGB in [0, 1]; out-of-gamut values are clipped, which is what we want, so without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.clip(color.lab2rgb(lab), 0, 1)


def recolour(rng: np.random.Generator, real: Array, mask: Array, donor: tuple[Array, Array] | None,
             untouched_share: float = UNTOUCHED_SHARE, histogram_share: float = 0.0) -> Array:
    """real: (H, W, 3) uint8, mask: (H, W) uint8 → composite uint8; pixels where mask == 0 are untouched."""
    x = real.astype(np.float32) / 255.0
    m = mask.astype(np.float32) / 255.0
    draw = rng.random()
    if draw < untouched_share:
        return real.copy()
    y = x
    if (draw - untouched_share) / (1 - untouched_share) < TRANSFER_SHARE and donor is not None:
        y = _statistics_transfer(rng, y, m, *donor, histogram_share=histogram_share)
        if rng.random() < 0.3:
            y = RETOUCH_OPS[rng.integers(len(RETOUCH_OPS))](rng, y, mask=m)
    else:
        for op in rng.choice(len(RETOUCH_OPS), size=rng.integers(1, 4), replace=False):
            y = RETOUCH_OPS[op](rng, y, mask=m)
    y = np.clip(y, 0, 1)
    composite = x + m[..., None] * (y - x)
    return np.rint(composite * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Sources
def _load_rgb(path: Path, max_side: int | None = None) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return im


def _load_mask(path: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as im:
        mask = im.convert("L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)


class PhotoSource:
    """The shared photo manifest: each photo is its own ground truth; pairs come from `recolour`."""

    def __init__(self, manifest: str | Path, split: str = "train", max_side: int = 320,
                 untouched_share: float = UNTOUCHED_SHARE, same_category_share: float = 0.0,
                 thing_share: float = 0.0, histogram_share: float = 0.0, similar_share: float = 0.0,
                 same_kind_share: float = 0.0, looks: FilmLooks | None = None, render_share: float = 0.0):
        manifest = Path(manifest)
        if not manifest.exists():
            raise ValueError(f"photo manifest not found: {manifest}. The object corpus (../objects/manifest.csv) is "
                             f"built, not stored: {OBJECTS_BUILD}")
        self.untouched_share = untouched_share
        self.same_category_share = same_category_share
        self.thing_share = thing_share  # 0: every photo equally likely as the one recoloured
        self.histogram_share = histogram_share
        self.similar_share = similar_share
        self.same_kind_share = same_kind_share
        self.looks, self.render_share = looks, render_share  # HAdobe5k/Hday2night-like pairs (model.training.looks)
        with manifest.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if is_validation(r["id"]) == (split == "val")]
        if not rows:
            raise ValueError(f"no {split} photos in {manifest}")
        root = manifest.parent
        self.ids = [r["id"] for r in rows]
        self.categories = [r["category"] or UNKNOWN for r in rows]
        self.images = [np.asarray(_load_rgb(root / r["image"], max_side)) for r in rows]
        self.masks = [np.asarray(_load_mask(root / r["mask"], (im.shape[1], im.shape[0])))
                      for r, im in zip(rows, self.images, strict=True)]
        self.by_category: dict[str, list[int]] = {}
        for i, category in enumerate(self.categories):
            self.by_category.setdefault(category, []).append(i)
        self.things = [i for i, category in enumerate(self.categories) if category in THING_CATEGORIES]
        self.similar = colour_neighbours(self.images, self.masks) if similar_share > 0 else None
        self.by_kind: dict[str, list[int]] = {}
        self.kinds: list[str] = []
        if same_kind_share > 0:
            self.kinds = object_kinds(self.ids, self.images, self.masks, cache_key=str(manifest.resolve()))
            for i, kind in enumerate(self.kinds):
                self.by_kind.setdefault(kind, []).append(i)

    def __len__(self):
        return len(self.images)

    def donor(self, rng: np.random.Generator, i: int) -> tuple[int, bool]:
        """The photo whose colours photo i's object moves toward, and whether it is a peer (an object of the same
        kind, the same category or a similar colour: then its object is the donor region)."""
        j = int(rng.integers(len(self)))
        # HFlickr and HCOCO were made by transferring colour from an object of the same category in another photo;
        # "kind" is the fine class (ImageNet synset), "category" the coarse one.
        same_kind = self.same_kind_share > 0 and rng.random() < self.same_kind_share
        same_category = not same_kind and self.same_category_share > 0 and rng.random() < self.same_category_share
        similar = not (same_kind or same_category) and self.similar is not None and rng.random() < self.similar_share
        if not (same_kind or same_category or similar):
            return j, False
        peers = (self.by_kind[self.kinds[i]] if same_kind else
                 self.by_category[self.categories[i]] if same_category else self.similar[i])
        if len(peers) > 1:  # a kind of one photo has no other object to give colour: any donor then
            j = peers[int(rng.integers(len(peers)))]
        return j, True

    def sample(self, rng: np.random.Generator, size: int) -> Pair:
        if self.thing_share > 0 and self.things and rng.random() < self.thing_share:
            i = self.things[int(rng.integers(len(self.things)))]
        else:
            i = int(rng.integers(len(self)))
        real, mask = _augment(rng, self.images[i], self.masks[i], size)
        if self.looks is not None and rng.random() < self.render_share:
            composite, real = render_pair(rng, real, mask, self.looks)
            return Pair(composite, real, mask, self.categories[i])
        j, peer = self.donor(rng, i)
        donor_image, donor_mask = _augment(rng, self.images[j], self.masks[j], size)
        # Donor region: the other photo's object, its background, or the whole photo.
        kind = 0 if peer else rng.integers(3)
        weight = donor_mask if kind == 0 else (255 - donor_mask if kind == 1 else np.full_like(donor_mask, 255))
        donor = (donor_image.astype(np.float32) / 255.0, weight)
        composite = recolour(rng, real, mask, donor, self.untouched_share, self.histogram_share)
        return Pair(composite, real, mask, self.categories[i])


def colour_neighbours(images: list[Array], masks: list[Array], count: int = SIMILAR_DONORS) -> list[list[int]]:
    """For each photo, the `count` other photos whose objects' mean Lab colours are nearest to its object's."""
    means = np.stack([color.rgb2lab(image[mask > 127][None] / 255.0)[0].mean(0) if (mask > 127).any()
                      else np.full(3, np.inf) for image, mask in zip(images, masks, strict=True)])
    distance = np.linalg.norm(means[:, None] - means[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    count = min(count, len(images) - 1)
    return [list(np.argsort(row)[:count]) if count > 0 else [i] for i, row in enumerate(distance)]


def _augment(rng, image: Array, mask: Array, size: int) -> tuple[Array, Array]:
    """Random crop (keeping some of the object and some background), flip, rescale to size × size."""
    h, w = mask.shape
    for _ in range(10):
        scale = rng.uniform(0.6, 1.0)
        ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
        y, x = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        crop = mask[y:y + ch, x:x + cw]
        fraction = (crop > 127).mean()
        if 0.01 <= fraction <= 0.95:
            break
    else:
        y, x, ch, cw = 0, 0, h, w
    box = (int(x), int(y), int(x + cw), int(y + ch))
    im = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box)
    mk = Image.fromarray(mask).resize((size, size), Image.Resampling.BILINEAR, box=box)
    im, mk = np.asarray(im), np.asarray(mk)
    if rng.random() < 0.5:
        im, mk = im[:, ::-1], mk[:, ::-1]
    return np.ascontiguousarray(im), np.ascontiguousarray(mk)


class IHarmonySource:
    """Real iHarmony4 pairs (composite, real, mask), preloaded at max_side for training."""

    def __init__(self, root: str | Path, split: str = "train", max_side: int = 320):
        items = read_iharmony_split(root, split)
        labels = read_iharmony_labels(root)
        self.pairs = []
        for name, comp, mask, real in items:
            real_im = _load_rgb(real, max_side)
            comp_im = _load_rgb(comp).resize(real_im.size, Image.Resampling.BILINEAR)
            mask_im = _load_mask(mask, real_im.size)
            self.pairs.append((np.asarray(comp_im), np.asarray(real_im), np.asarray(mask_im),
                               labels.get(name, UNKNOWN)))

    def __len__(self):
        return len(self.pairs)

    def sample(self, rng: np.random.Generator, size: int) -> Pair:
        comp, real, mask, category = self.pairs[int(rng.integers(len(self)))]
        seed = int(rng.integers(1 << 31))  # the same crop and flip for the composite and its real image
        comp, mask_out = _augment(np.random.default_rng(seed), comp, mask, size)
        real, _ = _augment(np.random.default_rng(seed), real, mask, size)
        return Pair(comp, real, mask_out, category)


# ----------------------------------------------------------------------------------------------------------------
class HarmonyPairs(torch.utils.data.Dataset):
    """Index → one training sample, a pure function of (seed, index) over a mix of sources."""

    def __init__(self, sources: list, categories: tuple[str, ...], thumb: int, size: int, seed: int, length: int,
                 weights: list[float] | None = None):
        self.sources, self.categories = sources, categories
        self.thumb, self.size, self.seed, self.length = thumb, size, seed, length
        # How often each source is drawn (None: alike); normalised here so the CLI can take any positive numbers.
        self.weights = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)

    def __len__(self):
        return self.length

    def pair(self, index: int) -> Pair:
        rng = np.random.default_rng((self.seed, index))
        return self.sources[self.draw_source(rng)].sample(rng, self.size)

    def draw_source(self, rng: np.random.Generator) -> int:
        if self.weights is None:
            return int(rng.integers(len(self.sources)))
        return int(rng.choice(len(self.sources), p=self.weights))

    def __getitem__(self, index: int):
        pair = self.pair(index)
        return to_tensors(pair, self.thumb, self.categories)


def to_tensors(pair: Pair, thumb: int, categories: tuple[str, ...]) -> dict[str, torch.Tensor]:
    thumbs = make_thumbnails(Image.fromarray(pair.composite), Image.fromarray(pair.mask), thumb)
    category = pair.category if pair.category in categories else UNKNOWN
    return {
        "thumbs": thumbs,  # 8, T, T
        "composite": _to_float(pair.composite),  # 3, S, S
        "real": _to_float(pair.real),
        "mask": _to_float(pair.mask[..., None]),  # 1, S, S
        "category": torch.tensor(categories.index(category)),
    }


def _to_float(array: Array) -> torch.Tensor:
    return torch.tensor(array.transpose(2, 0, 1), dtype=torch.float32) / 255  # a copy: PIL arrays are read-only


def validation_batches(photos: list[Path], iharmony: list[Path], config: ModelConfig, size: int,
                       count: int) -> list[dict]:
    """The fixed held-out pairs, in batches of 32: the photos' validation split; iHarmony4 has none of its own, so
    without photos its test lists (which are `s2crnet eval`'s)."""
    sources = [PhotoSource(m, "val", untouched_share=UNTOUCHED_SHARE) for m in photos]
    sources = sources or [IHarmonySource(root, "test") for root in iharmony]
    if not sources:
        raise ValueError("no validation data: give --photos MANIFEST and/or --iharmony DIR")
    pairs = HarmonyPairs(sources, config.categories, config.thumb, size, VAL_SEED, count)
    return list(torch.utils.data.DataLoader(pairs, batch_size=32))
