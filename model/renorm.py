"""Measure a weights file's BatchNorm statistics anew on training pairs.

    s2crnet renorm WEIGHTS --photos MANIFEST --out OUT [--size 256]

Averaged weights (an EMA, a WiSE-FT mix) need BatchNorm statistics of their own: the average of the running
statistics does not match the averaged weights. Training (`--ema`) and `s2crnet average --photos` now measure them
themselves; this mends files made before they did. Only the statistics change, never a weight.
"""

import argparse
import logging
from pathlib import Path

from .data import PhotoSource
from .harmonizer import Harmonizer, save_weights
from .network import S2CRNet, recompute_batch_norm
from .train import batch_norm_thumbnails

__all__ = ["add_arguments", "run", "remeasure_batch_norm"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", type=Path, help="weights file to mend")
    p.add_argument("--photos", type=Path, required=True, help="training photo manifest (its training split is used)")
    p.add_argument("--out", type=Path, required=True, help="where to write the weights with measured statistics")
    p.add_argument("--size", type=int, default=256, help="the training image side the weights were trained at")


def remeasure_batch_norm(net: S2CRNet, photos: Path, size: int) -> None:
    """The same 256 fixed training pairs training measures its weight average on (seed 1)."""
    recompute_batch_norm(net, batch_norm_thumbnails([PhotoSource(photos)], net.config, size, seed=1))


def run(args) -> int:
    harmonizer = Harmonizer.load(args.weights, device="cpu")
    remeasure_batch_norm(harmonizer.net, args.photos, args.size)
    meta = {**harmonizer.meta, "batch_norm_remeasured": {"from": str(args.weights), "sha256": harmonizer.sha256,
                                                         "photos": str(args.photos), "size": args.size}}
    save_weights(args.out, harmonizer.net, meta)
    log.info("wrote %s: %s with BatchNorm statistics measured on %s", args.out, args.weights, args.photos)
    return 0
