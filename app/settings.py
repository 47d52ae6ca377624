"""One typed settings object for the service: every field is also an `S2CRNET_<NAME>` environment variable.

The README's configuration table is checked against these fields by tests/service/test_service_readme.py.
"""

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.config import DEVICES
from model.runtime import RUNTIMES

from .imaging import PNG_COMPRESS_LEVEL

__all__ = ["Settings"]

MIB = 1024 * 1024
_ORIGIN = re.compile(r"https?://[^/\s,]+")  # scheme://host[:port], as a browser sends it in `Origin`


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="S2CRNET_", extra="ignore", validate_default=True)

    host: str = "127.0.0.1"  # interface to listen on (0.0.0.0 in a container)
    port: int = Field(8000, ge=1, le=65535)
    weights: Path | None = None  # weights file; unset or empty = the shipped default weights
    device: Literal[DEVICES] = "auto"  # auto = cuda when a GPU is available, else cpu
    # What predicts the curves: auto = onnxruntime on the CPU when installed and the weights' .onnx export is
    # beside them, else PyTorch (always for GPUs and training); onnx never imports torch (model/runtime.py).
    runtime: Literal[RUNTIMES] = "auto"
    max_batch_size: int = Field(8, ge=1, le=256)  # most thumbnails in one forward pass (1 = no batching)
    max_delay_ms: float = Field(5.0, ge=0, le=1000)  # longest wait for a batch to fill
    max_queue: int = Field(64, ge=1, le=100_000)  # most /harmonize + /curves requests in flight; more → 503
    request_timeout_s: float = Field(30.0, gt=0)  # deadline once the upload is read; past it → 504
    header_timeout_s: float = Field(10.0, gt=0)  # longest wait for a request line and headers; past it → 408
    max_connections: int = Field(512, ge=1)  # most open connections; the next is answered 503 and closed
    drain_timeout_s: float = Field(30.0, ge=0)  # on SIGTERM, the longest wait for accepted requests
    max_upload_bytes: int = Field(64 * MIB, ge=1024)  # largest request body, counted while reading it
    max_pixels: int = Field(50_000_000, ge=1)  # largest width × height, read from the image header
    # Most decoded pixels in flight over all requests (each reserves its width × height from the headers,
    # before decoding; more wait, then 503). ~6 bytes a pixel: 200 MP ≈ 1.2 GB, for a 2 GB container.
    max_inflight_pixels: int = Field(200_000_000, ge=1)
    release_memory: bool = True  # glibc: large buffers unmapped when freed, malloc_trim after large requests
    png_compress_level: int = Field(PNG_COMPRESS_LEVEL, ge=0, le=9)  # zlib level of PNG output (1 = fast, 9 = small)
    default_quality: int = Field(95, ge=1, le=100)  # JPEG/WebP quality when the request names none
    worker_threads: int = Field(4, ge=1, le=256)  # threads for decode, thumbnails, render and encode
    # Intra-op threads of the forward pass (PyTorch or onnxruntime). 1: requests already run in parallel on the
    # worker threads, and threads spinning for a 128² forward pass slow everything else down on a small CPU.
    torch_threads: int = Field(1, ge=1, le=256)
    # Masks without painting (mask=auto, POST /mask, plain-photo foregrounds), U²-Netp on onnxruntime: auto = on
    # when its model is installed (model/segmentation.py says how), on = refuse to start without it, off = never.
    segmentation: Literal["auto", "on", "off"] = "auto"
    segment_workers: int = Field(1, ge=1, le=64)  # masks found at once, on threads of their own
    segment_threads: int = Field(2, ge=1, le=256)  # onnxruntime's intra-op threads for one mask
    api_key: SecretStr | None = None  # when set, /harmonize and /curves need `Authorization: Bearer <key>`
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line, for log pipelines
    # Origins (comma-separated) whose pages may call the API from a browser; `*` = any. Unset: no CORS headers.
    cors_origins: Annotated[list[str] | None, NoDecode] = None

    @field_validator("weights", mode="before")
    @classmethod
    def _empty_weights_is_default(cls, value):
        return None if value in ("", None) else value

    @field_validator("weights")
    @classmethod
    def _weights_must_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"weights file {value} does not exist")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value):
        return None if value in ("", None) else value

    @field_validator("api_key")
    @classmethod
    def _printable_ascii_key(cls, value: SecretStr | None) -> SecretStr | None:
        # HTTP header values arrive as Latin-1 bytes, and clients send non-ASCII text in whatever encoding they
        # like: a key with such characters could never be matched reliably, so it is refused at start-up.
        if value is not None and not all(33 <= ord(c) <= 126 for c in value.get_secret_value()):
            raise ValueError("the API key must be printable ASCII without spaces (HTTP headers are Latin-1, so "
                             "other characters never match reliably)")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated_origins(cls, value):
        if isinstance(value, str):
            value = [origin.strip() for origin in value.split(",") if origin.strip()]
        return value or None

    @field_validator("cors_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, value: list[str] | None) -> list[str] | None:
        # A browser's Origin is scheme://host[:port] with no path or trailing slash; anything else would never
        # match, and the API would look broken from that page without a word, so it fails at start-up.
        for origin in value or []:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port] (no path, no trailing "
                                 "slash) or *")
        return value
