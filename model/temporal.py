"""Curves over time: a clip harmonized frame by frame without flicker (the streaming core of model.video).

    for frame, out, info in harmonize_frames(harmonizer, frames, VideoOptions(smoothing=0.5, curves_every=2)):
        ...                                   # frames: Frame(image, mask, time); out: uint8 (H, W, 3)

Rules, each for a reason:
- Smoothing is an exponential moving average of the curves' log-slopes (the network's own parameters, see
  model.curves.curve_knots), never of knot heights or LUTs: any mix of log-slopes gives positive slopes again, so
  every smoothed curve is still monotone from 0 to 1. Log-slopes are centred per curve (a constant added to all
  of them is the same curve), so averaging two curves never depends on how each happened to be normalised.
- The average's weight comes from the frame's own timestamp, 1 − exp(−Δt / τ): τ is seconds, not frames, so
  variable and fractional frame rates smooth alike. τ = 0 is per-frame curves.
- A scene cut restarts the average at the new shot's own curves: a jump in the background's colour statistics
  (mean and spread per channel, 0-1 units) above `cut_threshold`, or a frame whose mask is empty or full (it
  passes through unchanged: there is no object, or no background to match it to). Blending across a cut would
  carry one shot's colour into the next.
- `curves_every` N predicts on every N-th frame of a shot (and on its last) and interpolates log-slopes linearly
  in time in between; it looks ahead at most N − 1 frames, so memory stays independent of the clip's length.
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .curves import Curves

__all__ = ["CurveSmoother", "CutDetector", "Frame", "FrameInfo", "VideoOptions", "background_stats", "flicker",
           "foreground_mean", "harmonize_frames", "knots_from_log_slopes", "log_slopes"]

STATS_SIDE = 64  # background statistics are read from a frame subsampled to about this many pixels a side


@dataclass(frozen=True)
class VideoOptions:
    """How a clip is harmonized (the CLI's flags and harmonize_video's keywords)."""

    strength: float | None = None  # share of the curves' change, 0-1 (None: the weights' own)
    smoothing: float = 0.5  # seconds: the moving average's time constant (0 = per-frame curves)
    curves_every: int = 1  # predict on every N-th frame, interpolate in between
    cut_threshold: float = 0.1  # background mean/spread jump (0-1 units) that counts as a scene cut
    category: str | None = None  # the object's category, for semantic models

    def __post_init__(self):
        if not (math.isfinite(self.smoothing) and self.smoothing >= 0):
            raise ValueError(f"smoothing: must be 0 or more seconds, got {self.smoothing!r}")
        if int(self.curves_every) != self.curves_every or self.curves_every < 1:
            raise ValueError(f"curves_every: must be a whole number of at least 1, got {self.curves_every!r}")
        if not self.cut_threshold > 0:
            raise ValueError(f"cut_threshold: must be above 0, got {self.cut_threshold!r}")


@dataclass
class Frame:
    """One frame in: RGB uint8 (H, W, 3), its mask uint8 (H, W), its time in seconds, and whatever the caller
    needs back with it (`tag`: the writer's timestamp)."""

    image: np.ndarray
    mask: np.ndarray
    time: float
    tag: object = None


@dataclass(frozen=True)
class FrameInfo:
    """What happened to one frame: a new shot started here (cut), its curves were predicted (key) or
    interpolated, and the curves applied (None for an empty mask, which passes through)."""

    index: int
    cut: bool
    key: bool
    curves: Curves | None


# --- log-slope space ---------------------------------------------------------------------------------------
def log_slopes(knots: np.ndarray) -> np.ndarray:
    """(..., L + 1) knot heights → (..., L) centred log-slopes: the inverse of model.curves.curve_knots."""
    z = np.log(np.maximum(np.diff(knots, axis=-1), 1e-12))  # a flat piece (float32 rounding) stays finite
    return z - z.mean(-1, keepdims=True)


def knots_from_log_slopes(z: np.ndarray) -> np.ndarray:
    """(..., L) log-slopes → (..., L + 1) knot heights from 0 to 1 (model.curves.curve_knots, in numpy, without
    its clamp: centred log-slopes of the network's curves span up to twice curves.MAX_LOG_SLOPE, all legitimate)."""
    p = np.exp(z)
    cum = np.concatenate([np.zeros_like(p[..., :1]), p.cumsum(-1)], -1)
    return cum / cum[..., -1:]


class CurveSmoother:
    """Exponential moving average of log-slopes with time constant `tau` seconds; reset() starts a new shot."""

    def __init__(self, tau: float):
        self.tau = tau
        self.reset()

    def reset(self) -> None:
        self.value: np.ndarray | None = None
        self.time: float | None = None

    def update(self, z: np.ndarray, time: float) -> np.ndarray:
        if self.value is None or self.tau == 0:
            self.value = z.copy()
        else:
            weight = 1.0 - math.exp(-max(time - self.time, 0.0) / self.tau)
            self.value = self.value + weight * (z - self.value)
        self.time = time
        return self.value


# --- scene cuts --------------------------------------------------------------------------------------------
def background_stats(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean and spread of each channel outside the mask, 0-1 units → (6,), from a ~STATS_SIDE² subsample."""
    step = max(1, min(image.shape[:2]) // STATS_SIDE)
    rgb = image[::step, ::step, :3].reshape(-1, 3).astype(np.float64) / 255.0
    weight = 1.0 - mask[::step, ::step].reshape(-1, 1).astype(np.float64) / 255.0
    total = max(weight.sum(), 1e-6)
    mean = (rgb * weight).sum(0) / total
    spread = np.sqrt((((rgb - mean) ** 2) * weight).sum(0) / total)
    return np.concatenate([mean, spread])


class CutDetector:
    """True for a frame that starts a new shot: the first, the first after an empty mask, or a jump of the
    background's statistics from the previous frame's above `threshold`."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.previous: np.ndarray | None = None

    def update(self, image: np.ndarray, mask: np.ndarray, empty: bool) -> bool:
        if empty:
            self.previous = None
            return True
        stats = background_stats(image, mask)
        cut = self.previous is None or float(np.abs(stats - self.previous).max()) > self.threshold
        self.previous = stats
        return cut


# --- the flicker figure --------------------------------------------------------------------------------------
def foreground_mean(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask-weighted mean colour (3,) in 8-bit levels (NaN for an empty mask)."""
    weight = mask.astype(np.float64)[..., None] / 255.0
    total = weight.sum()
    return (image[..., :3] * weight).sum((0, 1)) / total if total > 0 else np.full(3, np.nan)


def flicker(means: Iterable[np.ndarray]) -> float:
    """Mean absolute frame-to-frame change of the foreground's mean colour, in levels (averaged over channels).
    The flicker a harmonizer adds is flicker(after) − flicker(before): 0 adds none."""
    values = np.asarray(list(means), dtype=np.float64)
    steps = np.abs(np.diff(values, axis=0))
    return float(np.nanmean(steps)) if len(steps) else 0.0


# --- the stream --------------------------------------------------------------------------------------------
def harmonize_frames(harmonizer, frames: Iterable[Frame], options: VideoOptions = VideoOptions(),
                     ) -> Iterator[tuple[Frame, np.ndarray, FrameInfo]]:
    """Harmonize a stream of frames in order → (frame, harmonized RGB uint8, FrameInfo) for each."""
    strength = harmonizer.config.strength if options.strength is None else options.strength
    smoother, detector = CurveSmoother(options.smoothing), CutDetector(options.cut_threshold)
    pending: list[tuple[int, Frame, bool]] = []  # frames after the last keyframe, waiting for the next one
    key: tuple[float, np.ndarray] | None = None  # the shot's last keyframe: its time and log-slopes

    def predict(frame: Frame) -> np.ndarray:
        image, mask, thumbs = harmonizer.prepare(frame.image, frame.mask)
        (curves,) = harmonizer.curves_from_thumbnails([thumbs], [options.category])
        return log_slopes(curves.knots)

    def emit(index: int, frame: Frame, z: np.ndarray, cut: bool, is_key: bool):
        curves = Curves(knots_from_log_slopes(smoother.update(z, frame.time)), strength)
        image, mask = Image.fromarray(frame.image[..., :3]), Image.fromarray(frame.mask)
        out = np.asarray(harmonizer.render(image, mask, curves))
        return frame, out, FrameInfo(index, cut, is_key, curves)

    def interpolated(until: tuple[float, np.ndarray]):
        for index, frame, cut in pending:
            span = until[0] - key[0]
            share = (frame.time - key[0]) / span if span > 0 else 1.0
            yield emit(index, frame, key[1] + share * (until[1] - key[1]), cut, False)

    def close_shot():
        """The shot ends: its last pending frame becomes a keyframe, so no frame waits on the next shot."""
        nonlocal key
        if pending:
            index, frame, cut = pending.pop()
            last = (frame.time, predict(frame))
            yield from interpolated(last)
            yield emit(index, frame, last[1], cut, True)
            pending.clear()
        key = None

    since_key = 0
    for index, frame in enumerate(frames):
        empty = frame.mask.max(initial=0) == 0 or frame.mask.min(initial=255) == 255  # nothing to harmonize
        cut = detector.update(frame.image, frame.mask, empty)
        if cut:
            yield from close_shot()
            smoother.reset()
        if empty:
            yield frame, frame.image[..., :3], FrameInfo(index, True, False, None)
            continue
        if key is None or since_key + 1 >= options.curves_every:
            now = (frame.time, predict(frame))
            if key is not None:
                yield from interpolated(now)
            pending.clear()
            key, since_key = now, 0
            yield emit(index, frame, now[1], cut, True)
        else:
            pending.append((index, frame, cut))
            since_key += 1
    yield from close_shot()
