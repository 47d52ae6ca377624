"""What kind of object each training photo shows, so colour donors can be another object of the same kind.

HCOCO and HFlickr composites were made by moving an object's colours toward another object of the same category
in another photo: the result is a plausible instance of the object under someone else's light. The kind is the
ImageNet synset where the photo's id carries one (DUTS-TR's `n02085620_…` files), otherwise the ImageNet class
the pretrained EfficientNet-Lite0 gives the object's crop (top-1 of its classifier head). Labels are cached per
manifest, because labelling ten thousand crops takes minutes on a CPU.
"""

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["CACHE_DIR", "object_kinds", "synset_of"]

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("S2CRNET_CACHE", Path.home() / ".cache" / "s2crnet"))
CROP = 224  # the classifier's training resolution
_SYNSET = re.compile(r"(?:^|/)(n\d{8})_")


def synset_of(photo_id: str) -> str | None:
    """The ImageNet synset in an id such as `duts/n01440764_10029`, or None."""
    match = _SYNSET.search(photo_id)
    return match.group(1) if match else None


def object_kinds(ids: list[str], images: list[np.ndarray], masks: list[np.ndarray],
                 cache_key: str | None = None) -> list[str]:
    """One kind per photo: `nXXXXXXXX` (its synset) or `imagenet-K` (the classifier's top-1 on the object crop)."""
    synsets = [synset_of(i) for i in ids]
    unlabelled = [i for i, s in enumerate(synsets) if s is None]
    top1 = _cached_top1(ids, images, masks, unlabelled, cache_key)
    return [s if s is not None else f"imagenet-{top1[ids[i]]}" for i, s in enumerate(synsets)]


def _cached_top1(ids, images, masks, indices, cache_key) -> dict[str, int]:
    if not indices:
        return {}
    digest = hashlib.sha1(json.dumps([cache_key, [ids[i] for i in indices]]).encode()).hexdigest()[:16]
    path = CACHE_DIR / f"kinds-{digest}.json"
    if path.exists():
        return json.loads(path.read_text())
    log.info("labelling %d object crops with the ImageNet classifier (cached in %s)", len(indices), path)
    labels = dict(zip((ids[i] for i in indices), _classify([_object_crop(images[i], masks[i]) for i in indices]),
                      strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(labels))
    path.with_suffix(".tmp").replace(path)
    return labels


def _object_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The object's bounding box grown by a quarter each side (context helps the classifier), at CROP²."""
    ys, xs = np.nonzero(mask > 127)
    h, w = mask.shape
    if len(ys) == 0:
        box = (0, 0, w, h)
    else:
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        box = (max(0, x0 - dx), max(0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy))
    return np.asarray(Image.fromarray(image).resize((CROP, CROP), Image.Resampling.BILINEAR, box=box))


@torch.no_grad()
def _classify(crops: list[np.ndarray], batch: int = 64) -> list[int]:
    from ..backbones import EfficientNetLite
    from .pretrained import imagenet_checkpoint, lite0_state_dict

    features, classifier = lite0_state_dict(imagenet_checkpoint())
    net = EfficientNetLite()
    net.features.load_state_dict(features, strict=True)
    net.eval()
    labels = []
    for start in range(0, len(crops), batch):
        x = torch.from_numpy(np.stack(crops[start:start + batch])).permute(0, 3, 1, 2).float() / 255  # N, 3, S, S
        pooled = net.forward_imagenet(x).mean((2, 3))  # N, 1280
        logits = pooled @ classifier["weight"].T + classifier["bias"]  # N, 1000
        labels += logits.argmax(1).tolist()
    return labels
