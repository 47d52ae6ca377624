"""Harmonizer: the one seam between the S²CRNet network and all that uses it (service, CLI, evaluation).

    h = Harmonizer.load()                                   # shipped default weights
    out = h.harmonize(image, mask, category=None)           # PIL or uint8 numpy in → same kind out
    curves = h.predict_curves([img1, img2], [mask1, mask2]) # one forward pass for the whole batch
    out = h.harmonize(foreground=cutout, background=bg, at=(40, 10), scale=0.5, strength=0.8)  # layer input
    layer = h.harmonize(foreground=cutout, background=bg, at=(40, 10), layer=True)  # RGBA, the cutout's size
    h.harmonize_video("out.mp4", "clip.mp4", mask="matte.mp4", smoothing=0.5)  # needs the `video` extra
"""

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DEVICES, ModelConfig
from .curves import Curves, render, render_tensor
from .inputs import to_pil_pair
from .layers import compose, cut_layer
from .network import S2CRNet, count_parameters, inference_copy
from .thumbnails import foreground_histogram, make_thumbnails
from .weights import save_weights

__all__ = ["DEFAULT_WEIGHTS", "DEVICES", "Harmonizer", "WeightsError", "resolve_device", "save_weights", "to_pil_pair"]

log = logging.getLogger(__name__)
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "s2crnet.pt"
_GPU_RENDER_MIN_PIXELS = 1 << 20  # below ~1 MP the host↔device copies cost more than Pillow's render


