"""The PyTorch runtime: a weights file → the network on a device → knots; and the GPU render.

Imported only when the torch runtime is chosen (model.runtime.choose_runtime) or by training, so a process
serving with onnxruntime never imports torch.
"""

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DEVICES, ModelConfig
from .curves import render_tensor
from .network import S2CRNet, count_parameters, inference_copy
from .runtime import WeightsError

__all__ = ["TorchPredictor", "load_network", "resolve_device"]

log = logging.getLogger(__name__)
_GPU_RENDER_MIN_PIXELS = 1 << 20  # below ~1 MP the host↔device copies cost more than Pillow's render


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICES:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(device)


def load_network(path: Path, blob: bytes) -> tuple[S2CRNet, dict]:
    """A weights file's bytes → the network its config describes, with its weights, and its metadata."""
    try:
        checkpoint = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        config = ModelConfig.from_dict(checkpoint["config"])
        net = S2CRNet(config)
        net.load_state_dict(checkpoint["model"])
    except Exception as e:  # any failure here means the file is not usable weights
        raise WeightsError(f"{path} is not a valid S2CRNet weights file: {e}") from e
    return net, checkpoint.get("meta") or {}


class TorchPredictor:
    """The network on a device; predictions run on its batch-norm-folded copy, made at the first one."""

    name = "torch"

    def __init__(self, net: S2CRNet, device: torch.device, meta: dict | None = None):
        self.net = net.to(device).eval()  # as loaded: tools (renorm, calibrate) may change and save it
        self._inference_net: S2CRNet | None = None
        self.config: ModelConfig = net.config
        self.device = device
        self.meta = meta or {}

    @property
    def inference_net(self) -> S2CRNet:
        """`net` with batch norm folded in (model.network.inference_copy), made once."""
        if self._inference_net is None:
            self._inference_net = inference_copy(self.net)
        return self._inference_net

    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(threads)

    @torch.inference_mode()
    def knots(self, batch: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """batch: (B, 8, S, S) float32, categories: (B,) int64 → knots (B, stages, 3, L + 1) float64."""
        thumbs = torch.from_numpy(batch).to(self.device)
        index = torch.from_numpy(categories).to(self.device)
        net = self.inference_net
        return net.forward_head(*net.forward_features(thumbs), index).double().cpu().numpy()

    def render(self, image: Image.Image, mask: Image.Image, lut: np.ndarray) -> Image.Image | None:
        """The render on the GPU for large images, in place; None where Pillow's render is the better one."""
        if self.device.type != "cuda" or image.width * image.height < _GPU_RENDER_MIN_PIXELS:
            return None
        pixels = torch.from_numpy(np.asarray(image)).to(self.device)
        weights = torch.from_numpy(np.asarray(mask)).to(self.device)
        rendered = render_tensor(pixels, weights, torch.from_numpy(lut).to(self.device)).cpu().numpy()
        image.paste(Image.fromarray(rendered, image.mode))  # in place, like the Pillow path
        return image

    def num_parameters(self) -> int:
        return count_parameters(self.net)
