"""Harmonize a video clip frame by frame: PyAV in and out (model.video_io), curves smoothed over time
(model.temporal), one forward pass per frame (or per N-th frame) and a LUT render at full resolution.

    h = Harmonizer.load()
    h.harmonize_video("out.mp4", "clip.mp4", mask="matte.mp4", smoothing=0.5)      # or mask="masks/" (frames)
    h.harmonize_video("out.mp4", foreground="presenter.mov", background="studio.jpg", at=(40, 0), scale=0.8)
    h.harmonize_video("out.mp4", "clip.mp4", mask="auto", box=(x0, y0, x1, y1), mask_every=5)  # found masks

Inputs: a composite video and its mask (a video of the same frame count, grey = matte, or a folder of per-frame
images sorted by name); or the layer form, a foreground (a video or folder of RGBA frames, or RGB frames with
`mask` as their matte) placed on a background (a video, a folder of frames, or one image). The timing (frame
rate, timestamps, audio, rotation) comes from the composite, else the background video, else the foreground
video; frames from folders alone need `fps`.

Streaming: frames are decoded, harmonized and encoded one at a time (with `curves_every` N, at most N − 1 wait),
so memory does not grow with the clip. Interrupted (KeyboardInterrupt), the frames done so far are finished
into a playable file at the partial name (`out.partial.mp4`; none if no frame was done) and nothing is at
`output`; any other failure leaves no file. A finished run renames the partial file to `output`.

mask="auto" finds the object of a composite clip (model.segmentation, inside `box` when given) on every
`mask_every`-th frame, holds that mask between, and blends each new one into the last (AutoMask) so the matte
does not flicker; a frame where nothing is found keeps the last mask, or passes through before the first.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .layers import LayerError, compose
from .temporal import Frame, VideoOptions, harmonize_frames
from .video_io import Source, StillSource, VideoError, VideoWriter, open_source, snap_mask

__all__ = ["AutoMask", "VideoError", "VideoInterrupted", "VideoResult", "harmonize_video", "partial_path"]

DEFAULT_CODEC, DEFAULT_CRF = "libx264", 18  # H.264 plays everywhere; CRF 18 is visually lossless for x264


@dataclass(frozen=True)
class VideoResult:
    """What a run did: frames written, shots (scene cuts, the first frame included), forward passes, time."""

    output: Path
    frames: int
    shots: int
    predictions: int
    seconds: float
    rate: Fraction


class VideoInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `partial` is the playable file of the `frames` done (None when none was)."""

    def __init__(self, partial: Path | None, frames: int):
        super().__init__(f"interrupted after {frames} frames")
        self.partial, self.frames = partial, frames


def partial_path(output: Path) -> Path:
    """Where the output is written until it is complete: `out.mp4` → `out.partial.mp4` (same container)."""
    return output.with_name(f"{output.stem}.partial{output.suffix}")


@dataclass
class _Inputs:
    """The opened sources and how one frame of each becomes a composite + mask."""

    timing: Source  # whose clock, audio and metadata the output keeps
    sources: dict[str, Source]
    size: tuple[int, int]  # the output's width, height
    combine: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


class AutoMask:
    """mask="auto" for a clip: the object found (inside `box`) on every `every`-th frame and held between; each
    new mask is blended into the last, last + MASK_BLEND · (found − last), in 8-bit integers."""

    def __init__(self, segmenter, box=None, every: int = 5):
        if every < 1:
            raise ValueError(f"mask_every: must be at least 1, got {every}")
        self.segmenter, self.box, self.every = segmenter, box, every
        self.index, self.mask = 0, None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        from .segmentation import NoObjectError

        if self.index % self.every == 0:
            try:
                found = self.segmenter.mask(frame, self.box)
            except NoObjectError:
                found = None
            if found is not None:
                if self.mask is None:
                    self.mask = found
                else:  # uint16: (last·(256 − w) + found·w + 128) >> 8, no float copy of the frame
                    weight = round(MASK_BLEND * 256)
                    blended = self.mask.astype(np.uint16) * (256 - weight) + found.astype(np.uint16) * weight
                    self.mask = ((blended + 128) >> 8).astype(np.uint8)
        self.index += 1
        return self.mask if self.mask is not None else np.zeros(frame.shape[:2], np.uint8)


MASK_BLEND = 0.5  # share of a newly found mask; the rest is the last one


def _composite_inputs(input, mask, auto_mask: AutoMask | None = None) -> _Inputs:
    video = open_source(input, "input", "RGB")
    if not video.is_video:
        raise VideoError("input: give a video file (frames from a folder: use the layer form with --fps)")
    if auto_mask is not None:
        return _Inputs(video, {"input": video}, video.size, lambda d: (d["input"], auto_mask(d["input"])))
    matte = open_source(mask, "mask", "L")
    return _Inputs(video, {"input": video, "mask": matte}, video.size,
                   lambda d: (d["input"], snap_mask(d["mask"])))


