"""Training losses, per image over the mask, on 0–1 pixels; and the patch discriminator of the optional GAN term."""

import torch
from torch import nn

__all__ = ["Discriminator", "PER_IMAGE_LOSSES", "harm", "masked_loss", "masked_l1_per_image", "masked_l2_per_image",
           "mismatch_weights"]


def _mean_over_mask(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each image's mean of a per-pixel, per-channel error over its mask: Σ error·m / (3 Σm)."""
    return (error * mask).sum((1, 2, 3)) / (3 * mask.sum((1, 2, 3)).clamp_min(1.0))


def masked_l1_per_image(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper's relative L1 of each image: Σ|ŷ − y|·m / Σm."""
    return _mean_over_mask((pred - real).abs(), mask)


def masked_l2_per_image(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each image's mean squared error over its mask (its fMSE): large errors count more than in the L1."""
    return _mean_over_mask((pred - real) ** 2, mask)


PER_IMAGE_LOSSES = {"l1": masked_l1_per_image, "l2": masked_l2_per_image}


def masked_loss(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor,
                image_weights: torch.Tensor | None = None, per_image_loss=masked_l1_per_image) -> torch.Tensor:
    """The batch mean (weighted if given) of a per-image loss: by default the paper's relative L1."""
    per_image = per_image_loss(pred, real, mask)
    return per_image.mean() if image_weights is None else (per_image * image_weights).mean()


def mismatch_weights(composite: torch.Tensor, real: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-image loss weights ∝ 1 / (the composite's own relative L1 + scale), averaging 1 over the batch.

    An image then counts by the share of its own mismatch left, as the "no image made more than 20% worse" bar
    does: a mild mismatch weighs as much as a large one instead of a few times less. `scale` keeps untouched
    pairs (mismatch 0) from dominating.
    """
    weights = 1.0 / (masked_l1_per_image(composite, real, mask) + scale)
    return weights / weights.mean()


def harm(pred: torch.Tensor, composite: torch.Tensor, real: torch.Tensor, mask: torch.Tensor,
         per_image_loss=masked_l1_per_image) -> torch.Tensor:
    """Mean over the batch of each image's error beyond its composite's: the damage done, not the gain missed."""
    return (per_image_loss(pred, real, mask) - per_image_loss(composite, real, mask)).clamp_min(0).mean()


class Discriminator(nn.Module):
    """A small patch discriminator on (image, mask) for the optional LSGAN term."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, ch = [], 4
        for out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, 1, 3, 1, 1))

    def forward(self, image, mask):
        return self.net(torch.cat([image, mask], 1))
