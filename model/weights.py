"""Weights files: one torch file holding the state dict, the model config and free-form metadata; and widening
trained weights into a larger network."""

import logging
from pathlib import Path

import torch

from .network import S2CRNet

__all__ = ["load_initial_weights", "save_weights"]

log = logging.getLogger(__name__)


def save_weights(path: str | Path, net: S2CRNet, meta: dict | None = None) -> None:
    """One file: the state dict, the model config and free-form metadata (plain types only)."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"config": net.config.to_dict(), "model": state, "meta": meta or {}}, path)


def load_initial_weights(net: S2CRNet, path: Path) -> None:
    """--init: start from trained weights. Parameters the file lacks keep their fresh init; a weight matrix that
    only gained input columns (a wider embedding, e.g. seam_stats) keeps its trained columns and gets zero ones,
    so the network computes exactly what the file's network did until training moves the new parts."""
    initial = torch.load(path, map_location="cpu", weights_only=True)["model"]
    own = net.state_dict()
    unexpected = [name for name in initial if name not in own]
    if unexpected:
        raise ValueError(f"--init {path} has parameters this model lacks: {', '.join(unexpected)}")
    widened = []
    for name, value in initial.items():
        shape = own[name].shape
        if value.shape == shape:
            continue
        if value.ndim != 2 or value.shape[0] != shape[0] or value.shape[1] > shape[1]:
            raise ValueError(f"--init {path}: {name} is {tuple(value.shape)} there, {tuple(shape)} here")
        initial[name] = torch.cat([value, value.new_zeros(shape[0], shape[1] - value.shape[1])], 1)
        widened.append(name)
    missing, _ = net.load_state_dict(initial, strict=False)
    log.info("initialised from %s; fresh parameters: %s; widened with zero columns: %s",
             path, ", ".join(missing) or "none", ", ".join(widened) or "none")