def _layer_inputs(foreground, background, mask, at, scale) -> _Inputs:
    fg = open_source(foreground, "foreground", "RGB" if mask is not None else "RGBA")
    bg = open_source(background, "background", "RGB", still=True)
    sources = {"foreground": fg, "background": bg}
    if mask is not None:
        sources["mask"] = open_source(mask, "mask", "L")
    timing = next((s for s in (bg, fg) if s.is_video), fg)

    def combine(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        matte = snap_mask(d["mask"]) if "mask" in d else None
        try:
            layered = compose(d["foreground"], d["background"], at, scale, foreground_mask=matte)
        except LayerError as e:
            if "transparent" not in str(e):
                raise
            return d["background"], np.zeros(d["background"].shape[:2], np.uint8)  # nothing of it shows
        return np.asarray(layered.composite), np.asarray(layered.mask)

    return _Inputs(timing, sources, bg.size, combine)


def _check_counts(inputs: _Inputs) -> None:
    want = inputs.timing.count
    for name, source in inputs.sources.items():
        if want is not None and source.count is not None and source.count != want:
            raise VideoError(f"{name}: {source.count} frames, but the {inputs.timing.what} has {want}")


def _frames(inputs: _Inputs, rate: Fraction, time_base: Fraction, audio_sink) -> Iterator[Frame]:
    """The sources in lock-step → Frames (tag: pts, display matrix); a source that ends early or late fails."""
    streams = {name: iter(s.frames(audio_sink if s is inputs.timing else None)) for name, s in inputs.sources.items()}
    timing_name = next(name for name, s in inputs.sources.items() if s is inputs.timing)
    count = 0
    for index, decoded in enumerate(streams[timing_name]):
        pixels = {timing_name: decoded.pixels}
        for name, stream in streams.items():
            if name != timing_name:
                other = next(stream, None)
                if other is None:
                    raise VideoError(f"{name}: {index} frames, but the {inputs.timing.what} has more")
                pixels[name] = other.pixels
        image, mask = inputs.combine(pixels)
        if image.shape[:2] != mask.shape[:2]:
            raise VideoError(f"mask: frame {index} is {mask.shape[1]}×{mask.shape[0]}, but the video is "
                             f"{image.shape[1]}×{image.shape[0]}")
        pts = decoded.pts if decoded.pts is not None else round(index / rate / time_base)
        seconds = decoded.time if decoded.time is not None else index / rate
        yield Frame(image, mask, float(seconds), (pts, decoded.matrix))
        count = index + 1
    if count == 0:
        raise VideoError(f"{inputs.timing.what}: no video frames in {inputs.timing.path}")
    for name, stream in streams.items():
        if name != timing_name and not isinstance(inputs.sources[name], StillSource):
            if next(stream, None) is not None:
                raise VideoError(f"{name}: more frames than the {inputs.timing.what}'s {count}")


def harmonize_video(harmonizer, output, input=None, mask=None, *, foreground=None, background=None, at=None,
                    scale=None, fps=None, strength: float | None = None, smoothing: float = 0.5,
                    curves_every: int = 1, cut_threshold: float = 0.1, category: str | None = None,
                    codec: str = DEFAULT_CODEC, crf: int | None = DEFAULT_CRF,
                    progress: Callable[[int, int | None], None] | None = None, box=None,
                    mask_every: int = 5) -> VideoResult:
    """Harmonize a clip into `output` (container from its extension: .mp4, .mkv, .mov, ...) → VideoResult.
    Bad inputs raise VideoError (a ValueError); `progress(done, total)` is called as frames are written (total:
    None when the container does not say). mask="auto" (+ box, mask_every): the masks are found (AutoMask)."""
    options = VideoOptions(strength, smoothing, curves_every, cut_threshold, category)
    output = Path(output)
    if (input is None) == (foreground is None):
        raise ValueError("give either input + mask or foreground + background")
    if input is not None:
        if mask is None:
            raise ValueError("mask: a composite video needs its mask (a video, a folder of frames or 'auto')")
        auto = isinstance(mask, str) and mask == "auto"
        inputs = _composite_inputs(input, mask, AutoMask(harmonizer.segmenter, box, mask_every) if auto else None)
    else:
        if box is not None or mask == "auto":
            raise ValueError("mask: 'auto' (and box) find the object of a composite video, not of layer input")
        if background is None:
            raise ValueError("background: the layer form needs a background (a video, frames or an image)")
        inputs = _layer_inputs(foreground, background, mask, at, scale)
    try:
        timing = inputs.timing
        if timing.is_video and fps is not None:
            raise VideoError(f"fps: the {timing.what} video keeps its own frame rate; fps is for frames from "
                             "folders")
        rate = timing.rate if timing.is_video else Fraction(fps) if fps else None
        if not rate or rate <= 0:
            raise VideoError("fps: frames from folders need a frame rate (fps=25, or 30000/1001)")
        time_base = timing.time_base if timing.is_video else 1 / rate
        if timing.count is None and not timing.is_video:
            raise VideoError(f"{timing.what}: one image is no clip; give a video or a folder of frames")
        _check_counts(inputs)
        started, shots, predictions, written = time.perf_counter(), 0, 0, 0
        partial = partial_path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        writer = VideoWriter(partial, inputs.size, codec, crf, rate, time_base, timing)
        try:
            frames = _frames(inputs, rate, time_base, writer.copy)
            for frame, out, info in harmonize_frames(harmonizer, frames, options):
                pts, matrix = frame.tag
                writer.write(out, pts, matrix)
                written += 1
                shots += info.cut and info.curves is not None
                predictions += info.key
                if progress is not None:
                    progress(written, timing.count)
            writer.close()
        except KeyboardInterrupt:
            if not writer.frames:
                writer.abort()
                raise VideoInterrupted(None, 0) from None
            writer.close()  # a playable file of what was done, at the partial name (no-op if already closed)
            raise VideoInterrupted(partial, writer.frames) from None
        except BaseException:
            writer.abort()
            raise
        partial.replace(output)
        return VideoResult(output, written, shots, predictions, time.perf_counter() - started, rate)
    finally:
        for source in inputs.sources.values():
            source.close()