class WeightsError(RuntimeError):
    """The weights file is missing, unreadable or not an S²CRNet weights file."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICES:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(device)


class Harmonizer:
    def __init__(self, net: S2CRNet, device: torch.device, weights_path: Path | None = None,
                 sha256: str | None = None, meta: dict | None = None):
        self.net = net.to(device).eval()  # as loaded: tools (renorm, calibrate) may change and save it
        self._inference_net: S2CRNet | None = None  # what predictions run on, made at the first one
        self.config: ModelConfig = net.config
        self.device = device
        self.weights_path = weights_path
        self.sha256 = sha256
        self.meta = meta or {}
        self._lock = threading.Lock()  # one forward pass at a time: the model is shared by threads

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto") -> "Harmonizer":
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise WeightsError(f"cannot read weights file {path}: {e.strerror or e}") from e
        try:
            import io
            checkpoint = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            config = ModelConfig.from_dict(checkpoint["config"])
            net = S2CRNet(config)
            net.load_state_dict(checkpoint["model"])
        except Exception as e:  # any failure here means the file is not usable weights
            raise WeightsError(f"{path} is not a valid S2CRNet weights file: {e}") from e
        sha256 = hashlib.sha256(blob).hexdigest()
        harmonizer = cls(net, resolve_device(device), path, sha256, checkpoint.get("meta"))
        log.info("loaded %s (%s, %d parameters) on %s, sha256 %s", path, config.backbone,
                 count_parameters(net), harmonizer.device, sha256)
        return harmonizer

    @property
    def inference_net(self) -> S2CRNet:
        """What predictions run on: `net` with batch norm folded in (model.network.inference_copy), made once."""
        if self._inference_net is None:
            self._inference_net = inference_copy(self.net)
        return self._inference_net

    # --- the two halves the service's batcher calls separately -------------------------------------------
    def prepare(self, image, mask) -> tuple[Image.Image, Image.Image, torch.Tensor]:
        """Validate one input and build its thumbnails (thread-safe, no model involved)."""
        image, mask = to_pil_pair(image, mask)
        return image, mask, make_thumbnails(image, mask, self.config.thumb)

    @torch.inference_mode()
    def curves_from_thumbnails(self, thumbs: list[torch.Tensor], categories=None) -> list[Curves]:
        """One forward pass for a batch of thumbnails → one Curves per image."""
        if not thumbs:
            return []
        categories = list(categories) if categories is not None else [None] * len(thumbs)
        if len(categories) != len(thumbs):
            raise ValueError(f"{len(categories)} categories for {len(thumbs)} images")
        index = torch.tensor([self.net.category_index(c) for c in categories], device=self.device)
        batch = torch.stack(thumbs).to(self.device)  # B, 8, S, S
        with self._lock:
            net = self.inference_net
            knots = net.forward_head(*net.forward_features(batch), index)
        # Each Curves carries its foreground's level histogram, so its mismatch score is known wherever it goes.
        return [Curves(k, self.config.strength, foreground_histogram(t))
                for k, t in zip(knots.double().cpu().numpy(), thumbs, strict=True)]

    # --- the public API -------------------------------------------------------------------------------
    def predict_curves(self, images, masks, categories=None, strength: float | None = None) -> list[Curves]:
        """One forward pass for many composites → Curves (with .mismatch); `strength` 0-1 replaces the weights'
        own share of the change to apply (None keeps it)."""
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        thumbs = [self.prepare(image, mask)[2] for image, mask in zip(images, masks, strict=True)]
        return [c.with_strength(strength) for c in self.curves_from_thumbnails(thumbs, categories)]

    @staticmethod
    def compose(foreground, background, at=None, scale=None, feather=0.0, box=None, foreground_mask=None):
        """Place a foreground (RGBA cutout, or RGB + foreground_mask) on a background → (composite, mask), the
        same kind as the background (PIL or uint8 numpy). at=(x, y): the scaled foreground's top-left in
        background pixels (default (0, 0), may be negative); scale (default 1) or box=(x0, y0, x1, y1) to fit
        into; feather: pixels of softening of the matte's edge. Bad placements raise model.layers.LayerError
        (a ValueError)."""

        layered = compose(foreground, background, at, scale, box, feather, foreground_mask)
        if isinstance(background, Image.Image):
            return layered.composite, layered.mask
        return np.asarray(layered.composite), np.asarray(layered.mask)

    def render(self, image: Image.Image, mask: Image.Image, curves: Curves) -> Image.Image:
        """Full-resolution render in place (image: RGB/RGBA, mask: L); on the GPU for large images."""
        if self.device.type == "cuda" and image.width * image.height >= _GPU_RENDER_MIN_PIXELS:
            lut = torch.from_numpy(curves.lut()).to(self.device)
            pixels = torch.from_numpy(np.asarray(image)).to(self.device)
            weights = torch.from_numpy(np.asarray(mask)).to(self.device)
            rendered = render_tensor(pixels, weights, lut).cpu().numpy()
            image.paste(Image.fromarray(rendered, image.mode))  # in place, like the Pillow path
            return image
        return render(image, mask, curves.lut())

    def harmonize(self, image=None, mask=None, category: str | None = None, *, strength: float | None = None,
                  foreground=None, background=None, foreground_mask=None, at=None, scale=None, box=None,
                  feather=0.0, layer: bool = False):
        """Harmonize one composite. PIL in → PIL out (the input is not modified); numpy uint8 in → numpy out.

        Either `image` + `mask`, or `foreground` + `background` with the keywords of `compose` (the output has
        the background's size; layer=True returns the harmonized foreground instead, RGBA at its scaled size,
        alpha unchanged). strength: 0-1, the share of the curves' change to apply (None = the weights' own).
        Grayscale input comes back RGB (the curves may add colour); alpha passes through untouched.
        """
        layered = None
        if foreground is not None or background is not None:
            if image is not None or mask is not None:
                raise ValueError("give either image + mask or foreground + background, not both")
            if foreground is None or background is None:
                raise ValueError("layer input needs both a foreground and a background")

            layered = compose(foreground, background, at, scale, box, feather, foreground_mask)
            was_pil, original = isinstance(background, Image.Image), None
            image, mask = layered.composite, layered.mask  # already a copy: render may work in place
        else:
            if image is None or mask is None:
                raise ValueError("harmonize needs an image and a mask (or foreground= and background=)")
            if layer:
                raise ValueError("layer=True needs foreground= and background=")
            was_pil, original = isinstance(image, Image.Image), image
        image, mask, thumbs = self.prepare(image, mask)
        if was_pil and image is original:
            image = image.copy()  # never modify the caller's image
        (curves,) = self.curves_from_thumbnails([thumbs], [category])
        curves = curves.with_strength(strength)
        if layer:

            out = cut_layer(layered, curves.lut())
        else:
            out = self.render(image, mask, curves)
        return out if was_pil else np.asarray(out)

    def harmonize_video(self, output, input=None, mask=None, **options):
        """Harmonize a clip into `output`, frame by frame with curves smoothed over time, keeping its frame rate,
        timestamps and sound → model.video.VideoResult. Takes input + mask, or foreground= + background= (at=,
        scale=); and strength, smoothing (seconds), curves_every, cut_threshold, category, codec, crf, fps,
        progress: see model.video.harmonize_video, where the video logic lives (PyAV: the `video` extra)."""
        from .video import harmonize_video

        return harmonize_video(self, output, input, mask, **options)

    def num_parameters(self) -> int:
        return count_parameters(self.net)

    def info(self) -> dict:
        return {
            **self.config.to_dict(),
            "parameters": self.num_parameters(),
            "device": str(self.device),
            "weights": str(self.weights_path) if self.weights_path else None,
            "sha256": self.sha256,
            "meta": self.meta,
        }
