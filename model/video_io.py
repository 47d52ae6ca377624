"""Frames in and out of video files with PyAV (FFmpeg's libraries, no `ffmpeg` binary): the sources that
model.video reads (a video, a folder of images, one still image) and the writer that keeps the container right.

Rules, each for a reason:
- The output keeps the timing video's timestamps as they are (same time base, same pts), so frame rate, variable
  or fractional (29.97 = 30000/1001), frame count and duration come out as they went in; its average rate,
  pixel aspect and display matrix (rotation, flips) are copied too.
- A container without per-frame timestamps (AVI, MPEG-PS, ASF, Ogg, 3GP: no AVFMT_VARIABLE_FPS) counts frames
  at one rate, so there the time base is 1/rate and each frame's pts is its slot on that grid: the rate comes out
  right (not 1/time base), the index holds one entry per frame, and there are no B-frames (whose reordering
  needs the timestamps such a container lacks). A clip whose frames do not fit the grid (a
  variable rate) is refused with the containers that can hold it, rather than written with the wrong timing.
- Audio packets are copied, never decoded: the sound is bit for bit the input's. They wait until the first video
  frame is decoded, because the header (with the display matrix it carries) is written at the first packet.
- Colours: decoding reads each frame's own matrix and range; encoding writes limited-range 4:2:0 with the input's
  matrix, or, for an untagged input, the one players assume (BT.709 from 720 lines up, BT.601 below).
- Mask frames are lossy when they come from a video: levels within MASK_NOISE of 0 or 255 snap to it, so codec
  noise neither blends the whole frame at 1/255 nor widens the object's bounding box to the frame.
- Ctrl-C never lands inside the writer: a KeyboardInterrupt between the encoder handing over a frame's packets
  and their mux would drop them (the decoder then misses a reference picture), so SIGINT waits until the frame
  (or the final flush) is in the container, then raises as usual.
"""

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from .inputs import open_upright

__all__ = ["MASK_NOISE", "Source", "StillSource", "VideoError", "VideoWriter", "deferred_interrupt", "open_source",
           "snap_mask"]

log = logging.getLogger(__name__)
MASK_NOISE = 8  # levels: what an 8-bit 4:2:0 encode of a black/white matte typically wanders by
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif", ".avif"}
MAX_CRF = 63  # the widest constant-rate-factor scale of PyAV's encoders (VP9's; x264's ends at 51)
HD_LINES = 720  # from here up an untagged video is BT.709 to players, below it BT.601
BT709, BT601 = (1,), (5, 6)  # FFmpeg's AVColorSpace codes of each matrix (BT.601: BT470BG, SMPTE170M)
MODES = {"RGB": "rgb24", "RGBA": "rgba", "L": "gray"}  # what a source yields → PyAV's pixel format
VARIABLE_FPS = 0x0400  # FFmpeg's AVFMT_VARIABLE_FPS: the container stores each frame's own timestamp


