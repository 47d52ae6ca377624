"""Fit how much of its predicted change a trained network should apply, on held-out pairs.

    s2crnet calibrate WEIGHTS --photos MANIFEST --out OUT [--pairs 768] [--size 192]

A network can move colours a little too far on average (the 2-hour `s2crnet train` defaults do; MODEL_CARD.md).
Applying a share s of each curve's change, x + s·(C(x) − x), is one number fitted by least squares on the held-out
validation pairs training scores (never trained on): the s that minimises Σ‖c + s·d − r‖² over composite c,
predicted change d and real r is Σ⟨d, r − c⟩ / Σ‖d‖². It is kept in (0, 1]: calibration only damps, so a network
that moves colours too little keeps s = 1. The weights are unchanged; the file's config records the strength.
"""

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..curves import apply_curves
from ..harmonizer import Harmonizer
from ..network import S2CRNet
from ..weights import save_weights
from .data import validation_batches

__all__ = ["add_arguments", "run", "fit_strength"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", type=Path, help="trained weights")
    p.add_argument("--photos", type=Path, action="append", default=[],
                   help="photo manifest.csv: its held-out split, recoloured as in training; repeatable")
    p.add_argument("--iharmony", type=Path, action="append", default=[],
                   help="iHarmony4-format folder, its test list (used when no --photos is given); repeatable")
    p.add_argument("--out", type=Path, required=True, help="where to write the calibrated weights")
    p.add_argument("--pairs", type=int, default=768, help="held-out pairs to fit on (training validates on 768)")
    p.add_argument("--size", type=int, default=192, help="image side of the pairs (training's --size)")


@torch.no_grad()
def fit_strength(net: S2CRNet, val: list[dict]) -> dict[str, float]:
    """The least-squares strength for `net`'s full-strength curves on these batches, and the MSE (0–255 scale)
    of the composite, the full change and the fitted share of it."""
    was_training = net.training
    net.eval()
    sums = np.zeros(3)  # Σ‖r − c‖², Σ⟨d, r − c⟩, Σ‖d‖²
    pixels = 0
    for batch in val:
        knots = net.forward_head(*net.forward_features(batch["thumbs"]), batch["category"])
        change = apply_curves(batch["composite"], batch["mask"], knots)[-1] - batch["composite"]  # whole change
        missing = batch["real"] - batch["composite"]
        sums += [missing.square().sum().item(), (change * missing).sum().item(), change.square().sum().item()]
        pixels += missing.numel()
    net.train(was_training)
    total_missing, along, total_change = (float(v) for v in sums)  # plain floats: weights load weights_only

    def mse(s: float) -> float:  # ‖c + s·d − r‖² = ‖r − c‖² − 2s⟨d, r − c⟩ + s²‖d‖², per value, on 0–255
        return (total_missing - 2 * s * along + s * s * total_change) / pixels * 255**2

    strength = min(max(along / total_change, 1e-3), 1.0) if total_change > 0 else 1.0
    return {"strength": strength, "mse_do_nothing": mse(0.0), "mse_full": mse(1.0), "mse_fitted": mse(strength)}


def run(args) -> int:
    harmonizer = Harmonizer.load(args.weights, device="cpu")
    net = harmonizer.net
    fit = fit_strength(net, validation_batches(args.photos, args.iharmony, net.config, args.size, args.pairs))
    net.config = replace(net.config, strength=fit["strength"])
    meta = {**harmonizer.meta, "calibration": {**fit, "from": str(args.weights), "sha256": harmonizer.sha256,
                                               "pairs": args.pairs, "size": args.size,
                                               "photos": [str(p) for p in args.photos],
                                               "iharmony": [str(p) for p in args.iharmony]}}
    save_weights(args.out, net, meta)
    log.info("strength %.3f: held-out MSE %.1f at full strength → %.1f (do nothing %.1f); wrote %s",
             fit["strength"], fit["mse_full"], fit["mse_fitted"], fit["mse_do_nothing"], args.out)
    return 0
