"""How well the mismatch score ranks composites by their real error: Spearman's rank correlation between the
model's mismatch (mean |LUT(x) − x| over the mask, 8-bit levels) and the do-nothing error against the real photo.

    nice -n 15 .venv/bin/python bench/mismatch_rank.py [--data ../shared/data/iharmony4_val] [--weights PATH]

The do-nothing error is the iHarmony4 protocol's (composite and real resized to 256² bicubic, mask thresholded
at half): MSE over the image and fMSE over the foreground. Prints one row per triple and the two correlations
(with their p-values: 18 triples give wide error bars). The score belongs to the weights: re-measure for new ones.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere without installing the package

from model import Harmonizer  # noqa: E402
from model.iharmony import read_iharmony_split  # noqa: E402

EVAL_SIZE = 256


def do_nothing_error(composite: Image.Image, real: Image.Image, mask: Image.Image) -> tuple[float, float]:
    """(MSE, fMSE) of the composite against the real photo at 256², 0-255 scale."""
    size = (EVAL_SIZE, EVAL_SIZE)
    a = np.asarray(composite.convert("RGB").resize(size, Image.Resampling.BICUBIC)).astype(np.float64)
    b = np.asarray(real.convert("RGB").resize(size, Image.Resampling.BICUBIC)).astype(np.float64)
    fg = np.asarray(mask.convert("L").resize(size, Image.Resampling.BILINEAR)) >= 128
    err = (a - b) ** 2
    return float(err.mean()), float(err[fg].sum() / (3 * max(int(fg.sum()), 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "iharmony4_val")
    parser.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped weights)")
    args = parser.parse_args()
    harmonizer = Harmonizer.load(args.weights, "cpu")
    rows = []
    for name, composite_path, mask_path, real_path in read_iharmony_split(args.data):
        composite, mask, real = (Image.open(p) for p in (composite_path, mask_path, real_path))
        composite, real = composite.convert("RGB"), real.convert("RGB")
        mask = mask.convert("L")
        if mask.size != composite.size:
            mask = mask.resize(composite.size, Image.Resampling.BILINEAR)
        (curves,) = harmonizer.predict_curves([composite], [mask])
        mse, fmse = do_nothing_error(composite, real, mask)
        rows.append((name, curves.mismatch["mean"], mse, fmse))
    out = sys.stdout.write
    out(f"weights: {harmonizer.weights_path} (sha256 {harmonizer.sha256[:12]}), strength "
        f"{harmonizer.config.strength}, data: {args.data}\n")
    out(f"{'triple':<14} {'mismatch':>9} {'MSE':>8} {'fMSE':>8}\n")
    for name, mismatch, mse, fmse in rows:
        out(f"{name:<14} {mismatch:9.2f} {mse:8.1f} {fmse:8.1f}\n")
    scores = np.array([r[1] for r in rows])
    for label, column in (("MSE", 2), ("fMSE", 3)):
        rho, p = spearmanr(scores, [r[column] for r in rows])
        out(f"Spearman rank correlation, mismatch vs do-nothing {label}: {rho:+.3f} (p = {p:.3f}, n = {len(rows)})\n")


if __name__ == "__main__":
    main()