@contextmanager
def deferred_interrupt():
    """Hold SIGINT for the block and raise its KeyboardInterrupt at the end. Only where Python's own handler is
    installed, in the main thread (the only one signals reach); elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pending = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


class VideoError(ValueError):
    """A video input or output that cannot work: unreadable, mismatched frames, a codec that is missing."""


@dataclass
class Decoded:
    """One source frame: pixels (H, W[, C]) uint8, and where the timing source has them, its timestamp."""

    pixels: np.ndarray
    pts: int | None = None
    time: float | None = None
    matrix: list[int] | None = None  # the display matrix (first frame of a video)


def snap_mask(mask: np.ndarray) -> np.ndarray:
    """A matte with codec noise removed: levels ≤ MASK_NOISE → 0, ≥ 255 − MASK_NOISE → 255."""
    return np.where(mask <= MASK_NOISE, 0, np.where(mask >= 255 - MASK_NOISE, 255, mask)).astype(np.uint8)


class Source:
    """Frames of one input in a mode ("RGB", "RGBA", "L"). count: frames (None: unknown or a still's
    'as many as needed'); rate/time_base: the timing of a video (None for folders and stills)."""

    count: int | None = None
    rate: Fraction | None = None
    time_base: Fraction | None = None
    is_video = False

    def __init__(self, path: Path, what: str, mode: str):
        self.path, self.what, self.mode = path, what, mode

    def frames(self, audio_sink=None) -> Iterator[Decoded]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class StillSource(Source):
    """One image, the same in every frame (a background photo)."""

    def __init__(self, path: Path, what: str, mode: str):
        super().__init__(path, what, mode)
        try:
            self.image = np.asarray(open_upright(path, mode))
        except OSError as e:
            raise VideoError(f"{what}: cannot read {path}: {e}") from None
        self.size = (self.image.shape[1], self.image.shape[0])

    def frames(self, audio_sink=None) -> Iterator[Decoded]:
        while True:
            yield Decoded(self.image)


class FolderSource(Source):
    """A folder of per-frame images, in name order."""

    def __init__(self, path: Path, what: str, mode: str):
        super().__init__(path, what, mode)
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise VideoError(f"{what}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        self.count = len(self.files)
        self.size = Image.open(self.files[0]).size

    def frames(self, audio_sink=None) -> Iterator[Decoded]:
        for index, file in enumerate(self.files):
            try:
                with Image.open(file) as im:
                    yield Decoded(np.asarray(im.convert(self.mode)), pts=index)
            except OSError as e:
                raise VideoError(f"{self.what}: cannot read {file}: {e}") from None


class VideoSource(Source):
    """The first video stream of a file, decoded in order; its audio streams can be copied out as packets."""

    is_video = True

    def __init__(self, path: Path, what: str, mode: str):
        import av

        super().__init__(path, what, mode)
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"{what}: cannot read {path} as a video: {e}") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{what}: {path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps pace with the encoder
        self.audio = list(self.container.streams.audio)
        self.count = self.stream.frames or None  # 0: the container does not say (WebM, MKV)
        self.rate = self.stream.average_rate or self.stream.guessed_rate
        self.time_base = self.stream.time_base
        self.size = (self.stream.codec_context.width, self.stream.codec_context.height)
        self.aspect = self.stream.sample_aspect_ratio

    def frames(self, audio_sink=None) -> Iterator[Decoded]:
        import av
        from av.sidedata.sidedata import Type

        streams = [self.stream, *(self.audio if audio_sink else [])]
        first = True
        try:
            for packet in self.container.demux(streams):
                if packet.stream is not self.stream:
                    if packet.dts is not None:  # the demuxer's end-of-stream marker has none
                        audio_sink(packet)
                    continue
                for frame in packet.decode():
                    pixels = frame.to_ndarray(format=MODES[self.mode], src_color_range=frame.color_range or None)
                    matrix = None
                    if first and Type.DISPLAYMATRIX in frame.side_data:
                        matrix = np.frombuffer(bytes(frame.side_data[Type.DISPLAYMATRIX]), np.int32).tolist()
                    first = False
                    yield Decoded(pixels, frame.pts, frame.time, matrix)
        except av.FFmpegError as e:
            raise VideoError(f"{self.what}: cannot decode {self.path}: {e}") from None

    def close(self) -> None:
        self.container.close()


def open_source(path, what: str, mode: str, still: bool = False) -> Source:
    """A folder → FolderSource; an image file → StillSource (only where `still` is allowed); else a video."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{what}: {path} does not exist")
    if path.is_dir():
        return FolderSource(path, what, mode)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not still:
            raise VideoError(f"{what}: {path} is one image; give a video or a folder of frames")
        return StillSource(path, what, mode)
    return VideoSource(path, what, mode)


