"""Export the curve predictor to ONNX: thumbnails (B, 8, S, S) float32 [+ categories (B,) int64] → knots.

    s2crnet export --format onnx -o model.onnx [--weights W] [--batch dynamic|N]

The graph is the whole network of model.network — backbone, colour and seam statistics (weighted quantiles
included: sorting and histograms are ONNX ops), CRM heads and the knots — so an ONNX runtime needs nothing but
the thumbnails (model.thumbnails.thumbnail_array, numpy) and, after it, `Curves.lut` (numpy): the same two
functions the PyTorch runtime uses. Output "knots": (B, stages, 3, L + 1) float32, each row rising from 0 to 1.

Metadata (ONNX metadata_props, read back by model.runtime.OnnxPredictor): the model config as JSON, the sha256 of
the weights file, the thumb size, the batch size (0 = dynamic), the parameter count and the weights' metadata.
Needs torch and the onnx package (the `export` extra).
"""

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .network import S2CRNet, count_parameters
from .runtime import META_BATCH, META_CONFIG, META_META, META_PARAMETERS, META_SHA256, META_THUMB, read_weights
from .torch_runtime import load_network

__all__ = ["OPSET", "export_onnx"]

log = logging.getLogger(__name__)
OPSET = 17  # ScatterElements with reduction=add (the colour histograms) needs 16; 17 is widely supported


class _Predictor(nn.Module):
    """forward(thumbs[, categories]) → knots: the inference half of S2CRNet as one module to trace."""

    def __init__(self, net: S2CRNet):
        super().__init__()
        self.net = net

    def forward(self, thumbs: torch.Tensor, categories: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.forward_head(*self.net.forward_features(thumbs), categories)


def parse_batch(text: str) -> int:
    """--batch: "dynamic" → 0 (any batch size), or a whole number ≥ 1 (a fixed batch, padded by the runtime)."""
    if str(text) == "dynamic":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"batch must be 'dynamic' or a whole number from 1, got {text!r}")
    return value


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def export_onnx(weights: Path, out: Path, batch: int = 0) -> Path:
    """Export the network of `weights` (a .pt) to `out`; batch 0 = dynamic. Written atomically; returns out."""
    import onnx

    weights, out = Path(weights), Path(out)
    blob = read_weights(weights)
    net, meta = load_network(weights, blob)
    net.eval()
    config = net.config
    module = _Predictor(net).eval()
    example = (torch.rand(batch or 2, 8, config.thumb, config.thumb),)
    names = ["thumbs"]
    if config.semantic:
        example += (torch.zeros(batch or 2, dtype=torch.int64),)
        names.append("categories")
    dynamic = {name: {0: "batch"} for name in [*names, "knots"]} if not batch else None
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # The tracer warns about Python numbers (padding sizes, quantile targets): constants for a fixed thumb.
        warnings.simplefilter("ignore")
        traced = Path(scratch) / "net.onnx"
        torch.onnx.export(module, example, str(traced), dynamo=False, input_names=names, output_names=["knots"],
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True)
        model = onnx.load(str(traced))
    props = {META_CONFIG: json.dumps(config.to_dict()), META_SHA256: hashlib.sha256(blob).hexdigest(),
             META_THUMB: str(config.thumb), META_BATCH: str(batch), META_PARAMETERS: str(count_parameters(net)),
             META_META: json.dumps(meta)}
    onnx.helper.set_model_props(model, props)
    model.doc_string = (f"S2CRNet curve predictor ({config.backbone}): thumbs (B, 8, {config.thumb}, "
                        f"{config.thumb}) float32 in [0, 1] → knots (B, {config.stages}, 3, {config.pieces + 1})")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        # mkstemp makes it 0600: give it a normal file's mode (0644 under umask 022), so that a service running
        # as another user can read it
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, out)  # never a half-written .onnx, even with two processes building it at once
    finally:
        Path(partial).unlink(missing_ok=True)
    log.info("exported %s → %s (batch %s, sha256 %s)", weights, out, batch or "dynamic", props[META_SHA256])
    return out
