"""harmonize_video with mask="auto": the object found on every N-th frame of a generated clip (a real photo
panned and zoomed, its object under a colour cast: tests/helpers.clip_frames) by the real U²-Netp, held and
blended between, really encoded and decoded with PyAV."""

import numpy as np
import pytest
from helpers import clip_frames, make_clip, video_frames

from model import Harmonizer
from model.segmentation import NoObjectError, Segmenter
from model.video import MASK_BLEND, AutoMask

SIZE = (320, 192)


@pytest.fixture(scope="module")
def harmonizer() -> Harmonizer:
    h = Harmonizer.load(device="cpu")
    h.segmenter = Segmenter.load()
    return h


class Counting:
    """A segmenter that counts its calls and can be told to find nothing."""

    def __init__(self, segmenter):
        self.segmenter, self.calls, self.nothing = segmenter, 0, False

    def mask(self, image, box=None):
        self.calls += 1
        if self.nothing:
            raise NoObjectError("no object found")
        return self.segmenter.mask(image, box)


def test_auto_mask_segments_every_nth_frame_holds_and_blends(harmonizer):
    frames = [composite for composite, _, _ in clip_frames(count=7, size=SIZE)]
    counting = Counting(harmonizer.segmenter)
    auto = AutoMask(counting, every=3)
    masks = [auto(frame) for frame in frames[:4]]
    assert counting.calls == 2  # frames 0 and 3
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[1], masks[2])
    found = harmonizer.segmenter.mask(frames[3])
    expected = (masks[0].astype(np.uint16) * round(256 * (1 - MASK_BLEND)) + found.astype(np.uint16)
                * round(256 * MASK_BLEND) + 128) >> 8
    assert np.array_equal(masks[3], expected.astype(np.uint8))
    counting.nothing = True  # nothing found on frame 6: the last mask is kept
    assert np.array_equal([auto(frame) for frame in frames[4:]][-1], masks[3])
    empty = AutoMask(counting, every=2)
    assert empty(frames[0]).max() == 0  # nothing found before any mask: the frame passes through


def test_a_clip_harmonized_with_found_masks_is_close_to_one_with_the_true_masks(harmonizer, tmp_path):
    video, mask, masks, truth = make_clip(tmp_path, count=12, size=SIZE, audio=False)
    ys, xs = np.nonzero(masks[0] > 127)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    result = harmonizer.harmonize_video(tmp_path / "auto.mp4", video, "auto", box=box, mask_every=4)
    assert result.frames == 12
    harmonizer.harmonize_video(tmp_path / "true.mp4", video, mask)
    inside = [m > 127 for m in masks]

    def fmse(frames) -> float:
        return float(np.mean([((f.astype(float) - t) ** 2)[m].mean() for f, t, m in zip(frames, truth, inside,
                                                                                      strict=True)]))

    nothing, with_true, with_auto = (fmse(video_frames(p)) for p in (video, tmp_path / "true.mp4",
                                                                      tmp_path / "auto.mp4"))
    assert with_auto < nothing and with_auto < 1.25 * with_true, (nothing, with_true, with_auto)