class VideoWriter:
    """An output video with the timing source's clock and metadata, and its audio streams copied unchanged.

    write() frames in order with their pts; copy() audio packets; close() finishes a playable file."""

    def __init__(self, path: Path, size: tuple[int, int], codec: str, crf: int | None, rate: Fraction,
                 time_base: Fraction, timing: Source | None):
        import av

        width, height = size
        try:
            av.codec.Codec(codec, "w")
        except (av.FFmpegError, ValueError):
            raise VideoError(f"codec: this FFmpeg build has no {codec!r} encoder (libx264 and libvpx-vp9 "
                             "are in PyAV's wheels)") from None
        if crf is not None and not 0 <= crf <= MAX_CRF:
            raise VideoError(f"crf: must be from 0 (best) to 51 (x264) or {MAX_CRF} (VP9), got {crf}")
        if width % 2 or height % 2:
            raise VideoError(f"the video is {width}×{height}: 4:2:0 encoding needs an even width and height")
        try:
            self.container = av.open(str(path), "w")
        except (av.FFmpegError, ValueError, OSError) as e:
            raise VideoError(f"output: cannot write {path}: {e}") from None
        self.path = path
        audio = timing.audio if isinstance(timing, VideoSource) else []
        unsupported = [s.codec_context.name for s in audio
                       if s.codec_context.name not in self.container.supported_codecs]
        if codec not in self.container.supported_codecs or unsupported:
            self.abort()
            names = ", ".join(([codec] if codec not in self.container.supported_codecs else []) + unsupported)
            raise VideoError(f"output: a {path.suffix} file cannot hold {names}; try .mkv")
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        # constant-rate containers: pts are frame slots at `rate` (see the module's rules); else the source's own
        self.source_time_base = time_base
        self.rate = None if self.container.format.flags & VARIABLE_FPS else Fraction(rate)
        self.stream.codec_context.time_base = time_base if self.rate is None else 1 / self.rate
        if self.rate is not None:  # frames in decode order, no pts: no reordering, and no shift of every
            self.stream.codec_context.max_b_frames = 0  # stream for the audio's priming (a leading empty slot)
            self.container.container_options["avoid_negative_ts"] = "disabled"
        self.last_pts: int | None = None
        if crf is not None:
            self.stream.options = {"crf": str(crf)}
        tag = int(timing.stream.codec_context.colorspace) if isinstance(timing, VideoSource) else 2
        if tag not in BT709 + BT601:  # unspecified (or rare): what a player assumes for this size
            tag = BT709[0] if height >= HD_LINES else BT601[0]
        self.colorspace = "ITU709" if tag in BT709 else "ITU601"  # the matrix swscale encodes with
        self.stream.codec_context.colorspace = tag
        self.stream.codec_context.color_range = 1  # MPEG (limited)
        if isinstance(timing, VideoSource) and timing.aspect:
            self.stream.codec_context.sample_aspect_ratio = timing.aspect
        self.audio = {s.index: self.container.add_stream_from_template(s) for s in audio}
        self.held: list = []  # audio packets that came before the first video frame
        self.started = self.closed = False
        self.frames = 0  # frames whose packets are all in the container (or, until close, in the encoder)

    def copy(self, packet) -> None:
        packet.stream = self.audio[packet.stream.index]
        if self.started:
            with deferred_interrupt():
                self.container.mux(packet)
        else:
            self.held.append(packet)

    def write(self, rgb: np.ndarray, pts: int, matrix: list[int] | None = None) -> None:
        with deferred_interrupt():
            self._write(rgb, pts, matrix)

    def _write(self, rgb: np.ndarray, pts: int, matrix: list[int] | None) -> None:
        import av

        if not self.started:
            if matrix is not None:
                self.stream.set_display_matrix(matrix)
            self.started = True
            for packet in self.held:
                self.container.mux(packet)
            self.held.clear()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace=self.colorspace, dst_color_range="MPEG")
        if self.rate is not None:
            pts = round(pts * self.source_time_base * self.rate)
            if self.last_pts is not None and pts <= self.last_pts:
                raise VideoError(f"output: a {self.path.suffix} file holds one frame rate ({float(self.rate):g} "
                                 f"fps), and frame {self.frames + 1} of this clip comes sooner (a variable rate); "
                                 "write .mp4, .mkv or .mov, which keep every frame's time")
        self.last_pts = pts
        frame.pts = pts
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder's delayed frames and finish the container: a playable file of every frame written
        so far. Closing again does nothing."""
        with deferred_interrupt():
            if self.closed:
                return
            if not self.started:
                self.started = True
                self.container.mux(self.held)
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.closed = True

    def abort(self) -> None:
        """Close without caring for the file, and delete it."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - it is being thrown away
            pass
        self.path.unlink(missing_ok=True)
