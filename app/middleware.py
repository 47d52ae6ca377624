"""The one ASGI middleware: request ids, request metrics and access lines, and the gate in front of the work endpoints.

Pure ASGI (no BaseHTTPMiddleware) so it sees the body as it streams in. For POST /harmonize, /curves and /preview it
answers at once, before a byte of the body is read: 401 without the bearer token, 503 while draining,
503 + Retry-After when `max_queue` requests are already in flight, 413 for a declared Content-Length over the
limit; then it counts body bytes as they arrive (chunked uploads too) and stops the upload with 413 past the
limit.

Any answer that starts before the request's body has been read to its end (a 400 for a garbled form, the
gate's 401/413/422/503, a 404 or 405 that never reads) carries `Connection: close`: uvicorn would otherwise
read and discard the rest of the body to keep the connection alive, without the upload limit or deadline, for
as long as the client sends (an endless chunked body holds a connection and a core forever).
"""

import asyncio
import hmac
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response
from .logs import REQUEST_ID, access

if TYPE_CHECKING:
    from .service import Service

__all__ = ["ServiceMiddleware", "WORK_PATHS"]

log = logging.getLogger(__name__)

WORK_PATHS = ("/harmonize", "/curves", "/mask", "/preview")
FORM_FIELDS = {"format", "quality", "category"}  # the work endpoints' form fields: never read from the query
BODY_TAIL_BYTES = 1024  # the end of a work request's body, kept for app.forms: a multipart body must close there
RETRY_AFTER_S = "1"  # a full queue drains in well under a second per request on the benchmark machine
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, service: "Service"):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        client_id = headers.get("x-request-id", "")
        request_id = client_id if _CLIENT_REQUEST_ID.fullmatch(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)  # every line logged for this request carries its id
        status = 500  # what the client saw if the app dies before answering
        body_pending = "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")

        async def receive_tracked() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_pending = False
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-ID"] = request_id
                if body_pending:  # the unread rest of the body must not be read after the answer: close
                    response_headers["Connection"] = "close"
            await send(message)

        endpoint = self.service.metrics.endpoint_label(scope["path"])
        try:
            if scope["path"] in WORK_PATHS and scope["method"] == "POST":
                await self._gated(scope, receive_tracked, send_with_id, headers)
            else:
                await self.app(scope, receive_tracked, send_with_id)
        finally:
            metrics = self.service.metrics
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.request_duration.labels(endpoint).observe(time.perf_counter() - start)
            # image_size: the decoded composite's (or background's) width and height, set by the routes
            access(scope["method"], scope["path"][:200], status, time.perf_counter() - start, request_id,
                   scope["state"].get("image_size"))
            REQUEST_ID.reset(token)

    async def _gated(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        service = self.service
        refusal = self._refusal(headers, scope.get("query_string", b"").decode("latin-1"))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        service.in_flight += 1
        try:
            limit = service.settings.max_upload_bytes
            upload_timeout = service.settings.request_timeout_s
            upload_deadline = time.monotonic() + upload_timeout
            received = 0
            body_done = False
            tail = b""

            async def receive_with_limit() -> Message:
                nonlocal received, body_done, tail
                if body_done:  # later receives only wait for a disconnect: no deadline on those
                    return await receive()
                try:
                    async with asyncio.timeout_at(_loop_time(upload_deadline)):
                        message = await receive()
                except TimeoutError:  # a client that trickles its upload must not hold a slot forever
                    raise ApiError(408, "upload_timeout", f"the upload took longer than {upload_timeout} s",
                                   {"Connection": "close"}) from None
                if message["type"] == "http.request":
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    tail = (tail + chunk)[-BODY_TAIL_BYTES:]
                    body_done = not message.get("more_body", False)
                    if body_done:
                        scope["state"]["body_tail"] = tail
                    if received > limit:
                        raise ApiError(413, "payload_too_large", f"the request body is over {limit} bytes",
                                       {"Connection": "close"})
                return message

            await self.app(scope, receive_with_limit, send)
        finally:
            service.in_flight -= 1

    def _refusal(self, headers: Headers, scope_query: str = ""):
        """An error response when the request must not be taken, else None."""
        service = self.service
        key = service.settings.api_key
        if key is not None and not _bearer_matches(headers.get("authorization", ""), key.get_secret_value()):
            return error_response(401, "unauthorized", "send the API key as `Authorization: Bearer <key>`",
                                  {"WWW-Authenticate": "Bearer"})
        if service.draining:
            return error_response(503, "shutting_down", "the server is shutting down; retry elsewhere",
                                  {"Retry-After": RETRY_AFTER_S, "Connection": "close"})
        if not service.ready:
            return error_response(503, "not_ready", "the model is not loaded yet",
                                  {"Retry-After": RETRY_AFTER_S})
        if service.in_flight >= service.settings.max_queue:
            return error_response(503, "overloaded", f"{service.in_flight} requests are in flight, the most "
                                  f"this server queues; retry later", {"Retry-After": RETRY_AFTER_S})
        in_query = sorted(FORM_FIELDS & {name for name, _ in parse_qsl(scope_query, keep_blank_values=True)})
        if in_query:
            return error_response(422, "invalid_field", f"{', '.join(in_query)} in the query string is ignored: "
                                  f"`{in_query[0]}` is a form field; send it as a multipart part "
                                  f"(curl -F {in_query[0]}=...)")
        limit = service.settings.max_upload_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return error_response(413, "payload_too_large", f"the request body ({declared} bytes) is over "
                                  f"{limit} bytes", {"Connection": "close"})
        return None


def _loop_time(monotonic_deadline: float) -> float:
    """A time.monotonic() deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())


def _bearer_matches(authorization: str, key: str) -> bool:
    scheme, _, token = authorization.partition(" ")
    # compare_digest runs in time independent of where the strings differ (needs ASCII or bytes)
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
