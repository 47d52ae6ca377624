"""What training measures to choose checkpoints: held-out recoloured pairs (`estimate_quality`) and real composites
with their real photos (`RealTriples`, iHarmony4 layout), combined by `selection_key`.

Recoloured held-out photos reward undoing our own generator; real composites reward what users see. Each real triple
is loaded once: thumbnails from the full-resolution composite (as serving makes them) and the composite, mask and
real photo at the evaluation size (256², bicubic). The curves are applied at 256², which tracks `s2crnet eval`
(curves at full resolution, then resized) closely enough to rank checkpoints; the final figures come from eval.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..curves import apply_curves
from ..iharmony import read_iharmony_split
from ..inputs import open_upright
from ..network import S2CRNet
from ..thumbnails import make_thumbnails
from .evaluate import WORSE_MARGIN, squared_errors

__all__ = ["RealTriples", "estimate_quality", "selection_key"]

EVAL_SIZE = 256


def _tensor(im: Image.Image) -> torch.Tensor:
    array = np.asarray(im.resize((EVAL_SIZE, EVAL_SIZE), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(array.reshape(EVAL_SIZE, EVAL_SIZE, -1)).permute(2, 0, 1)


class RealTriples:
    def __init__(self, roots: list[Path], thumb: int):
        thumbs, composites, masks, reals, self.names = [], [], [], [], []
        for root in roots:
            for name, comp_path, mask_path, real_path in read_iharmony_split(root, "test"):
                composite, mask = open_upright(comp_path, "RGB"), open_upright(mask_path, "L")
                if mask.size != composite.size:
                    mask = mask.resize(composite.size, Image.Resampling.BILINEAR)
                thumbs.append(make_thumbnails(composite, mask, thumb))
                composites.append(_tensor(composite))
                masks.append(_tensor(mask))
                reals.append(_tensor(open_upright(real_path, "RGB")))
                self.names.append(name)
        if not self.names:
            raise ValueError(f"no real triples in {', '.join(map(str, roots))}")
        self.thumbs, self.composites = torch.stack(thumbs), torch.stack(composites)
        self.masks, self.reals = torch.stack(masks), torch.stack(reals)

    def __len__(self):
        return len(self.names)

    @torch.no_grad()
    def score(self, net, device) -> dict:
        """MSE (0–255 scale) beside doing nothing, their ratio (of the means), and how many were made worse."""
        was_training = net.training
        net.eval()
        knots = net.forward_head(*net.forward_features(self.thumbs.to(device))).cpu()
        net.train(was_training)
        pred = apply_curves(self.composites, self.masks, knots, net.config.strength)[-1]
        mse, _ = squared_errors(pred, self.reals, self.masks > 0.5)
        baseline, _ = squared_errors(self.composites, self.reals, self.masks > 0.5)
        return {"real_mse": float(mse.mean()), "real_baseline_mse": float(baseline.mean()),
                "real_ratio": float(mse.mean() / baseline.mean()),
                "real_worse": int((mse > WORSE_MARGIN * baseline).sum()), "real_n": len(self)}


@torch.no_grad()
def estimate_quality(net: S2CRNet, val: list[dict], device) -> dict[str, float]:
    """MSE / fMSE (0–255 scale) of the last stage and of doing nothing, on the fixed validation pairs."""
    net.eval()
    sums = np.zeros(4)
    for batch in val:
        batch = {k: v.to(device) for k, v in batch.items()}
        pred = net(batch["thumbs"], batch["composite"], batch["mask"], batch["category"])[-1]
        fg = batch["mask"] > 0.5
        for i, image in enumerate((pred, batch["composite"])):
            mse, fmse = squared_errors(image, batch["real"], fg)
            sums[i] += mse.sum().item()
            sums[2 + i] += fmse.sum().item()
    net.train()
    n = sum(len(b["thumbs"]) for b in val)
    mse, base_mse, fmse, base_fmse = (float(v) for v in sums / n)  # plain floats: checkpoints load weights_only
    return {"mse": mse, "fmse": fmse, "baseline_mse": base_mse, "baseline_fmse": base_fmse}


def selection_key(quality: dict) -> tuple[float, float]:
    """Checkpoints are chosen by the real triples' MSE ratio (to 0.01), then the held-out photos' MSE; without
    real triples, by the held-out MSE alone."""
    return (round(quality.get("real_ratio", 0.0), 2), quality["mse"])
