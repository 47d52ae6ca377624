"""Measure a weights file's BatchNorm statistics anew on training pairs.

    s2crnet renorm WEIGHTS --photos MANIFEST --out OUT [--size 256]

Averaged weights (an EMA, a WiSE-FT mix) need BatchNorm statistics of their own: the average of the running
statistics does not match the averaged weights. Training (`--ema`) and `s2crnet average --photos` now measure them
themselves; this mends files made before they did. Only the statistics change, never a weight.
"""

import argparse
import logging
from pathlib import Path

from ..harmonizer import Harmonizer, save_weights
from .batch_norm import remeasure_batch_norm

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", type=Path, help="weights file to mend")
    p.add_argument("--photos", type=Path, required=True, help="training photo manifest (its training split is used)")
    p.add_argument("--out", type=Path, required=True, help="where to write the weights with measured statistics")
    p.add_argument("--size", type=int, default=256, help="the training image side the weights were trained at")


def run(args) -> int:
    harmonizer = Harmonizer.load(args.weights, device="cpu")
    remeasure_batch_norm(harmonizer.net, args.photos, args.size)
    meta = {**harmonizer.meta, "batch_norm_remeasured": {"from": str(args.weights), "sha256": harmonizer.sha256,
                                                         "photos": str(args.photos), "size": args.size}}
    save_weights(args.out, harmonizer.net, meta)
    log.info("wrote %s: %s with BatchNorm statistics measured on %s", args.out, args.weights, args.photos)
    return 0
