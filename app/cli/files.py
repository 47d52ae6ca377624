"""Images in and out for the CLI: output formats, saving, decoding through app/imaging, and shared helpers."""

import logging
import os
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# Output format by file extension (Pillow format names).
OUTPUT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF",
                  ".tiff": "TIFF", ".bmp": "BMP", ".avif": "AVIF"}
FORMAT_CHOICES = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp", "avif": ".avif"}
READ_ONLY_EXTENSIONS = {".heic": ".jpg", ".heif": ".jpg"}  # read, not written: → the extension written instead
IMAGE_EXTENSIONS = set(OUTPUT_FORMATS) | set(READ_ONLY_EXTENSIONS)  # what folder mode reads; the rest is listed
PARTIAL_SUFFIX = ".partial"  # outputs are written under a hidden temporary name, then renamed into place


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 1."""


# --- images in and out --------------------------------------------------------------------------------------

def output_format(path: Path) -> str:
    try:
        return OUTPUT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise CliError(f"cannot tell the output format from {str(path)!r}: use one of "
                       f"{', '.join(sorted(OUTPUT_FORMATS))}") from None


def save_image(image: Image.Image, path: Path, quality: int, icc_profile: bytes | None) -> None:
    """Encode by the extension of `path`; alpha and ICC profile kept where the format allows.

    Written to a temporary name and renamed, so an interrupted run never leaves a half-written output that a
    resumed run would skip.
    """
    image, fmt, params = _save_arguments(image, path, quality, icc_profile)
    partial = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    try:
        image.save(partial, format=fmt, **params)  # streamed to the file: no encoded copy in memory
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def image_bytes(image: Image.Image, path, quality: int, icc_profile: bytes | None) -> bytes:
    """The bytes save_image would write at `path`, in memory (for storage written in one PUT)."""
    image, fmt, params = _save_arguments(image, path, quality, icc_profile)
    buffer = BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _save_arguments(image: Image.Image, path, quality: int, icc_profile: bytes | None):
    from app.imaging import save_options  # imports the model package: only for the commands that write images

    fmt = output_format(path)
    image, params = save_options(image, fmt, quality, icc_profile)
    return image, fmt, params


@dataclass
class FolderJob:
    composite: Path
    mask: Path
    output: Path

    @property
    def source(self) -> Path:
        """What messages and the report name this job by."""
        return self.composite


@dataclass
class Prepared:
    """A decoded composite ready to render: image (RGB/RGBA), mask (L), thumbnails, ICC profile to keep."""

    image: Image.Image
    mask: Image.Image
    thumbs: "np.ndarray"  # (8, S, S) float32, see model.thumbnails
    icc_profile: bytes | None
    layered: object = None  # model.layers.Layered for layer input (what --layer cuts out), else None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, for --report
    cutout: bool = False  # layer input: the foreground was a plain photo, its subject cut out (app/cli/masks.py)


def decode_pair(composite: Path, mask: Path) -> tuple[Image.Image, Image.Image, bytes | None]:
    """Decode a composite and its mask through the service's own decoder (app/imaging.py: EXIF orientation,
    16-bit and float samples scaled, truncated data refused); also returns the ICC profile worth keeping."""
    decoded = decode_file(composite, "composite", True)
    return decoded.image, decode_file(mask, "mask", False).image, decoded.icc_profile


def decode_file(path: Path, what: str, composite: bool):
    from app import imaging  # imports the model package: only for the commands that decode
    from app.errors import ApiError

    # A local file by name (Pillow reads it as it decodes); a remote one (a UPath: s3://...) fetched whole.
    source = str(path) if isinstance(path, Path) else path.read_bytes()
    try:
        return imaging.decode(source, what, None, composite)  # no pixel limit: the user's own files
    except ApiError as e:
        if e.code == "unsupported_image":
            raise CliError(f"cannot identify image file {str(path)!r}: {e.detail}") from None
        raise CliError(f"{path}: {e.detail}") from None


def load_job(harmonizer, job: FolderJob) -> Prepared:
    """Decode, validate and thumbnail one pair (runs in a worker thread)."""
    start = time.perf_counter()
    image, mask, icc_profile = decode_pair(job.composite, job.mask)
    image, mask, thumbs = harmonizer.prepare(image, mask)
    return Prepared(image, mask, thumbs, icc_profile, timings={"decode": time.perf_counter() - start})


