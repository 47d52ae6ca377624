"""The one home of logging setup for the service and the CLI: text for people, JSON lines for log pipelines.

    configure_logging("info", "json")   # S2CRNET_LOG_FORMAT=json: one JSON object per line on stderr

Rules, each for a reason:
- One handler on the root logger, installed here and replaced (never stacked) when called again: `s2crnet serve`
  configures text for the CLI, then the service's settings may switch it to JSON. A root that already has
  someone else's handlers (pytest, an application embedding ours) keeps them; only our levels are set.
- uvicorn's loggers propagate to that handler, so its lines have the same format; its access log is off, because
  the middleware's access line (`access`) carries more: request id, endpoint, status, duration, image size.
- The request id reaches every line logged while a request is handled (a context variable set by the
  middleware), so a JSON line of the pipeline can be joined to its access line.
"""

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["REQUEST_ID", "access", "configure_logging"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("s2crnet_request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields an access line carries beside its message, in this order in JSON (and appended in text as key=value).
ACCESS_FIELDS = ("request_id", "method", "endpoint", "status", "duration_ms", "image_size")
_OURS = "_s2crnet_handler"  # marks the handler installed here, so a second call replaces it
access_log = logging.getLogger("app.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the request fields that are
    known, and the exception's traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for name in ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Install (or replace) our root handler in `fmt` ("text" or "json") and set our loggers to `level`."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
        handler.addFilter(_RequestIdFilter())
        setattr(handler, _OURS, True)
        root.addHandler(handler)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # one format for every line
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # replaced by `access` below
    for name in ("app", "model", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())


def access(method: str, endpoint: str, status: int, duration_s: float, request_id: str,
           image_size: tuple[int, int] | None) -> None:
    """The one line per request: `POST /harmonize 200 84.1 ms 640x480 id=…`, its fields kept apart for JSON."""
    size = f"{image_size[0]}x{image_size[1]}" if image_size else None
    duration_ms = round(duration_s * 1000, 1)
    access_log.info("%s %s %d %.1f ms%s id=%s", method, endpoint, status, duration_ms, f" {size}" if size else "",
                    request_id,
                    extra={"request_id": request_id, "method": method, "endpoint": endpoint, "status": status,
                           "duration_ms": duration_ms, "image_size": size})
