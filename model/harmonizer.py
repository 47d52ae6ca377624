"""Harmonizer: the one seam between the S²CRNet network and all that uses it (service, CLI, evaluation).

    h = Harmonizer.load()                                   # shipped default weights
    out = h.harmonize(image, mask, category=None)           # PIL or uint8 numpy in → same kind out
    curves = h.predict_curves([img1, img2], [mask1, mask2]) # one forward pass for the whole batch
"""

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import ModelConfig
from .curves import Curves, render, render_tensor
from .modes import composite_rgb, eight_bit
from .network import S2CRNet, count_parameters
from .thumbnails import make_thumbnails

__all__ = ["DEFAULT_WEIGHTS", "Harmonizer", "WeightsError", "resolve_device", "save_weights", "to_pil_pair"]

log = logging.getLogger(__name__)
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "s2crnet_squeezenet.pt"
_GPU_RENDER_MIN_PIXELS = 1 << 20  # below ~1 MP the host↔device copies cost more than Pillow's render


class WeightsError(RuntimeError):
    """The weights file is missing, unreadable or not an S²CRNet weights file."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(device)


def save_weights(path: str | Path, net: S2CRNet, meta: dict | None = None) -> None:
    """One file: the state dict, the model config and free-form metadata (plain types only)."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"config": net.config.to_dict(), "model": state, "meta": meta or {}}, path)


def _to_uint8_array(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:  # 16-bit samples: the high byte, as for 16-bit files (model/modes.py)
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"the {what} contains NaN or infinite values")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"a float {what} must hold values in [0, 1]")
        return np.rint(array * 255).astype(np.uint8)
    raise ValueError(f"the {what} must be uint8, uint16, bool or float in [0, 1], got dtype {array.dtype}")


def _image_to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return composite_rgb(image)  # 16-bit and float samples scaled, not clipped (model/modes.py)
    array = _to_uint8_array(np.asarray(image), "image")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"the image must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    if min(array.shape[:2]) == 0:
        raise ValueError("the image is empty")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[-1] == 3 else "RGBA")


def _mask_to_pil(mask) -> Image.Image:
    if isinstance(mask, Image.Image):
        mask = eight_bit(mask)  # a 16-bit mask at 32768 is half strength, a float one in [0, 1] scaled
        if mask.mode == "L":
            return mask
        if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
            # An alpha mask wins only when it is not fully opaque; else the grey levels are the mask.
            alpha = mask.convert("RGBA").getchannel("A")
            if alpha.getextrema()[0] < 255:
                return alpha
        return mask.convert("L")
    array = _to_uint8_array(np.asarray(mask), "mask")
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"the mask must be H×W (or H×W×1|3|4), got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array), "L")


def to_pil_pair(image, mask) -> tuple[Image.Image, Image.Image]:
    """Validate and normalise a composite and its mask: RGB/RGBA image, L mask, same size, mixed fg and bg."""
    image, mask = _image_to_pil(image), _mask_to_pil(mask)
    if image.size != mask.size:
        raise ValueError(f"mask size {mask.size[0]}×{mask.size[1]} differs from image size "
                         f"{image.size[0]}×{image.size[1]}")
    low, high = mask.getextrema()
    if high == 0:
        raise ValueError("the mask selects nothing: it needs at least one non-zero (foreground) pixel")
    if low == 255:
        raise ValueError("the mask selects the whole image: there is no background to harmonize toward")
    if high == 1:  # a 0/1 mask would blend at 1/255 strength: nothing visible, which looks like a bug of ours
        raise ValueError("the mask's largest value is 1, but masks are 0–255 (255 = the pasted object, grey "
                         "levels blend): scale a 0/1 mask by 255")
    return image, mask


class Harmonizer:
    def __init__(self, net: S2CRNet, device: torch.device, weights_path: Path | None = None,
                 sha256: str | None = None, meta: dict | None = None):
        self.net = net.to(device).eval()
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
            knots = self.net.forward_head(*self.net.forward_features(batch), index)
        return [Curves(k, self.config.strength) for k in knots.double().cpu().numpy()]

    # --- the public API -------------------------------------------------------------------------------
    def predict_curves(self, images, masks, categories=None) -> list[Curves]:
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        thumbs = [self.prepare(image, mask)[2] for image, mask in zip(images, masks, strict=True)]
        return self.curves_from_thumbnails(thumbs, categories)

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

    def harmonize(self, image, mask, category: str | None = None):
        """Harmonize one composite. PIL in → PIL out (the input is not modified); numpy uint8 in → numpy out.

        Grayscale input comes back RGB (the curves may add colour); alpha passes through untouched.
        """
        was_pil = isinstance(image, Image.Image)
        original = image
        image, mask, thumbs = self.prepare(image, mask)
        if was_pil and image is original:
            image = image.copy()  # never modify the caller's image
        (curves,) = self.curves_from_thumbnails([thumbs], [category])
        out = self.render(image, mask, curves)
        return out if was_pil else np.asarray(out)

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
