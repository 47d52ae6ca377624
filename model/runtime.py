"""Which runtime predicts the curves, and the ONNX one: thumbnails (B, 8, S, S) → knots, without PyTorch.

Both runtimes compute the same thing: the network from thumbnails to curve knots (B, stages, 3, L + 1), float32
inside the graph, float64 once out. Everything after the knots — the 256-entry LUT (`Curves.lut`), strength,
render — is the numpy code in model.curves that both share, so their LUTs differ only by the graph's float
rounding (a knot moves by ~1e-7; a LUT entry by at most 1 level, and almost never).

An ONNX file (written by model.onnx_export) carries its own identity in its metadata: the model config (JSON), the
sha256 of the weights file it was built from, the thumb size and the batch size. Loading checks them, so a
stale or foreign export fails at start-up with a sentence naming the file, never in the middle of a request.

Runtime choice ("auto", the service's and CLI's default): onnxruntime on the CPU when it is installed and the
weights' export is at hand (`W.onnx` beside `W.pt`, or an .onnx given as the weights); PyTorch for GPUs, for
training, and whenever there is no export. Where PyTorch is not installed at all, onnx is the only choice.
"""

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np

from .config import ModelConfig

__all__ = ["META_CONFIG", "META_SHA256", "META_THUMB", "RUNTIMES", "OnnxPredictor", "WeightsError", "choose_runtime",
           "import_onnxruntime", "onnx_export_path", "read_weights", "sha256_of"]

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
# Metadata keys of an exported file (ONNX metadata_props: string → string).
META_CONFIG, META_SHA256, META_THUMB, META_BATCH, META_META, META_PARAMETERS = (
    "s2crnet.config", "s2crnet.weights_sha256", "s2crnet.thumb", "s2crnet.batch", "s2crnet.meta", "s2crnet.parameters")
ONNX_INSTALL = "pip install 's2crnet[onnx]' (or requirements-onnx.txt)"


class WeightsError(RuntimeError):
    """The weights file (or its ONNX export) is missing, unreadable, or not what it claims to be."""


def installed(package: str) -> bool:
    """Whether `package` can be imported, without importing it (torch alone takes seconds and ~300 MB)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def import_onnxruntime():
    """onnxruntime, with its telemetry off: since 1.3x it starts a session-id file ($TMPDIR/.ses) and an uploader
    on import, which a service that keeps no client data on disk and calls no one must not have."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # read once, when the library initialises
    import onnxruntime

    return onnxruntime


def read_weights(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path}: {e.strerror or e}") from e


def sha256_of(path: Path) -> str:
    return hashlib.sha256(read_weights(path)).hexdigest()


def onnx_export_path(weights: Path) -> Path:
    """Where the ONNX export of a weights file lives: beside it, same stem (model/weights/s2crnet.onnx)."""
    return weights if weights.suffix == ".onnx" else weights.with_suffix(".onnx")


def _gpu_present() -> bool:
    """An NVIDIA driver is loaded: cheap to ask, and asking PyTorch would import it (the thing onnx avoids)."""
    return Path("/proc/driver/nvidia/version").exists()


