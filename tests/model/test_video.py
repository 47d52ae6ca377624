"""Harmonizer.harmonize_video and the temporal core on generated clips: a real photo panned and zoomed, its object
under a constant colour cast, the background's brightness jittering (tests/helpers.clip_frames), really encoded
(H.264 + AAC) and decoded with PyAV."""

import itertools
import signal
import sys
from fractions import Fraction

import numpy as np
import pytest
from helpers import (
    clip_frames,
    decode_with_errors,
    make_clip,
    real_cutout,
    video_frames,
    video_timing,
    write_video,
)
from PIL import Image

import model.video
import model.video_io
from model import Harmonizer
from model.temporal import (
    Frame,
    VideoOptions,
    flicker,
    foreground_mean,
    harmonize_frames,
    knots_from_log_slopes,
    log_slopes,
)
from model.video import VideoError, VideoInterrupted, partial_path

SIZE = (160, 96)


@pytest.fixture(scope="module")
def harmonizer() -> Harmonizer:
    return Harmonizer.load(device="cpu")


@pytest.mark.parametrize("rate", [Fraction(30000, 1001), Fraction(25)], ids=["29.97fps", "25fps"])
def test_output_keeps_timing_metadata_and_audio(harmonizer, tmp_path, rate):
    video, mask, _, _ = make_clip(tmp_path, rate=rate, count=24, video_options={"rotation": 90,
                                                                                 "aspect": Fraction(4, 3)})
    out = tmp_path / "out.mp4"
    result = harmonizer.harmonize_video(out, video, mask, curves_every=2)
    before, after = video_timing(video), video_timing(out)
    assert result.frames == 24 and result.rate == rate and result.predictions == 13
    assert after["rate"] == rate and len(after["pts"]) == 24
    assert after == before  # same pts in the same time base, duration, size, aspect, rotation, audio packets
    assert len(after["audio"]) > 20
    assert not partial_path(out).exists()


def test_variable_frame_rate_keeps_every_timestamp(harmonizer, tmp_path):
    times = [0, 40, 80, 150, 190, 260, 300, 333, 400, 480, 520, 600]
    video, mask, _, _ = make_clip(tmp_path, count=len(times), video_options={"times_ms": times})
    out = tmp_path / "vfr.mp4"
    harmonizer.harmonize_video(out, video, mask)
    assert video_timing(out)["pts"] == video_timing(video)["pts"]
    assert video_timing(out)["audio"] == video_timing(video)["audio"]


def test_strength_zero_is_a_plain_re_encode(harmonizer, tmp_path):
    """Nothing applied: the output is what decoding and encoding again gives, so no colour shift of our own."""
    video, mask, _, _ = make_clip(tmp_path, count=6, audio=False)
    out, plain = tmp_path / "same.mp4", tmp_path / "plain.mp4"
    harmonizer.harmonize_video(out, video, mask, strength=0)
    write_video(plain, video_frames(video), audio=False)
    difference = np.abs(np.stack(video_frames(out)).astype(int) - np.stack(video_frames(plain)))
    assert difference.mean() < 0.2


def test_smoothing_lowers_the_flicker_figure(harmonizer, tmp_path):
    video, mask, masks, _ = make_clip(tmp_path, rate=Fraction(30000, 1001), count=30)
    before = flicker(foreground_mean(frame, m) for frame, m in zip(video_frames(video), masks, strict=True))
    figures = {}
    for smoothing in (0.0, 0.5):
        out = tmp_path / f"smooth{smoothing}.mp4"
        harmonizer.harmonize_video(out, video, mask, smoothing=smoothing)
        after = flicker(foreground_mean(frame, m) for frame, m in zip(video_frames(out), masks, strict=True))
        figures[smoothing] = after - before
    assert figures[0.0] > 0.05  # per-frame curves follow the background's jitter
    assert figures[0.5] < figures[0.0] / 2


def test_scene_cut_restarts_the_smoothing(harmonizer):
    frames = [Frame(c, m, i / 25) for i, (c, m, _) in enumerate(clip_frames(count=16, cut_at=10))]
    smoothed = list(harmonize_frames(harmonizer, frames, VideoOptions(smoothing=2.0)))
    per_frame = list(harmonize_frames(harmonizer, frames, VideoOptions(smoothing=0)))
    assert [info.index for _, _, info in smoothed if info.cut] == [0, 10]
    knots = [[info.curves.knots for _, _, info in run] for run in (smoothed, per_frame)]
    np.testing.assert_allclose(knots[0][10], knots[1][10], atol=1e-9)  # nothing of the first shot is left
    np.testing.assert_allclose(knots[0][0], knots[1][0], atol=1e-9)
    assert np.abs(knots[0][9] - knots[1][9]).max() > 1e-4  # within a shot the average lags the prediction


