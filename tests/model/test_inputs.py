"""model.inputs: the checks every composite and mask go through (service, CLI, Python)."""

import numpy as np
import pytest
from helpers import real_pair
from PIL import Image

from model.inputs import to_pil_pair


@pytest.mark.parametrize("as_array", [False, True], ids=["PIL", "numpy"])
def test_a_mask_given_as_the_composite_is_refused(as_array):
    photo, mask = real_pair(320, 240, 1)
    composite, matte = mask.convert("RGB"), photo  # swapped
    if as_array:
        composite, matte = np.asarray(composite), np.asarray(matte)
    with pytest.raises(ValueError, match="were the two swapped"):
        to_pil_pair(composite, matte)


@pytest.mark.parametrize("case", ["grey photo", "mask saved as RGB", "black-and-white drawing, grey mask"])
def test_what_only_looks_half_swapped_passes(case):
    photo, mask = real_pair(320, 240, 2)
    if case == "grey photo":
        composite, matte = photo.convert("L").convert("RGB"), mask
    elif case == "mask saved as RGB":
        composite, matte = photo, mask.convert("RGB")
    else:  # a line drawing is black and white, but its mask is a mask, not a photo
        composite, matte = mask.point(lambda v: 255 - v).convert("RGB"), mask
    image, checked = to_pil_pair(composite, matte)
    assert image.size == checked.size == (320, 240) and checked.mode == "L"


def test_a_12_megapixel_swap_is_caught_too():
    """The check looks at 64×64 nearest-neighbour samples (a resize, no full-size copy): still caught."""
    photo, mask = real_pair(4000, 3000, 0)
    with pytest.raises(ValueError, match="swapped"):
        to_pil_pair(Image.merge("RGB", [mask] * 3), photo)
