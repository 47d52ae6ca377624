"""Average the weights of a model before and after fine-tuning (WiSE-FT: Wortsman et al., CVPR 2022).

    s2crnet average BEFORE.pt AFTER.pt --out MIXED.pt [--weight 0.5] [--photos MANIFEST]

Fine-tuning fits the training distribution better and can cost robustness elsewhere; the weights part of the way
between the two models often keep most of the gain and lose most of the cost. Both files must come from the same
run of `--init` fine-tuning (same backbone and shapes). AFTER's config is kept; input columns BEFORE lacks (an
embedding that `--init` widened, e.g. seam statistics) count as zero, as they were when fine-tuning started.
The average of two networks' BatchNorm statistics is not the statistics of their averaged weights: with
`--photos` they are measured anew on training pairs, as training does for its weight average (`--ema`).
"""

import argparse
import hashlib
import logging
from pathlib import Path

from ..harmonizer import Harmonizer
from ..network import S2CRNet
from ..weights import load_initial_weights, save_weights
from .batch_norm import remeasure_batch_norm

__all__ = ["add_arguments", "run", "average_weights"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("before", type=Path, help="weights before fine-tuning (the --init file)")
    p.add_argument("after", type=Path, help="weights after fine-tuning")
    p.add_argument("--out", type=Path, required=True, help="where to write the averaged weights")
    p.add_argument("--weight", type=_share, default=0.5,
                   help="share of AFTER in the average: 0 gives BEFORE, 1 gives AFTER (default 0.5)")
    p.add_argument("--photos", type=Path, default=None,
                   help="training photo manifest: measure the average's BatchNorm statistics on its pairs")
    p.add_argument("--size", type=int, default=256, help="with --photos: the training image side")


def average_weights(before: Path, tuned: S2CRNet, weight: float) -> S2CRNet:
    """(1 − weight) × the weights in `before` + weight × `tuned`'s, in `tuned`'s architecture."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight must be between 0 and 1, got {weight}")
    start = S2CRNet(tuned.config)
    load_initial_weights(start, before)
    tuned_state = tuned.state_dict()
    # Counters (BatchNorm's num_batches_tracked) are not averaged: AFTER's are kept.
    mixed = {name: value.lerp(tuned_state[name], weight) if value.is_floating_point() else tuned_state[name]
             for name, value in start.state_dict().items()}
    start.load_state_dict(mixed)
    return start.eval()


def run(args) -> int:
    after = Harmonizer.load(args.after, device="cpu")
    net = average_weights(args.before, after.net, args.weight)
    if args.photos is not None:
        remeasure_batch_norm(net, args.photos, args.size)
    meta = {"average": {"before": str(args.before), "before_sha256": _sha256(args.before), "after": str(args.after),
                        "after_sha256": after.sha256, "weight_of_after": args.weight,
                        "batch_norm_from": str(args.photos) if args.photos else None},
            "after_meta": after.meta}
    save_weights(args.out, net, meta)
    log.info("wrote %s: %.2f × %s + %.2f × %s", args.out, 1 - args.weight, args.before, args.weight, args.after)
    return 0


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
