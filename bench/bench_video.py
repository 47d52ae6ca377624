"""Video: the flicker figure and per-frame error on generated clips, and throughput beside a plain re-encode.

    OMP_NUM_THREADS=2 nice -n 15 .venv/bin/python bench/bench_video.py                 # both parts
    nice -n 15 .venv/bin/python bench/bench_video.py --skip-throughput --frames 60     # quality only

Quality: clips made by tests/helpers.clip_frames (a real photo of ../shared/data/photos panned and zoomed, its
object under a constant colour cast, the background's brightness jittering ±4% per frame), 29.97 fps with
AAC sound, encoded with H.264 and harmonized through Harmonizer.harmonize_video. Flicker figure: the mean
absolute frame-to-frame change of the foreground's mean colour (levels) after harmonizing minus the same in the
input (model.temporal.flicker; 0 = adds none). fMSE: the foreground's mean squared error against the clip's
ground truth (the frame without the cast), per frame, averaged — do nothing (the decoded input) vs harmonized.

Throughput: the same kind of clip at 640×360, 1280×720 and 1920×1080; frames/s of harmonize_video (model
loaded once, outside the timing) with --curves-every 1 and 4, and of the floor measured in the same run: decode
the clip and encode it again with the same encoder settings and audio copy, no model (model.video_io's source and
writer). Each figure is the best of `--repeat` runs (default 3, taking turns): other processes on a small
machine only slow them.
"""

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the repository first: tests/model must not shadow model/

from helpers import make_clip, video_frames  # noqa: E402

from model import Harmonizer  # noqa: E402
from model.temporal import flicker, foreground_mean  # noqa: E402
from model.video import DEFAULT_CODEC, DEFAULT_CRF  # noqa: E402
from model.video_io import VideoWriter, open_source  # noqa: E402

RATE = Fraction(30000, 1001)
SIZES = [(640, 360), (1280, 720), (1920, 1080)]
RUNS = [("per-frame (smoothing 0)", {"smoothing": 0.0}), ("smoothing 0.5 s", {"smoothing": 0.5}),
        ("smoothing 0.5 s, curves every 4", {"smoothing": 0.5, "curves_every": 4})]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fmse(frames, truth, masks) -> float:
    errors = [((f.astype(np.float64) - t) ** 2)[m > 127].mean() for f, t, m in zip(frames, truth, masks, strict=True)]
    return float(np.mean(errors))


def quality(harmonizer: Harmonizer, folder: Path, photos: list[int], frames: int, size) -> None:
    say(f"\nQuality: {frames}-frame clips at {size[0]}×{size[1]}, 29.97 fps; flicker figure in levels "
          "(0 = adds none), fMSE per frame vs ground truth")
    header = ["photo", "do nothing fMSE"] + [f"{name}: flicker / fMSE" for name, _ in RUNS]
    say(" | ".join(header))
    totals = np.zeros((len(RUNS), 2))
    nothing = 0.0
    for photo in photos:
        video, mask, masks, truth = make_clip(folder, f"q{photo}", RATE, count=frames, size=size, photo=photo)
        decoded = video_frames(video)
        before = flicker(foreground_mean(f, m) for f, m in zip(decoded, masks, strict=True))
        row = [str(photo), f"{fmse(decoded, truth, masks):.1f}"]
        nothing += fmse(decoded, truth, masks)
        for i, (_, options) in enumerate(RUNS):
            out = folder / f"q{photo}_out.mp4"
            harmonizer.harmonize_video(out, video, mask, **options)
            after = video_frames(out)
            figure = flicker(foreground_mean(f, m) for f, m in zip(after, masks, strict=True)) - before
            error = fmse(after, truth, masks)
            totals[i] += figure, error
            row.append(f"{figure:+.3f} / {error:.1f}")
        say(" | ".join(row))
    n = len(photos)
    say(" | ".join(["mean", f"{nothing / n:.1f}"] + [f"{f / n:+.3f} / {e / n:.1f}" for f, e in totals]))


def floor(video: Path, out: Path) -> int:
    """Decode and encode again, audio copied: what any tool that touches the frames pays."""
    source = open_source(video, "input", "RGB")
    writer = VideoWriter(out, source.size, DEFAULT_CODEC, DEFAULT_CRF, source.rate, source.time_base, source)
    for decoded in source.frames(writer.copy):
        writer.write(decoded.pixels, decoded.pts, decoded.matrix)
    writer.close()
    source.close()
    return writer.frames


def best_rates(runs: list, frames: int, repeat: int) -> list[float]:
    """frames/s of each run, best of `repeat`; the runs take turns, so a burst of other load hits them alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return [frames / seconds for seconds in best]


def throughput(harmonizer: Harmonizer, folder: Path, frames: int, repeat: int, sizes=SIZES) -> None:
    say(f"\nThroughput: {frames} frames, 29.97 fps, H.264 CRF {DEFAULT_CRF} + AAC copied; frames/s, best of "
        f"{repeat}")
    say("size | floor: decode + re-encode | harmonize (curves every 1) | harmonize (curves every 4)")
    for width, height in sizes:
        video, mask, _, _ = make_clip(folder, f"t{width}", RATE, count=frames, size=(width, height))
        out = folder / f"t{width}_out.mp4"
        runs = [partial(floor, video, out)] + [partial(harmonizer.harmonize_video, out, video, mask, curves_every=n)
                                                for n in (1, 4)]
        plain, every1, every4 = best_rates(runs, frames, repeat)
        say(f"{width}×{height} | {plain:.1f} | {every1:.1f} ({every1 / plain:.0%}) | "
            f"{every4:.1f} ({every4 / plain:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per quality clip (default 40)")
    parser.add_argument("--photos", default="0,1,2,3", help="photo indices of the shared manifest (default 0-3)")
    parser.add_argument("--quality-size", default="320x192", help="quality clips' size (default 320x192)")
    parser.add_argument("--throughput-frames", type=int, default=60, help="frames per throughput clip (60)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput figure, best kept (3)")
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES),
                        help="throughput sizes (default 640x360,1280x720,1920x1080)")
    parser.add_argument("--runtime", choices=("torch", "onnx", "auto"), default="torch",
                        help="the forward pass's runtime (default torch, as the figures in docs/BENCHMARKS.md)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    from app.cli.video import forward_threads

    harmonizer = Harmonizer.load(device="cpu", runtime=args.runtime, threads=forward_threads())  # as the CLI runs
    say(f"{harmonizer.runtime} runtime, {forward_threads()} forward-pass threads, {harmonizer.weights_path.name}")
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        if not args.skip_quality:
            size = tuple(int(v) for v in args.quality_size.split("x"))
            quality(harmonizer, Path(tmp), [int(p) for p in args.photos.split(",")], args.frames, size)
        if not args.skip_throughput:
            sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
            throughput(harmonizer, Path(tmp), args.throughput_frames, args.repeat, sizes)


if __name__ == "__main__":
    main()
