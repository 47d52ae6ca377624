"""Harmonizer: the one seam between the S²CRNet network and all that uses it (service, CLI, evaluation).

    h = Harmonizer.load()                                   # shipped default weights
    out = h.harmonize(image, mask, category=None)           # PIL or uint8 numpy in → same kind out
    curves = h.predict_curves([img1, img2], [mask1, mask2]) # one forward pass for the whole batch
    out = h.harmonize(foreground=cutout, background=bg, at=(40, 10), scale=0.5, strength=0.8)  # layer input
    layer = h.harmonize(foreground=cutout, background=bg, at=(40, 10), layer=True)  # RGBA, the cutout's size
    out = h.harmonize(image, mask="auto", box=(x0, y0, x1, y1))  # the object in the box found (model.segmentation)
    out = h.harmonize(foreground=photo, background=bg, at=(40, 10))  # a plain photo: its subject cut out first
    h.harmonize_video("out.mp4", "clip.mp4", mask="matte.mp4", smoothing=0.5)  # needs the `video` extra
"""

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from .config import DEVICES, ModelConfig
from .curves import Curves, render
from .inputs import to_pil_pair
from .layers import compose, cut_layer
from .runtime import OnnxPredictor, WeightsError, choose_runtime, installed, onnx_export_path, read_weights
from .thumbnails import foreground_histogram, thumbnail_array

__all__ = ["DEFAULT_WEIGHTS", "DEVICES", "Harmonizer", "WeightsError", "to_pil_pair"]  # + resolve_device, save_weights

log = logging.getLogger(__name__)
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "s2crnet.pt"


