"""One request, top to bottom: headers → memory reservation → decode (and compose) → thumbnails → batch →
curves (`predict`) → render → encode (`render_and_encode`). A JPEG composite's thumbnails come from a reduced
decode and are batched while its full-size decode runs (`_prepare_composite`): stage decode_full overlaps
thumbnail, queue and infer in the timings. Every blocking step runs in the service's worker pool; the routes
(app/routes.py) only read the form and shape the answer."""

import asyncio
import logging
import time
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass

from fastapi import Request, UploadFile

from model import Curves
from model.inputs import check_mask, check_not_swapped, mask_to_pil
from model.layers import Layered, LayerError, compose, cut_layer
from model.segmentation import has_matte
from model.thumbnails import reduced_scale, thumbnail_array

from . import imaging, masking, memory
from .batcher import BatcherClosed, QueueFull
from .errors import ApiError
from .forms import InputForm, layer_api_error
from .middleware import RETRY_AFTER_S
from .service import Service

__all__ = ["Prediction", "find_mask", "predict", "preview", "render_and_encode", "with_deadline"]

log = logging.getLogger(__name__)

TRIM_AFTER_PIXELS = 4_000_000  # a request at least this large hands its freed memory back (malloc_trim) after it
MAX_REDUCED_SCALE = 0.5  # thumbnails from a reduced decode only when it is half the size or less: else no gain


def _prepare(service: Service, composite: imaging.Decoded, mask: imaging.Decoded):
    _check_sizes(composite.image.size, mask.image.size)
    try:
        return service.harmonizer.prepare(composite.image, mask.image)
    except ValueError as e:  # the model's sentence: empty mask, mask without background, bad mode
        raise ApiError(422, "invalid_mask", str(e)) from None


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def with_deadline(service: Service, request: Request, work) -> object:
    """Run `work` (a coroutine) under the request deadline; stop it when the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=service.settings.request_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()  # queued jobs are skipped by the batcher; later stages never start
    if watcher in done:
        log.info("client disconnected from %s; work abandoned", request.url.path)
        raise ApiError(499, "client_closed", "the client closed the connection")
    raise ApiError(504, "timeout", f"the request took longer than {service.settings.request_timeout_s} s")


@asynccontextmanager
async def _reserved(service: Service, pixels: int):
    """Hold `pixels` of the in-flight budget (see app/memory.py) for the block; 503 + Retry-After when they do
    not come free within half the request's deadline, so that the work keeps the other half."""
    wait_s = service.settings.request_timeout_s / 2
    try:
        held = await service.budget.acquire(pixels, wait_s)
    except TimeoutError:
        raise ApiError(503, "overloaded", f"the server's memory budget ({service.settings.max_inflight_pixels} "
                       f"decoded pixels in flight) stayed spent for {wait_s:g} s; retry later",
                       {"Retry-After": RETRY_AFTER_S}) from None
    try:
        yield
    finally:
        service.budget.release(held)
        if held >= TRIM_AFTER_PIXELS and service.settings.release_memory:
            with suppress(RuntimeError):  # the pool is already shut down: the process is exiting anyway
                service.pool.submit(memory.trim)  # off the event loop; a few ms


async def _open_parts(service: Service, parts: list[tuple[UploadFile, str, bool]],
                      stack: AsyncExitStack, segmented: int | None = None) -> list:
    """Read every (file, name, is_colour_image)'s header and reserve the memory their pixels will need (held
    until `stack` closes), and the found mask's when part `segmented` may be segmented. When several are bad,
    the first one's error, every time."""
    max_pixels = service.settings.max_pixels
    opened = await asyncio.gather(*(service.run_blocking(imaging.open_image, part.file, name, max_pixels)
                                    for part, name, _ in parts), return_exceptions=True)
    _raise_first(opened)
    # From the headers, before a pixel is decoded: the colour images together, or the largest part if more.
    sizes = [image.width * image.height for image in opened]
    colour = sum(size for size, (_, _, is_colour) in zip(sizes, parts, strict=True) if is_colour)
    found = memory.segmentation_pixels(sizes[segmented]) if segmented is not None else 0
    await stack.enter_async_context(_reserved(service, max(colour, *sizes) + found))
    return opened


async def _decode_parts(service: Service, parts: list[tuple[UploadFile, str, bool]],
                        stack: AsyncExitStack, segmented: int | None = None) -> list[imaging.Decoded]:
    """_open_parts, then decode them all at once (Pillow decodes without holding the GIL)."""
    opened = await _open_parts(service, parts, stack, segmented)
    decoded = await asyncio.gather(*(service.run_blocking(imaging.decode_opened, image, name, is_colour)
                                     for image, (_, name, is_colour) in zip(opened, parts, strict=True)),
                                   return_exceptions=True)
    _raise_first(decoded)
    return decoded


