"""Real composites with their real photos (iHarmony4 layout), scored during training to choose checkpoints.

Recoloured held-out photos reward undoing our own generator; real composites reward what users see. Each triple
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
from ..thumbnails import make_thumbnails
from .evaluate import WORSE_MARGIN, open_upright

__all__ = ["RealTriples"]

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
        mse = ((pred - self.reals) * 255).square().mean((1, 2, 3))
        baseline = ((self.composites - self.reals) * 255).square().mean((1, 2, 3))
        return {"real_mse": float(mse.mean()), "real_baseline_mse": float(baseline.mean()),
                "real_ratio": float(mse.mean() / baseline.mean()),
                "real_worse": int((mse > WORSE_MARGIN * baseline).sum()), "real_n": len(self)}
