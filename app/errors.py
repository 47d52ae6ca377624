"""The error model: one exception type with status + code, turned into `{"detail", "code"}` JSON in one place.

Every answer that is not a success has this body, whatever raised it (our code, FastAPI's validation,
Starlette's routing), so clients can branch on `code` and show `detail` to a person.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

__all__ = ["ApiError", "ErrorBody", "error_response", "install_error_handlers", "ERROR_CODES"]

log = logging.getLogger(__name__)

# code → (status, when): the README's error table is checked against this.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the body is not valid multipart/form-data (JSON, text, a raw image, urlencoded, ...), "
                    "or it was cut off before its closing boundary"),
    "corrupt_image": (400, "the composite or mask is truncated or corrupt"),
    "unauthorized": (401, "an API key is set and the request lacks `Authorization: Bearer <key>`"),
    "not_found": (404, "no such path"),
    "method_not_allowed": (405, "wrong HTTP method for the path"),
    "not_acceptable": (406, "the `Accept` header allows none of image/jpeg, image/png, image/webp, image/avif (or "
                       "not `format`)"),
    "header_timeout": (408, "the request line and headers took longer than `header_timeout_s`"),
    "upload_timeout": (408, "the upload took longer than `request_timeout_s`"),
    "payload_too_large": (413, "the body is over `max_upload_bytes` (checked while reading, chunked too)"),
    "image_too_large": (413, "the composite or mask has more than `max_pixels` pixels (from its header)"),
    "unsupported_image": (415, "not an image, or a format outside JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF, AVIF"),
    "missing_field": (422, "a required form part is missing (`composite` + `mask`, or `foreground` + `background`)"),
    "invalid_field": (422, "a form field has a bad value (`format`, `quality`, `strength`, `output`, a file sent as "
                      "text, a part sent twice, a form field sent in the query string, ...)"),
    "mixed_inputs": (422, "parts of both forms were sent: `composite`/`mask` and `foreground`/`background`/placement"),
    "invalid_placement": (422, "`x`, `y`, `scale`, `box` or `feather` cannot work: the foreground lands outside "
                          "the background, `scale` ≤ 0, over `max_pixels` once scaled, `box` with x1 ≤ x0, ..."),
    "invalid_foreground": (422, "the foreground's matte is fully transparent, or `foreground_mask` differs in size"),
    "unknown_category": (422, "`category` is not one the model knows (see GET /info)"),
    "mask_size_mismatch": (422, "the mask's size differs from the composite's (after EXIF orientation)"),
    "invalid_mask": (422, "the mask selects nothing, or everything (no background), or its largest value is 1"),
    "invalid_box": (422, "`box` with `mask=auto` (or on POST /mask) is not x0,y0,x1,y1, is empty or inverted, or "
                    "lies outside the image"),
    "no_object": (422, "`mask=auto` (or POST /mask, or a plain-photo foreground) found no object: the mask "
                  "would be empty"),
    "segmentation_unavailable": (422, "`mask=auto`, POST /mask or a plain-photo foreground on a server without "
                                 "the segmentation model (GET /info says; docs/DEPLOYMENT.md says how to add it)"),
    "overloaded": (503, "`max_queue` requests or `max_connections` connections are open, or the memory budget "
                   "(`max_inflight_pixels`) stayed spent; retry after `Retry-After` s"),
    "shutting_down": (503, "the server is draining before exit; retry on another replica"),
    "not_ready": (503, "the model is not loaded and warmed up yet"),
    "timeout": (504, "the request took longer than `request_timeout_s`"),
    "client_closed": (499, "(metrics only) the client disconnected; its work was abandoned"),
    "internal_error": (500, "a bug: never expected; the log has the details"),
}


class ErrorBody(BaseModel):
    """The body of every error answer."""

    detail: str
    code: str


class ApiError(HTTPException):
    """An answer other than success. A Starlette HTTPException, so FastAPI passes it through body parsing."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code


def error_response(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def _code_for_status(status: int) -> str:
    known = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
             406: "not_acceptable", 413: "payload_too_large", 504: "timeout"}
    return known.get(status, "bad_request" if status < 500 else "internal_error")


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.code, str(exc.detail), exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400:  # FastAPI's "There was an error parsing the body": say what we expect
        detail = f"{detail}: send multipart/form-data with file parts `composite` and `mask`"
    return error_response(exc.status_code, _code_for_status(exc.status_code), detail, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    missing = False
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query"))
        missing = missing or error.get("type") == "missing"
        problems.append(f"{field or 'body'}: {error.get('msg', 'invalid')}")
    detail = "; ".join(problems) or "the request is invalid"
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "multipart/form-data" and request.method == "POST":
        # The body is not a multipart form at all (JSON, text, a raw image, urlencoded — whose fields are text,
        # never files): a malformed request, whatever the field-by-field errors say.
        return error_response(400, "bad_request", f"the body is {media_type or 'without a Content-Type'}; send "
                              "multipart/form-data with file parts `composite` and `mask` (curl -F)")
    return error_response(422, "missing_field" if missing else "invalid_field", detail)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