def _check_sizes(size: tuple[int, int], mask_size: tuple[int, int]) -> None:
    if size != mask_size:
        (cw, ch), (mw, mh) = size, mask_size
        raise ApiError(422, "mask_size_mismatch", f"the mask is {mw}×{mh} but the composite is {cw}×{ch} "
                       "(after EXIF orientation); they must be the same size")


def _thumbnails_from_reduced(service: Service, opened, reduced: imaging.Reduced, mask: imaging.Decoded):
    """The reduced composite + the full-size mask → (L mask, thumbnails), with prepare's checks. A mask box too
    small for the first (whole-image) scale is decoded again, finer (model/thumbnails.py's reduced_scale)."""
    _check_sizes(reduced.size, mask.image.size)
    try:
        check_not_swapped(reduced.image, mask.image)
        mask_image = mask_to_pil(mask.image)
        check_mask(reduced.size, mask_image)
    except ValueError as e:  # the model's sentence: empty mask, mask without background
        raise ApiError(422, "invalid_mask", str(e)) from None
    thumb = service.harmonizer.config.thumb
    scale = reduced_scale(reduced.size, mask_image.getbbox(), thumb)
    if reduced.image.width < scale * reduced.size[0]:  # the same data decoded once already: it decodes again
        reduced = imaging.decode_reduced(opened, "composite", scale, reduced.data) or reduced
    return mask_image, thumbnail_array(reduced.image, mask_image, thumb)


async def _prepare_composite(service: Service, timings: dict, composite: UploadFile, mask: UploadFile,
                             stack: AsyncExitStack):
    """composite + mask → (decoded composite or a future of it, mask image, thumbnails).

    A JPEG is first read at a reduced scale (the data check, which reads it anyway) while the mask decodes; once
    the check passes, the full-size decode runs on one worker while the mask finishes and the thumbnails are made
    from the reduced pixels and batched, so the curves are ready about when the pixels are. Other formats:
    decode, then thumbnails."""
    start = time.perf_counter()
    opened, opened_mask = await _open_parts(service, [(composite, "composite", True), (mask, "mask", False)], stack)
    scale = reduced_scale(opened.size, None, service.harmonizer.config.thumb)
    reduced = decoded_mask = None
    checked = opened.format == "JPEG" and bool(opened.info.get("progressive"))
    if checked:  # libjpeg holds a progressive file's coefficients while checking it (~147 MB at 49 MP): check
        await service.run_blocking(imaging.check_jpeg, opened, "composite")  # before the mask's pixels exist
    full = None
    if opened.format == "JPEG" and scale <= MAX_REDUCED_SCALE:
        masking = asyncio.ensure_future(service.run_blocking(imaging.decode_opened, opened_mask, "mask", False))
        stack.push_async_callback(_settle, masking)
        # The composite's check first: its error is the one reported when both parts are bad.
        reduced = await service.run_blocking(imaging.decode_reduced, opened, "composite", scale)
        if reduced is not None:  # its data is sound: the full-size decode starts now, beside the mask's
            full = asyncio.ensure_future(_full_decode(service, timings, opened))
            stack.push_async_callback(_settle, full)  # the reservation outlives the worker still decoding into it
        try:
            decoded_mask = await masking
        except ApiError:
            if full is not None:  # a composite that fails to decode is reported first, as before
                await asyncio.wait({full})
                full.result()
            raise
    if reduced is None:  # not a JPEG, a small one, or one libjpeg-turbo cannot give as RGB: decode, then thumbnails
        work = [(opened, "composite", True, checked)] + ([(opened_mask, "mask", False)] if decoded_mask is None else [])
        outcomes = await asyncio.gather(*(service.run_blocking(imaging.decode_opened, *args) for args in work),
                                        return_exceptions=True)
        _raise_first(outcomes)
        _observe(service, timings, "decode", start)
        decoded_composite, decoded_mask = outcomes[0], decoded_mask or outcomes[1]
        service.metrics.megapixels.observe(decoded_composite.image.width * decoded_composite.image.height / 1e6)
        with service.stage(timings, "thumbnail"):
            image, mask_image, thumbs = await service.run_blocking(_prepare, service, decoded_composite, decoded_mask)
        decoded_composite.image = image
        return decoded_composite, mask_image, thumbs
    _observe(service, timings, "decode", start)  # what the thumbnails waited for: headers, reduced pass, mask
    service.metrics.megapixels.observe(reduced.size[0] * reduced.size[1] / 1e6)
    try:
        with service.stage(timings, "thumbnail"):
            mask_image, thumbs = await service.run_blocking(_thumbnails_from_reduced, service, opened, reduced,
                                                            decoded_mask)
    except ApiError:
        await asyncio.wait({full})  # a composite that fails to decode is reported first, as before
        full.result()
        raise
    return full, mask_image, thumbs


