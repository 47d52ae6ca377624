"""`s2crnet harmonize-video`: a composited clip harmonized frame by frame (model.video), with a progress bar.

    s2crnet harmonize-video clip.mp4 --mask matte.mp4 -o out.mp4 [--smoothing 0.5] [--curves-every 2]
    s2crnet harmonize-video --foreground presenter.mov --background studio.jpg --at 40,0 --scale 0.8 -o out.mp4
    s2crnet harmonize-video clip.mp4 --mask auto --box 100,40,420,360 [--mask-every 5] -o out.mp4

Ctrl-C finishes the frames done so far into a playable OUT.partial.EXT and exits 130; nothing is written at OUT
until the whole clip is done, and a failure leaves no file.
"""

import argparse
import sys
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from .files import CliError, cpu_cores

__all__ = ["add_video_command", "cmd_harmonize_video", "forward_threads"]


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _rate(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"must be frames per second such as 25 or 30000/1001, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def forward_threads() -> int:
    """Threads for the forward passes: half the cores, since the decoder's and encoder's own threads run beside
    them (two OpenMP threads on a 2-core machine wait on each other whenever a codec thread takes a core)."""
    return max(1, cpu_cores() // 2)


def add_video_command(commands, model_options: argparse.ArgumentParser, strength, point, positive_int,
                      box) -> None:
    """Register `harmonize-video` (the argument types are the parser's own: strength, X,Y point, count, box)."""
    from model.temporal import VideoOptions
    from model.video import DEFAULT_CODEC, DEFAULT_CRF

    defaults = VideoOptions()
    video = commands.add_parser(
        "harmonize-video", parents=[model_options], help="harmonize a composited video clip, frame by frame",
        description="Harmonize a clip (INPUT --mask MASK) or a foreground placed on a background, keeping the "
                    "frame rate, timestamps, size, pixel aspect, rotation and audio (copied unchanged). Curves "
                    "are smoothed over time and restart at scene cuts.")
    video.add_argument("input", nargs="?", help="the composite video")
    video.add_argument("--mask", metavar="MASK",
                       help="its mask: a video (grey = matte, same frame count), a folder of per-frame images "
                            "sorted by name, or auto (found, inside --box); with --foreground, the foreground's "
                            "matte")
    video.add_argument("--box", type=box, metavar="X0,Y0,X1,Y1",
                       help="with --mask auto: where the object is, in frame pixels")
    video.add_argument("--mask-every", type=positive_int, default=5, metavar="N",
                       help="with --mask auto: find the mask on every N-th frame, held and blended between "
                            "(default 5)")
    video.add_argument("-o", "--output", required=True, metavar="OUT",
                       help="output video; the container comes from the extension (.mp4, .mov, .mkv, .webm, .avi)")
    layer = video.add_argument_group("layer input", "place a foreground on a background, then harmonize it")
    layer.add_argument("--foreground", metavar="VIDEO_OR_DIR",
                       help="a video with alpha, a folder of RGBA frames, or RGB frames with --mask")
    layer.add_argument("--background", metavar="VIDEO_OR_IMAGE", help="a video, a folder of frames, or one image")
    layer.add_argument("--at", type=point, metavar="X,Y", help="the foreground's top-left in background pixels")
    layer.add_argument("--scale", type=float, metavar="S", help="resample the foreground by S (default 1)")
    layer.add_argument("--fps", type=_rate, metavar="RATE",
                       help="frame rate when every input is a folder of frames (25, 30000/1001)")
    look = video.add_argument_group("curves")
    look.add_argument("--strength", type=strength, help="share of the curves' change, 0-1 (default: the weights')")
    look.add_argument("--smoothing", type=_seconds, default=defaults.smoothing, metavar="SECONDS",
                      help=f"time constant of the curves' moving average (default {defaults.smoothing}; 0 = "
                           "per-frame curves)")
    look.add_argument("--curves-every", type=positive_int, default=defaults.curves_every, metavar="N",
                      help="predict curves on every N-th frame and interpolate between (default 1)")
    look.add_argument("--cut-threshold", type=float, default=defaults.cut_threshold, metavar="T",
                      help="background mean/spread jump (0-1) that counts as a scene cut and restarts the "
                           f"smoothing (default {defaults.cut_threshold})")
    look.add_argument("--category", help="the object's category, if the model is semantic")
    encode = video.add_argument_group("encoding")
    encode.add_argument("--codec", default=DEFAULT_CODEC, help=f"video encoder (default {DEFAULT_CODEC}: H.264)")
    encode.add_argument("--crf", type=int, default=DEFAULT_CRF,
                        help=f"constant rate factor: lower is better and bigger (default {DEFAULT_CRF})")
    encode.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: only on a terminal)")
    video.set_defaults(handler=cmd_harmonize_video)


def cmd_harmonize_video(args: argparse.Namespace) -> int:
    from model.video import VideoInterrupted

    from .commands import _check_category, _load_harmonizer

    if (args.input is None) == (args.foreground is None):
        raise CliError("give INPUT --mask MASK, or --foreground and --background")
    if args.input is not None and (args.background or args.at or args.scale):
        raise CliError("--background, --at and --scale place a --foreground; an INPUT is already composited")
    if args.input is not None and args.mask is None:
        raise CliError("INPUT needs --mask (a mask video or a folder of per-frame masks)")
    if args.foreground is not None and args.background is None:
        raise CliError("--foreground needs --background (a video, a folder of frames or an image)")
    auto = args.mask == "auto"
    if (args.box is not None) and not (auto and args.input is not None):
        raise CliError("--box goes with INPUT --mask auto: where the object is")
    if auto and args.input is None:
        raise CliError("--mask auto finds the object of an INPUT video, not of --foreground")
    if auto:
        from .masks import check_segmenter

        check_segmenter()
    for name, path in (("INPUT", args.input), ("--mask", None if auto else args.mask),
                       ("--foreground", args.foreground), ("--background", args.background)):
        if path is not None and not Path(path).exists():  # before the model's slow load
            raise CliError(f"{name}: {path} does not exist")
    harmonizer = _load_harmonizer(args)
    _check_category(harmonizer, args.category)
    harmonizer.set_threads(forward_threads())
    output = Path(args.output)
    with tqdm(unit="frame", desc="harmonize", file=sys.stderr, dynamic_ncols=True,
              disable=None if args.progress is None else not args.progress) as bar:
        def progress(frames: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(frames - bar.n)

        try:
            result = harmonizer.harmonize_video(
                output, args.input, args.mask, foreground=args.foreground, background=args.background,
                at=args.at, scale=args.scale, fps=args.fps, strength=args.strength, smoothing=args.smoothing,
                curves_every=args.curves_every, cut_threshold=args.cut_threshold, category=args.category,
                codec=args.codec, crf=args.crf, progress=progress, box=args.box, mask_every=args.mask_every)
        except VideoInterrupted as e:
            bar.close()
            kept = f"the first {e.frames} frames are in {e.partial} (playable)" if e.partial else "no file written"
            sys.stderr.write(f"s2crnet: interrupted: {kept}; nothing at {output}\n")
            return 130
    shots = f"{result.shots} shot{'s' if result.shots != 1 else ''}"
    sys.stdout.write(f"{result.frames} frames ({shots}, {result.predictions} curve predictions) in "
                     f"{result.seconds:.1f} s ({result.frames / max(result.seconds, 1e-9):.2f} frames/s) "
                     f"→ {output}\n")
    return 0