def choose_runtime(runtime: str, device: str, weights: Path) -> str:
    """"auto" | "torch" | "onnx" → "torch" or "onnx" (ValueError for an unknown name or an impossible pair)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if weights.suffix == ".onnx":
        if runtime == "torch":
            raise ValueError(f"runtime 'torch' needs a PyTorch weights file, not the ONNX file {weights}")
        return "onnx"
    if runtime != "auto":
        return runtime
    if not installed("torch"):
        return "onnx"
    wants_gpu = device == "cuda" or (device == "auto" and _gpu_present())
    if wants_gpu or not installed("onnxruntime") or not onnx_export_path(weights).is_file():
        return "torch"
    return "onnx"


class OnnxPredictor:
    """An onnxruntime session over an exported network, with the weights' identity from the file's metadata."""

    name = "onnx"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None,
                 weights_sha256: str | None = None):
        """path: the .onnx file; weights_sha256: the sha256 of the .pt it must have been built from (None when
        the .onnx is itself the weights)."""
        if not installed("onnxruntime"):
            raise ValueError(f"runtime 'onnx' needs the onnxruntime package, which is not installed: {ONNX_INSTALL}")
        ort = import_onnxruntime()

        self.path = path
        providers = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in providers:
            raise ValueError("device 'cuda' was asked for but onnxruntime has no CUDA provider "
                             "(install onnxruntime-gpu, or use the torch runtime)")
        # The CUDA provider is configured when present (onnxruntime-gpu) but untested here: no GPU in CI.
        use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in providers
        self.device = "cuda" if use_cuda else "cpu"
        self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        try:
            self._blob = path.read_bytes()
        except OSError as e:
            raise WeightsError(f"cannot read ONNX file {path}: {e.strerror or e}") from e
        self.threads = threads
        self.session = self._session(threads)
        self._read_metadata(weights_sha256)

    def _session(self, threads: int | None):
        ort = import_onnxruntime()

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        # Threads that spin between the service's small forward passes only steal the worker threads' CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(self._blob, options, providers=self._providers)
        except Exception as e:  # onnxruntime raises its own exception types for a corrupt or foreign file
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{self.path} is not a valid ONNX model: {first}") from e

    def _read_metadata(self, weights_sha256: str | None) -> None:
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in (META_CONFIG, META_SHA256, META_THUMB) if key not in props]
        if missing:
            raise WeightsError(f"{self.path} is an ONNX model but not an S2CRNet export (no {', '.join(missing)} "
                               "metadata); build one with `s2crnet export --format onnx`")
        try:
            self.config = ModelConfig.from_dict(json.loads(props[META_CONFIG]))
            thumb = int(props[META_THUMB])
            self.batch = int(props.get(META_BATCH, "0"))  # 0: any batch size
            self.meta = json.loads(props.get(META_META, "{}"))
            self.parameters = int(props.get(META_PARAMETERS, "0"))
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{self.path}: unreadable S2CRNet metadata ({e})") from e
        self.sha256 = props[META_SHA256]
        shape = self.session.get_inputs()[0].shape  # [batch, 8, S, S]
        if thumb != self.config.thumb or shape[-1] != thumb or shape[-2] != thumb:
            raise WeightsError(f"{self.path}: thumb size mismatch: the graph takes {shape[-2]}×{shape[-1]}, the "
                               f"metadata says {thumb} and the model config {self.config.thumb}; re-export it")
        if weights_sha256 is not None and weights_sha256 != self.sha256:
            raise WeightsError(f"{self.path} was exported from weights with sha256 {self.sha256[:12]}…, not these "
                               f"(sha256 {weights_sha256[:12]}…); rebuild it with `s2crnet export --format onnx "
                               f"--weights WEIGHTS -o {self.path}`")
        self._inputs = [i.name for i in self.session.get_inputs()]

    def set_threads(self, threads: int) -> None:
        """Intra-op threads (the service's `torch_threads` setting applies to either runtime)."""
        if threads != self.threads:
            self.threads = threads
            self.session = self._session(threads)

    def knots(self, batch: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """batch: (B, 8, S, S) float32, categories: (B,) int64 → knots (B, stages, 3, L + 1) float64."""
        size = len(batch)
        step = self.batch or size
        out = []
        for start in range(0, size, step):  # a fixed-batch export runs in chunks of its size, the last padded
            chunk, index = batch[start:start + step], categories[start:start + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                index = np.concatenate([index, np.repeat(index[-1:], pad)])
            feed = {self._inputs[0]: chunk}
            if len(self._inputs) > 1:
                feed[self._inputs[1]] = index
            out.append(self.session.run(None, feed)[0][:step - pad])
        return np.concatenate(out).astype(np.float64)

    def num_parameters(self) -> int:
        """The PyTorch network's parameter count, as the export recorded it."""
        return self.parameters
