"""Masks without painting in the service: the form field `mask=auto` (+ `box`), POST /mask, and the cutout of a
plain-photo foreground. The segmentation itself is model/segmentation.py; here are its HTTP answers and the
segmenter's own worker threads (Service.run_segmentation), timed as the stage `segment`.
"""

import time

from PIL import Image

from model.segmentation import BoxError, NoObjectError, parse_mask_box

from .errors import ApiError
from .service import Service

__all__ = ["AUTO", "CUTOUT_AUTO", "check_available", "find_mask", "parse_box_field"]

AUTO = "auto"  # the `mask` form field's text value
CUTOUT_AUTO = "auto"  # the cutout header's value: the foreground's subject was cut out by the segmenter


def check_available(service: Service) -> None:
    """422 segmentation_unavailable, before any work, on a server without the segmenter."""
    if service.segmenter is None:
        raise ApiError(422, "segmentation_unavailable", f"mask=auto, POST /mask and plain-photo foregrounds need "
                       f"the segmentation model: {service.segmenter_missing}")


def parse_box_field(box: str | None) -> tuple[int, int, int, int] | None:
    """The `box` form field of mask=auto and POST /mask → four ints, or 422 invalid_box (checked against the
    image once it is decoded: model.segmentation.region_of)."""
    if box is None:
        return None
    try:
        return parse_mask_box(box)
    except BoxError as e:
        raise ApiError(422, "invalid_box", str(e)) from None


async def find_mask(service: Service, timings: dict, image: Image.Image, box, what: str = "mask=auto") -> Image.Image:
    """The object's mask (L, the image's size) from the segmenter's threads; 422 invalid_box or no_object."""
    check_available(service)
    start = time.perf_counter()
    try:
        return await service.run_segmentation(service.segmenter.mask, image, box)
    except BoxError as e:
        raise ApiError(422, "invalid_box", str(e)) from None
    except NoObjectError as e:
        raise ApiError(422, "no_object", f"{what}: {e}") from None
    finally:
        timings["segment"] = time.perf_counter() - start
        service.metrics.stage_duration.labels("segment").observe(timings["segment"])
