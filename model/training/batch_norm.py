"""Batch-norm statistics for averaged weights (EMA, WiSE-FT): measured anew, since the average of running
statistics does not fit the averaged weights."""

from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..network import S2CRNet
from .data import HarmonyPairs, PhotoSource

__all__ = ["BATCH_NORM_SAMPLES", "batch_norm_thumbnails", "recompute_batch_norm", "remeasure_batch_norm"]

BATCH_NORM_SAMPLES = 256  # training pairs that measure a weight average's statistics


@torch.no_grad()
def recompute_batch_norm(net: S2CRNet, thumbs: list[torch.Tensor]) -> None:
    """Give averaged weights (EMA, WiSE-FT) batch-norm statistics of their own, measured on these thumbnail
    batches (B, 8, S, S): the average of running statistics does not fit the averaged weights. Frozen ImageNet
    layers keep theirs. Leaves the network in the mode it was in; no forward passes when it has no batch norm."""
    frozen = {id(m) for layer in getattr(net.backbone, "frozen", []) for m in layer.modules()}
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in frozen]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    was_training = net.training
    net.train()
    device = next(net.parameters()).device
    for batch in thumbs:
        net.forward_features(batch.to(device))
    net.train(was_training)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def batch_norm_thumbnails(sources: list, config: ModelConfig, size: int, seed: int) -> list[torch.Tensor]:
    """Fixed training thumbnails on which averaged weights get BatchNorm statistics of their own
    (model.network.recompute_batch_norm)."""
    pairs = HarmonyPairs(sources, config.categories, config.thumb, size, seed, BATCH_NORM_SAMPLES)
    return [batch["thumbs"] for batch in torch.utils.data.DataLoader(pairs, batch_size=32)]


def remeasure_batch_norm(net: S2CRNet, photos: Path, size: int) -> None:
    """The same 256 fixed training pairs training measures its weight average on (seed 1)."""
    recompute_batch_norm(net, batch_norm_thumbnails([PhotoSource(photos)], net.config, size, seed=1))
