"""Start-up checks shared by `python -m app`, `s2crnet serve` and the CLI: one line, one exit code.

A person reading a container log needs the setting or file and what is wrong with it, not fifty lines of
traceback. Exit codes, the same however the service is started:
  2  bad configuration (an S2CRNET_* value, a flag, S2CRNET_DEVICE=cuda without a GPU)
  3  weights that cannot be loaded
"""

from pydantic import ValidationError

__all__ = ["BAD_CONFIG", "BAD_WEIGHTS", "StartupError", "load_harmonizer", "load_segmenter", "model_name",
           "settings_from"]

BAD_CONFIG = 2
BAD_WEIGHTS = 3


class StartupError(Exception):
    """Why the service (or a CLI command) cannot start: `str()` is the one line to print."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def settings_from(**overrides):
    """Settings from S2CRNET_* variables, `overrides` (CLI flags) on top; StartupError (2) when invalid."""
    from .settings import Settings

    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as e:
        problems = []
        for error in e.errors():
            name = ".".join(str(part) for part in error["loc"])
            given = error.get("input")
            shown = "" if name == "api_key" or isinstance(given, dict) else f"={given}"
            problems.append(f"S2CRNET_{name.upper()}{shown} ({name}): {error['msg'].removeprefix('Value error, ')}")
        raise StartupError("invalid setting " + "; ".join(problems), BAD_CONFIG) from None


def load_harmonizer(weights, device: str, weights_name: str = "S2CRNET_WEIGHTS", runtime: str = "auto",
                    threads: int | None = None):
    """Harmonizer.load with its failures as StartupError: the runtime and device (2) checked first, then the
    weights and their ONNX export (3). Only the torch runtime imports torch."""
    from pathlib import Path

    from model import DEFAULT_WEIGHTS, Harmonizer, WeightsError
    from model.runtime import choose_runtime

    try:
        chosen = choose_runtime(runtime, device, Path(weights) if weights else DEFAULT_WEIGHTS)
    except ValueError as e:
        raise StartupError(f"S2CRNET_RUNTIME={runtime}: {e}", BAD_CONFIG) from None
    if chosen == "torch" and device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise StartupError(f"S2CRNET_DEVICE=cuda: PyTorch sees no CUDA GPU (torch {torch.__version__}, "
                               f"CUDA build: {torch.version.cuda or 'none'}); use auto or cpu", BAD_CONFIG)
    try:
        return Harmonizer.load(weights, device, runtime=chosen, threads=threads)
    except WeightsError as e:
        raise StartupError(f"{weights_name}: {_weights_problem(e)}", BAD_WEIGHTS) from None
    except ValueError as e:  # onnxruntime missing, or without the CUDA provider that was asked for
        raise StartupError(f"S2CRNET_RUNTIME={chosen}: {e}", BAD_CONFIG) from None


def load_segmenter(setting: str, threads: int | None = None):
    """S2CRNET_SEGMENTATION → (model.segmentation.Segmenter or None, why there is none). StartupError (3) for
    `on` without the model, and for an installed model that fails its check (a broken install, in auto too)."""
    if setting == "off":
        return None, "this server runs with S2CRNET_SEGMENTATION=off"
    from model.segmentation import Segmenter, SegmenterError, SegmenterMissing

    try:
        return Segmenter.load(threads=threads), None
    except SegmenterMissing as e:
        if setting == "on":
            raise StartupError(f"S2CRNET_SEGMENTATION=on: {e}", BAD_WEIGHTS) from None
        return None, f"this server has no segmentation model: {e}"
    except SegmenterError as e:
        raise StartupError(f"S2CRNET_SEGMENTATION={setting}: {e}", BAD_WEIGHTS) from None


def _weights_problem(error: Exception) -> str:
    """WeightsError's first clause, with its cause summarised (torch's own text can be a bare number or a
    paragraph about weights_only)."""
    text = str(error)
    head = text.split(": ", 1)[0] if "is not a valid" in text else text
    cause = error.__cause__
    if cause is None:
        return head
    if isinstance(cause, KeyError):
        return f"{head} (it has no {cause} entry)"
    if isinstance(cause, RuntimeError) and "state_dict" in str(cause):
        return f"{head} (its tensors do not fit the network its config describes)"
    return f"{head} (not a PyTorch checkpoint of ours: {type(cause).__name__})"


def model_name(harmonizer) -> str:
    """The model's name wherever it is shown (/curves, /info, the CLI's curves JSON): s2crnet-<backbone>."""
    return f"s2crnet-{harmonizer.config.backbone}" if harmonizer is not None else "s2crnet"