def __getattr__(name: str):
    """The PyTorch-only names, imported on first use: this module must load without torch (onnx runtime)."""
    if name == "resolve_device":
        from .torch_runtime import resolve_device

        return resolve_device
    if name == "save_weights":
        from .weights import save_weights

        return save_weights
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Harmonizer:
    """The network behind one of two runtimes (model.runtime): "torch" (PyTorch, any device, training tools)
    or "onnx" (onnxruntime, no PyTorch imported). Both return knots; everything after them is shared numpy."""

    def __init__(self, net=None, device=None, weights_path: Path | None = None, sha256: str | None = None,
                 meta: dict | None = None, *, predictor=None):
        if predictor is None:  # Harmonizer(net, device): a PyTorch network in hand (training, tests)
            from .torch_runtime import TorchPredictor

            predictor = TorchPredictor(net, device, meta)
        self.predictor = predictor
        self.runtime: str = predictor.name
        self.config: ModelConfig = predictor.config
        self.weights_path = weights_path
        self.sha256 = sha256
        self.meta = predictor.meta
        self._lock = threading.Lock()  # one forward pass at a time: the model is shared by threads
        self._segmenter = None  # model.segmentation.Segmenter, loaded on first use (mask="auto", plain photos)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", runtime: str = "torch",
             threads: int | None = None) -> "Harmonizer":
        """runtime: "torch" (default here: training and tools need the network), "onnx" (onnxruntime on the
        weights' export `W.onnx`, or an .onnx given as `path`), or "auto" (model.runtime.choose_runtime)."""
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        runtime = choose_runtime(runtime, device, path)
        blob = read_weights(path)
        sha256 = hashlib.sha256(blob).hexdigest()
        if runtime == "onnx":
            export = onnx_export_path(path)
            if export != path:
                _build_if_missing(path, export)
            predictor = OnnxPredictor(export, device, threads, None if export == path else sha256)
            sha256 = predictor.sha256
        else:
            from .torch_runtime import TorchPredictor, load_network, resolve_device

            net, meta = load_network(path, blob)
            predictor = TorchPredictor(net, resolve_device(device), meta)
            if threads:
                predictor.set_threads(threads)
        harmonizer = cls(weights_path=path, sha256=sha256, predictor=predictor)
        log.info("loaded %s (%s, %d parameters) with %s on %s, sha256 %s", path, harmonizer.config.backbone,
                 predictor.num_parameters(), runtime, harmonizer.device, sha256)
        return harmonizer

    @property
    def device(self):
        """torch.device for the torch runtime; "cpu" or "cuda" for onnx."""
        return self.predictor.device

    @property
    def segmenter(self):
        """U²-Netp (model.segmentation), loaded on first use; SegmenterMissing says what to install."""
        if self._segmenter is None:
            from .segmentation import Segmenter

            self._segmenter = Segmenter.load()
        return self._segmenter

    @segmenter.setter
    def segmenter(self, segmenter) -> None:
        self._segmenter = segmenter

    @property
    def net(self):
        """The PyTorch network (torch runtime only: training tools change and save it)."""
        if self.runtime != "torch":
            raise AttributeError("the onnx runtime has no PyTorch network; load with runtime='torch'")
        return self.predictor.net

    @property
    def inference_net(self):
        """What torch predictions run on: `net` with batch norm folded in (model.network.inference_copy)."""
        self.net  # noqa: B018 -- raises for the onnx runtime
        return self.predictor.inference_net

    def set_threads(self, threads: int) -> None:
        """Intra-op threads of the runtime's forward pass."""
        self.predictor.set_threads(threads)

    # --- the two halves the service's batcher calls separately -------------------------------------------
    def prepare(self, image, mask) -> tuple[Image.Image, Image.Image, np.ndarray]:
        """Validate one input and build its thumbnails (thread-safe, no model involved)."""
        image, mask = to_pil_pair(image, mask)
        return image, mask, thumbnail_array(image, mask, self.config.thumb)

    def curves_from_thumbnails(self, thumbs: list, categories=None) -> list[Curves]:
        """One forward pass for a batch of thumbnails ((8, S, S) arrays, or tensors) → one Curves per image."""
        if not thumbs:
            return []
        categories = list(categories) if categories is not None else [None] * len(thumbs)
        if len(categories) != len(thumbs):
            raise ValueError(f"{len(categories)} categories for {len(thumbs)} images")
        index = np.array([self.config.category_index(c) for c in categories], dtype=np.int64)
        arrays = [np.asarray(t, dtype=np.float32) for t in thumbs]
        batch = np.stack(arrays)  # B, 8, S, S
        with self._lock:
            knots = self.predictor.knots(batch, index)
        # Each Curves carries its foreground's level histogram, so its mismatch score is known wherever it goes.
        return [Curves(k, self.config.strength, foreground_histogram(t))
                for k, t in zip(knots, arrays, strict=True)]

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
        """Full-resolution render in place (image: RGB/RGBA, mask: L); on the GPU for large images (torch)."""
        lut = curves.lut()
        on_device = getattr(self.predictor, "render", None)
        rendered = on_device(image, mask, lut) if on_device is not None else None
        return rendered if rendered is not None else render(image, mask, lut)

    def harmonize(self, image=None, mask=None, category: str | None = None, *, strength: float | None = None,
                  foreground=None, background=None, foreground_mask=None, at=None, scale=None, box=None,
                  feather=0.0, layer: bool = False):
        """Harmonize one composite. PIL in → PIL out (the input is not modified); numpy uint8 in → numpy out.

        Either `image` + `mask`, or `foreground` + `background` with the keywords of `compose` (the output has
        the background's size; layer=True returns the harmonized foreground instead, RGBA at its scaled size,
        alpha unchanged). strength: 0-1, the share of the curves' change to apply (None = the weights' own).
        Grayscale input comes back RGB (the curves may add colour); alpha passes through untouched.
        mask="auto" finds the object (model.segmentation: inside `box`, x0, y0, x1, y1, when given; else the most
        salient one); a foreground without a matte of its own (no alpha, no foreground_mask) is cut out the same
        way. Both raise model.segmentation.NoObjectError when nothing is found.
        """
        layered = None
        if foreground is not None or background is not None:
            if image is not None or mask is not None:
                raise ValueError("give either image + mask or foreground + background, not both")
            if foreground is None or background is None:
                raise ValueError("layer input needs both a foreground and a background")
            if foreground_mask is None:
                from .segmentation import has_matte

                if not has_matte(foreground):
                    foreground_mask = self.segmenter.mask(foreground)
            layered = compose(foreground, background, at, scale, box, feather, foreground_mask)
            was_pil, original = isinstance(background, Image.Image), None
            image, mask = layered.composite, layered.mask  # already a copy: render may work in place
        else:
            if image is None or mask is None:
                raise ValueError("harmonize needs an image and a mask (or foreground= and background=)")
            if layer:
                raise ValueError("layer=True needs foreground= and background=")
            if isinstance(mask, str):
                if mask != "auto":
                    raise ValueError(f"mask: an image, an array or 'auto', got the text {mask[:40]!r}")
                mask = self.segmenter.mask(image, box)
            elif box is not None:
                raise ValueError("box: with image + mask it says where the object is, so it needs mask='auto'")
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
        return self.predictor.num_parameters()

    def info(self) -> dict:
        return {
            **self.config.to_dict(),
            "parameters": self.num_parameters(),
            "device": str(self.device),
            "runtime": self.runtime,
            "weights": str(self.weights_path) if self.weights_path else None,
            "sha256": self.sha256,
            "meta": self.meta,
        }


def _build_if_missing(weights: Path, export: Path) -> None:
    """The onnx runtime on a .pt whose export is not there yet: build it beside it (needs torch and onnx)."""
    if export.is_file():
        return
    if not (installed("torch") and installed("onnx")):
        raise WeightsError(f"{export} (the ONNX export of {weights}) does not exist; build it where PyTorch is "
                           f"installed: s2crnet export --format onnx --weights {weights} -o {export}")
    from .onnx_export import export_onnx

    log.info("building %s from %s (first use of the onnx runtime)", export, weights)
    try:
        export_onnx(weights, export)
    except OSError as e:
        raise WeightsError(f"cannot write {export} (the ONNX export of {weights}): {e.strerror or e}; build it "
                           f"elsewhere with s2crnet export and pass that .onnx as the weights") from e