def test_empty_mask_passes_through_and_restarts(harmonizer):
    frames = [Frame(c, m, i / 25) for i, (c, m, _) in enumerate(clip_frames(count=6))]
    frames[3].mask = np.zeros_like(frames[3].mask)
    run = list(harmonize_frames(harmonizer, frames, VideoOptions(curves_every=4)))
    assert [info.index for _, _, info in run] == list(range(6))
    assert run[3][2].curves is None and np.array_equal(run[3][1], frames[3].image)
    assert [info.index for _, _, info in run if info.cut] == [0, 3, 4]
    assert [info.index for _, _, info in run if info.key] == [0, 2, 4, 5]  # every shot ends on a prediction


def test_frames_stream_with_a_bounded_look_ahead(harmonizer):
    """An endless clip: outputs come while it plays, having read at most curves_every − 1 frames ahead."""
    base = [(c, m) for c, m, _ in clip_frames(count=3)]
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield Frame(*base[i % 3], i / 25)

    outputs = list(itertools.islice(harmonize_frames(harmonizer, endless(), VideoOptions(curves_every=3)), 7))
    assert [info.index for _, _, info in outputs] == list(range(7))
    assert len(pulled) <= 7 + 2


def test_smoothed_curves_stay_monotone_with_fixed_ends():
    rng = np.random.default_rng(0)
    a, b = (np.sort(rng.uniform(size=(2, 3, 65)), -1) for _ in range(2))
    for x in (a, b):
        x[..., 0], x[..., -1] = 0, 1
    np.testing.assert_allclose(knots_from_log_slopes(log_slopes(a)), a, atol=1e-9)
    for w in (0.1, 0.5, 0.9):
        mixed = knots_from_log_slopes(log_slopes(a) + w * (log_slopes(b) - log_slopes(a)))
        assert (np.diff(mixed, axis=-1) > 0).all() and np.allclose(mixed[..., 0], 0) and np.allclose(mixed[..., -1], 1)


def test_masks_from_a_folder_and_a_frame_count_mismatch(harmonizer, tmp_path):
    video, _, masks, _ = make_clip(tmp_path, count=8, audio=False)
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(m).save(folder / f"m{i:03d}.png")
    assert harmonizer.harmonize_video(tmp_path / "ok.mp4", video, folder).frames == 8
    (folder / "m007.png").unlink()
    with pytest.raises(VideoError, match="mask: 7 frames, but the input has 8"):
        harmonizer.harmonize_video(tmp_path / "bad.mp4", video, folder)
    assert not (tmp_path / "bad.mp4").exists() and not partial_path(tmp_path / "bad.mp4").exists()


def test_mask_of_another_size_is_a_clear_error(harmonizer, tmp_path):
    video, _, masks, _ = make_clip(tmp_path, count=3, audio=False)
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(m).resize((80, 48)).save(folder / f"m{i}.png")
    with pytest.raises(VideoError, match="mask: frame 0 is 80×48, but the video is 160×96"):
        harmonizer.harmonize_video(tmp_path / "bad.mp4", video, folder)
    assert list(tmp_path.glob("bad*")) == []


def test_layer_form_on_a_background_video(harmonizer, tmp_path):
    """An RGBA frame folder placed on a background video: the output has the background's clock and sound."""
    background = tmp_path / "bg.mp4"
    write_video(background, (t for _, _, t in clip_frames(count=10, photo=2)), rate=Fraction(30000, 1001))
    folder = tmp_path / "fg"
    folder.mkdir()
    for i in range(10):
        real_cutout(0, scale=0.15 + 0.005 * i).save(folder / f"{i:02d}.png")
    out = tmp_path / "layer.mp4"
    result = harmonizer.harmonize_video(out, foreground=folder, background=background, at=(30, 20))
    assert result.frames == 10
    before, after = video_timing(background), video_timing(out)
    assert after == before
    frames, plain = video_frames(out), video_frames(background)
    assert np.abs(frames[0][30:50, 30:60].astype(int) - plain[0][30:50, 30:60]).mean() > 5  # the cutout is there


VIDEO_CODE = {model.video.__file__, model.video_io.__file__}


WRITER = ("write", "_write")  # VideoWriter's per-frame methods


def _run_with_sigint_at(harmonizer, out, video, mask, codec: str, point: int | None, only: tuple = ()
                        ) -> tuple[list[str], BaseException | None]:
    """harmonize_video with a real SIGINT raised at the `point`-th bytecode executed in model/video.py and
    model/video_io.py (None: never; `only`: in these functions of theirs) → (those bytecodes, as
    'function:line', and the exception that ended the run)."""
    executed = []

    def tracer(frame, event, arg):
        if frame.f_code.co_filename not in VIDEO_CODE or (only and frame.f_code.co_name not in only):
            return None
        frame.f_trace_opcodes = True

        def each_opcode(frame, event, arg):
            if event == "opcode":
                executed.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
                if len(executed) - 1 == point:
                    signal.raise_signal(signal.SIGINT)  # Python's handler: KeyboardInterrupt, or held by ours
            return each_opcode
        return each_opcode

    sys.settrace(tracer)
    try:
        # curves_every: two forward passes per run (the first and last frame), so the many runs stay quick
        harmonizer.harmonize_video(out, video, mask, codec=codec, crf=None, curves_every=1000)
    except KeyboardInterrupt as e:
        return executed, e
    finally:
        sys.settrace(None)
    return executed, None