async def _full_decode(service: Service, timings: dict, opened) -> imaging.Decoded:
    """The full-size decode beside thumbnail, queue and infer: its own stage, decode_full."""
    start = time.perf_counter()
    decoded = await service.run_blocking(imaging.decode_opened, opened, "composite", True, True)
    _observe(service, timings, "decode_full", start)
    return decoded


async def _settle(future: asyncio.Future) -> None:
    """Wait for a worker's result, whatever it is (its error is reported elsewhere or not needed)."""
    with suppress(Exception, asyncio.CancelledError):
        await asyncio.shield(future)


def _observe(service: Service, timings: dict, stage: str, start: float) -> None:
    timings[stage] = time.perf_counter() - start
    service.metrics.stage_duration.labels(stage).observe(timings[stage])


def _compose(service: Service, form: InputForm, foreground: imaging.Decoded, foreground_mask,
             background: imaging.Decoded) -> Layered:
    """Place the foreground on the decoded background, in place (no second full-size image)."""
    try:
        return compose(foreground.image, background.image, form.at, form.scale, form.box, form.feather,
                       foreground_mask.image if foreground_mask is not None else None,
                       max_pixels=service.settings.max_pixels, copy=False)
    except LayerError as e:
        raise layer_api_error(e) from None


async def _prepare_layer(service: Service, timings: dict, form: InputForm, stack: AsyncExitStack):
    """foreground (+ foreground_mask) + background + placement → (decoded background, mask, thumbnails, layered,
    whether the foreground was cut out). A foreground without a matte (no alpha, no foreground_mask) is a plain
    photo: its subject is cut out first (app/masking.py)."""
    parts = [(form.foreground, "foreground", True), (form.background, "background", True)]
    if form.foreground_mask is not None:
        parts.append((form.foreground_mask, "foreground_mask", False))
    with service.stage(timings, "decode"):
        foreground, background, *rest = await _decode_parts(
            service, parts, stack, segmented=0 if form.foreground_mask is None else None)
    width, height = background.image.size
    service.metrics.megapixels.observe(width * height / 1e6)
    matte, cutout = rest[0] if rest else None, False
    if matte is None and not await service.run_blocking(has_matte, foreground.image):
        found = await masking.find_mask(service, timings, foreground.image, None, "foreground (a plain photo)")
        matte, cutout = imaging.Decoded(found, None, None), True
    with service.stage(timings, "compose"):
        layered = await service.run_blocking(_compose, service, form, foreground, matte, background)
    del foreground, rest  # the scaled copy in `layered` is all that is needed from here on
    with service.stage(timings, "thumbnail"):
        background.image = layered.composite
        image, mask_image, thumbs = await service.run_blocking(_prepare, service, background,
                                                               imaging.Decoded(layered.mask, None, None))
    background.image = image
    return background, mask_image, thumbs, layered, cutout


async def _decode_and_find(service: Service, timings: dict, composite: UploadFile, box, stack: AsyncExitStack,
                           what: str) -> tuple[imaging.Decoded, object]:
    """Decode the composite (its reservation covers the found mask too) and find its object → (decoded, mask)."""
    masking.check_available(service)  # before the upload is decoded
    with service.stage(timings, "decode"):
        (decoded,) = await _decode_parts(service, [(composite, "composite", True)], stack, segmented=0)
    service.metrics.megapixels.observe(decoded.image.width * decoded.image.height / 1e6)
    return decoded, await masking.find_mask(service, timings, decoded.image, box, what)


async def _prepare_auto_mask(service: Service, timings: dict, form: InputForm, stack: AsyncExitStack):
    """composite + mask=auto (+ box) → (decoded composite, the found mask, thumbnails)."""
    decoded, found = await _decode_and_find(service, timings, form.composite, form.object_box, stack, "mask=auto")
    with service.stage(timings, "thumbnail"):
        image, mask_image, thumbs = await service.run_blocking(_prepare, service, decoded,
                                                               imaging.Decoded(found, None, None))
    decoded.image = image
    return decoded, mask_image, thumbs


