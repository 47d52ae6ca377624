"""The two input forms of POST /harmonize and /curves, checked before any decoding.

Either `composite` + `mask` (a finished composite), or `foreground` (+ `foreground_mask`) + `background` with
the placement fields `x`, `y`, `scale`, `box`, `feather` (model.layers composes them). Mixing the two, or a
half-sent form, is a 422 naming the parts, so a client never gets a result it did not ask for.
`mask` may be the text `auto` instead of a file: the object is found (app/masking.py), inside `box` when one is
sent — with a composite, `box` says where the object is; with layer input, where to fit the foreground.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import File, Form, Request, UploadFile

from model.layers import LayerError, parse_box

from .errors import ApiError
from .imaging import OUTPUT_FORMATS
from .masking import AUTO, parse_box_field

__all__ = ["CURVES_FORMATS", "InputForm", "check_body", "layer_api_error", "read_form",
           "BoxField", "CurvesFormatField", "FeatherField", "ForegroundFile", "ForegroundMaskFile", "BackgroundFile",
           "ImageFormatField", "OutputField", "ScaleField", "StrengthField", "XField", "YField"]

OptionalFile = UploadFile | None
ForegroundFile = Annotated[OptionalFile, File(description="layer input: the object to place, RGBA (alpha = its "
                                                          "matte) or RGB with `foreground_mask`")]
ForegroundMaskFile = Annotated[OptionalFile, File(description="layer input: the foreground's matte, same size "
                                                              "(replaces its alpha)")]
BackgroundFile = Annotated[OptionalFile, File(description="layer input: the photo to place the foreground on; "
                                                          "the output has its size")]
XField = Annotated[int | None, Form(description="layer input: the foreground's left edge in background pixels "
                                                "(default 0; may be negative)")]
YField = Annotated[int | None, Form(description="layer input: the foreground's top edge (default 0)")]
ScaleField = Annotated[float | None, Form(description="layer input: resample the foreground by this factor "
                                                      "(default 1; > 0)")]
BoxField = Annotated[str | None, Form(description="x0,y0,x1,y1. Layer input: the box to fit the foreground into, "
                                                  "aspect kept, centred (instead of x, y, scale). With mask=auto: "
                                                  "where the object is, in composite pixels")]
FeatherField = Annotated[float | None, Form(description="layer input: pixels of Gaussian softening of the "
                                                        "matte's edge, inwards (default 0)")]
StrengthField = Annotated[float | None, Form(ge=0, le=1, allow_inf_nan=False, description="share of the "
                                             "curves' change to apply, 0-1 (default: the weights' own)")]
OutputField = Annotated[Literal["image", "layer"], Form(description="image: the flattened result; layer: the "
                                                                    "harmonized foreground as RGBA (layer input)")]
# Formats as strings, checked by app.imaging.format_name: any case, and aliases (jpg); the schema lists our names.
CURVES_FORMATS = ("json", "cube")
ImageFormatField = Annotated[str | None, Form(description="jpeg (or jpg), png, webp or avif, in any case "
                                                          "(default: the composite's own, else jpeg)",
                                              json_schema_extra={"enum": list(OUTPUT_FORMATS)})]
CurvesFormatField = Annotated[str, Form(description="json or cube, in any case",
                                        json_schema_extra={"enum": list(CURVES_FORMATS)})]

_PLACEMENT = ("x", "y", "scale", "box", "feather")


@dataclass
class InputForm:
    """What a request sent, once checked: `layer` says which form."""

    layer: bool
    composite: UploadFile | None = None
    mask: UploadFile | None = None
    foreground: UploadFile | None = None
    foreground_mask: UploadFile | None = None
    background: UploadFile | None = None
    at: tuple[int, int] | None = None
    scale: float | None = None
    box: tuple[int, int, int, int] | None = None  # layer input: where to fit the foreground
    feather: float = 0.0
    auto_mask: bool = False  # composite with mask=auto: the object is found, inside object_box when given
    object_box: tuple[int, int, int, int] | None = None


def read_form(composite: UploadFile | None, mask: UploadFile | str | None, foreground: UploadFile | None,
              foreground_mask: UploadFile | None, background: UploadFile | None, x: int | None, y: int | None,
              scale: float | None, box: str | None, feather: float | None,
              content_type: str = "multipart/form-data") -> InputForm:
    """The request's form, or a 422: missing_field for a half-sent form, mixed_inputs for both at once; a 400
    bad_request when nothing was found because the body is not a form at all (JSON, text, a raw image, ...)."""
    auto_mask = isinstance(mask, str)
    if auto_mask and mask.strip().lower() != AUTO:
        raise ApiError(422, "invalid_field", f"mask: send an image file, or the text {AUTO} to find the object; "
                       f"got the text {mask[:40]!r}")
    placement = {"x": x, "y": y, "scale": scale, "box": None if auto_mask else box, "feather": feather}
    layer_parts = [name for name, part in (("foreground", foreground), ("foreground_mask", foreground_mask),
                                           ("background", background)) if part is not None]
    layer_parts += [name for name in _PLACEMENT if placement[name] is not None]
    composite_parts = [name for name, part in (("composite", composite), ("mask", mask)) if part is not None]
    if layer_parts and composite_parts:
        raise ApiError(422, "mixed_inputs", f"{', '.join(composite_parts + layer_parts)}: send either composite "
                       "+ mask, or foreground + background (with x, y, scale, box, feather), not both")
    media_type = content_type.partition(";")[0].strip().lower()
    if not layer_parts and not composite_parts and media_type != "multipart/form-data":
        raise ApiError(400, "bad_request", f"the body is {media_type or 'without a Content-Type'}; send "
                       "multipart/form-data with file parts `composite` and `mask` (curl -F)")
    if not layer_parts:
        missing = [name for name in ("composite", "mask") if name not in composite_parts]
        if missing:
            alternative = " (or foreground + background)" if len(missing) == 2 else ""
            raise ApiError(422, "missing_field", f"{', '.join(missing)}: missing; send the file parts composite "
                           f"and mask{alternative}")
        if auto_mask:
            return InputForm(False, composite=composite, auto_mask=True, object_box=parse_box_field(box))
        return InputForm(False, composite=composite, mask=mask)
    missing = [name for name in ("foreground", "background") if name not in layer_parts]
    if missing:
        raise ApiError(422, "missing_field", f"{', '.join(missing)}: missing; layer input needs the file parts "
                       "foreground and background")
    at = None
    if x is not None or y is not None:
        at = (x or 0, y or 0)
    try:
        parsed_box = parse_box(box) if box is not None else None
    except LayerError as e:
        raise layer_api_error(e) from None
    return InputForm(True, foreground=foreground, foreground_mask=foreground_mask, background=background, at=at,
                     scale=scale, box=parsed_box, feather=feather or 0.0)


async def check_body(request: Request) -> None:
    """What FastAPI's form parsing lets through: a multipart body cut off before its closing boundary (a client
    or proxy that stopped mid-file) is a 400, not a form with parts missing; a part sent twice is a 422, not one
    of the two chosen silently."""
    content_type = request.headers.get("content-type", "")
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != "multipart/form-data":
        return
    boundary = next((value.strip().strip('"') for name, _, value in (p.partition("=") for p in params.split(";"))
                     if name.strip().lower() == "boundary"), "")
    tail = request.scope.get("state", {}).get("body_tail")
    if boundary and tail is not None and f"--{boundary}--".encode("latin-1") not in tail:
        raise ApiError(400, "bad_request", "the multipart body ends before its closing boundary: the upload was "
                       "cut off (send the whole body; curl -F does)")
    names = [name for name, _ in (await request.form()).multi_items()]  # parsed already: FastAPI's cached form
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ApiError(422, "invalid_field", f"{', '.join(repeated)}: sent {names.count(repeated[0])} times; "
                       "send each part once")


def layer_api_error(error: LayerError) -> ApiError:
    """A bad foreground → invalid_foreground; a bad placement (x, y, scale, box, feather) → invalid_placement."""
    code = "invalid_foreground" if error.field in ("foreground", "foreground_mask") else "invalid_placement"
    return ApiError(422, code, str(error))