# codec → (clip frames, the frame at each of whose writer bytecodes a run is cut, also cut at points spread over
# the whole run): mpeg4 hands over each frame's packet at once; x264 holds its first ~40 frames (lookahead), so
# its frame comes after those (and the spread points, mpeg4's, are left out of its longer runs).
INTERRUPTED_WRITES = {"mpeg4": (6, 2, True), "libx264": (46, 43, False)}


@pytest.mark.parametrize("codec", sorted(INTERRUPTED_WRITES))
def test_interrupt_anywhere_leaves_a_partial_file_that_decodes_cleanly(harmonizer, tmp_path, codec):
    """Ctrl-C at the bytecodes of writing one frame (where a cut between the encoder handing over packets and
    their mux lost a reference frame) and at points spread over the whole run: the partial file holds exactly
    the frames it reports, with the input's increasing pts, and decodes without one error."""
    count, cut_frame, spread = INTERRUPTED_WRITES[codec]
    only = () if spread else WRITER
    video, mask, _, _ = make_clip(tmp_path, count=count, audio=codec == "libx264")
    source_pts = video_timing(video)["pts"]
    executed, _ = _run_with_sigint_at(harmonizer, tmp_path / "dry.mp4", video, mask, codec, None, only)
    writes = [i for i, where in enumerate(executed) if where.split(":")[0] in WRITER]
    per_frame = len(writes) // count
    one_write = writes[cut_frame * per_frame: (cut_frame + 1) * per_frame]
    points = sorted(set(one_write) | (set(range(0, len(executed), len(executed) // 12)) if spread else set()))
    interrupted = 0
    for point in points:
        out = tmp_path / f"cut{point}.mp4"
        _, error = _run_with_sigint_at(harmonizer, out, video, mask, codec, point, only)
        assert error is not None, f"SIGINT at {executed[point]} was lost"
        if not isinstance(error, VideoInterrupted) or error.partial is None:
            # before the first frame was done: no file; once the output was finished: that whole file
            assert not partial_path(out).exists(), executed[point]
            assert not out.exists() or decode_with_errors(out) == (source_pts, []), executed[point]
            continue
        assert not out.exists(), executed[point]
        interrupted += 1
        pts, errors = decode_with_errors(error.partial)
        assert errors == [], (executed[point], errors)
        assert pts == source_pts[: error.frames], (executed[point], error.frames, pts)
        assert all(a < b for a, b in zip(pts, pts[1:], strict=False))
        error.partial.unlink()
    assert interrupted >= len(one_write)


# the containers docs/CLI.md names, each with an encoder it holds (WebM: VP9 only, so a clip without AAC sound)
CONTAINERS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "libx264"}


@pytest.mark.parametrize("suffix", sorted(CONTAINERS))
def test_every_named_container_keeps_the_frame_rate_and_frames(harmonizer, tmp_path, suffix):
    """Rate, frame count and spacing survive in each container; an AVI (one rate, no timestamps) indexes one
    entry per frame at the clip's rate, not 1/time base."""
    rate = Fraction(30000, 1001)
    video, mask, _, _ = make_clip(tmp_path, rate=rate, count=12, audio=suffix != ".webm")
    out = tmp_path / f"out{suffix}"
    harmonizer.harmonize_video(out, video, mask, codec=CONTAINERS[suffix], curves_every=4)
    import av

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream)]
        assert stream.average_rate == rate
        if suffix == ".avi":
            assert stream.frames == 12  # index entries
    assert decode_with_errors(out)[1] == [] and len(times) == 12
    steps = np.diff(times)
    np.testing.assert_allclose(steps, float(1 / rate), atol=1e-3)  # matroska's clock counts milliseconds


def test_a_variable_rate_clip_is_refused_by_a_constant_rate_container(harmonizer, tmp_path):
    times = [0, 40, 80, 150, 190, 260, 300, 333, 400, 480, 520, 600]
    video, mask, _, _ = make_clip(tmp_path, count=len(times), video_options={"times_ms": times})
    out = tmp_path / "vfr.avi"
    with pytest.raises(VideoError, match=r"output: a \.avi file holds one frame rate .* write \.mp4, \.mkv or \.mov"):
        harmonizer.harmonize_video(out, video, mask)
    assert list(tmp_path.glob("vfr*")) == []