async def find_mask(service: Service, timings: dict, composite: UploadFile, box, stack: AsyncExitStack) -> bytes:
    """POST /mask: the composite → the found mask as PNG bytes, the composite's size (EXIF orientation applied)."""
    decoded, found = await _decode_and_find(service, timings, composite, box, stack, "POST /mask")
    del decoded  # the mask is all that is left to send
    settings = service.settings
    with service.stage(timings, "encode"):
        body, _ = await service.run_blocking(imaging.encode, found, "png", settings.default_quality,
                                             settings.png_compress_level, None)
    return body


@dataclass
class Prediction:
    """A request's decoded input and its predicted curves, ready to render."""

    decoded: imaging.Decoded  # the composite, or for layer input the background with the foreground placed on it
    mask: object  # PIL "L" image, the composite's size
    curves: Curves  # at the request's strength
    layered: Layered | None  # layer input only: where the foreground went, for output=layer
    cutout: bool = False  # layer input only: the foreground was a plain photo, its subject cut out


async def predict(service: Service, timings: dict, form: InputForm, category: str | None, strength: float | None,
                  stack: AsyncExitStack) -> Prediction:
    """Headers → memory reservation (held until `stack` closes) → decode (and compose), thumbnail, batch →
    the curves at the request's strength."""
    service.preparing += 1
    layered, cutout = None, False
    try:
        if form.layer:
            decoded, mask_image, thumbs, layered, cutout = await _prepare_layer(service, timings, form, stack)
        elif form.auto_mask:
            decoded, mask_image, thumbs = await _prepare_auto_mask(service, timings, form, stack)
        else:
            decoded, mask_image, thumbs = await _prepare_composite(service, timings, form.composite, form.mask,
                                                                   stack)
        job = service.batcher.submit(thumbs, category)
    except QueueFull:
        raise ApiError(503, "overloaded", "the inference queue is full; retry later",
                       {"Retry-After": RETRY_AFTER_S}) from None
    except BatcherClosed:
        raise ApiError(503, "shutting_down", "the server is shutting down") from None
    finally:
        service.preparing -= 1  # after submit: the batcher must not stop waiting for a job about to arrive
    try:
        curves: Curves = await job.future
    finally:
        if not job.future.done():
            job.future.cancel()
    if isinstance(decoded, asyncio.Future):  # the full-size decode, running beside the thumbnails and the batch
        decoded = await decoded
    timings["queue"], timings["infer"] = job.queue_s, job.infer_s
    service.metrics.stage_duration.labels("queue").observe(job.queue_s)
    return Prediction(decoded, mask_image, curves.with_strength(strength), layered, cutout)


async def render_and_encode(service: Service, timings: dict, prediction: Prediction, output: str, format: str | None,
                            quality: int | None, accepted: list[str] | None) -> tuple[bytes, str]:
    """Render the curves at full size (output=layer: only the foreground's pixels, the flattened image is never
    rendered) and encode → (body, media type). The client's Accept beats our default format."""
    with service.stage(timings, "render"):
        if output == "layer":
            out = await service.run_blocking(cut_layer, prediction.layered, prediction.curves.lut())
        else:
            out = await service.run_blocking(service.harmonizer.render, prediction.decoded.image, prediction.mask,
                                             prediction.curves)
    if output == "layer":
        fmt = format or "png"
    else:
        fmt = imaging.output_format_for(format, prediction.decoded.format, out.mode == "RGBA")
    if accepted is not None and fmt not in accepted:
        keeps_alpha = [f for f in accepted if f != "jpeg"] if output == "layer" else accepted
        if not keeps_alpha:
            raise ApiError(406, "not_acceptable", "output=layer is RGBA: Accept must allow png or webp")
        fmt = keeps_alpha[0]
    settings = service.settings
    with service.stage(timings, "encode"):
        return await service.run_blocking(imaging.encode, out, fmt, quality or settings.default_quality,
                                          settings.png_compress_level, prediction.decoded.icc_profile)


async def preview(service: Service, part: UploadFile) -> bytes:
    """An image decoded as every request decodes it (limits, EXIF orientation, 8-bit RGB or RGBA) → PNG, for
    a client that cannot decode a TIFF or HEIC itself (the page shows it and paints the mask on it)."""
    async with AsyncExitStack() as stack:
        (decoded,) = await _decode_parts(service, [(part, "image", True)], stack)
        body, _ = await service.run_blocking(imaging.encode, decoded.image, "png", service.settings.default_quality,
                                             service.settings.png_compress_level, None)
        return bytes(body)


def _raise_first(outcomes: list) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
