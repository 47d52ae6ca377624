"""The `s2crnet` command: harmonize one image or whole folders, serve, train, evaluate, describe the weights.

    s2crnet harmonize comp.jpg mask.png -o out.jpg [--category person] [--curves c.json] [--cube c.cube]
    s2crnet harmonize --composites DIR --masks DIR -o OUTDIR [--recursive] [--overwrite] [--jobs 2] [--report CSV]
    s2crnet harmonize --foreground fg.png --background bg.jpg --at X,Y [--scale S | --box x0,y0,x1,y1]
                      [--feather PX] [--strength S] [--layer] -o out.png
    s2crnet harmonize --layers manifest.csv -o OUTDIR [--layer] [--report CSV]   # many placed layers
    s2crnet harmonize comp.jpg --mask auto [--box x0,y0,x1,y1] -o out.jpg     # the object found, not painted
    s2crnet harmonize --composites DIR --mask auto [--boxes CSV] -o OUTDIR
    s2crnet mask IMAGE -o mask.png [--box x0,y0,x1,y1]                         # the found mask, to check or edit
    s2crnet harmonize --composites s3://in/c --masks s3://in/m -o s3://out/h --ray [ADDRESS] [--ray-actors 2]
    s2crnet harmonize-video clip.mp4 --mask matte.mp4 -o out.mp4 [--smoothing 0.5] | --foreground --background
    s2crnet serve [--host 127.0.0.1] [--port 8000] [--weights PATH] [--device auto] [--runtime auto]
    s2crnet export --format onnx -o model.onnx [--weights PATH] [--batch dynamic|N]
    s2crnet train ... | s2crnet eval DATASET_DIR ... | s2crnet average BEFORE.pt AFTER.pt --out MIXED.pt
    s2crnet renorm WEIGHTS --photos MANIFEST --out OUT | s2crnet calibrate WEIGHTS --photos MANIFEST --out OUT
    s2crnet info [--json] | s2crnet --version

Errors are one line on stderr and exit code 1 (2 for bad usage, 130 when interrupted); `--debug` shows the
traceback instead. Folder mode reports broken and unpaired files, skips them, and exits 1 if there were any.
"""

import argparse
import logging
import sys
import warnings
from importlib import metadata

from PIL import Image

from model.config import DEVICES
from model.runtime import RUNTIMES

from ..logs import configure_logging
from .commands import cmd_export, cmd_harmonize, cmd_info, cmd_serve, delegate
from .files import FORMAT_CHOICES, cpu_cores
from .folder import describe_error, needs_extra
from .masks import add_mask_command
from .ray_batch import add_arguments as add_ray_arguments
from .video import add_video_command

__all__ = ["build_parser", "main"]

RUNTIME_HELP = ("what predicts the curves: onnx (onnxruntime, no PyTorch), torch, or auto (default: onnx on the "
                "CPU when the weights' .onnx export is beside them, else torch)")

log = logging.getLogger(__name__)


# --- the parser ---------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {value}")
    return value


def _strength(text: str) -> float:
    from model.curves import check_strength

    try:
        return check_strength(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("strength: ")) from None


def _point(text: str) -> tuple[int, int]:
    from model.layers import LayerError, parse_point

    try:
        return parse_point(text)
    except LayerError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("at: ")) from None


def _box(text: str) -> tuple[int, int, int, int]:
    from model.layers import LayerError, parse_box

    try:
        return parse_box(text)
    except LayerError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("box: ")) from None


def _version() -> str:
    try:
        return metadata.version("s2crnet")
    except metadata.PackageNotFoundError:
        from model import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2crnet", description="S²CRNet image harmonization: recolour a "
                                     "pasted object so it matches the photo it was pasted into.")
    parser.add_argument("--version", action="version", version=f"s2crnet {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument("--weights", metavar="PATH",
                               help="weights file (default: the shipped model/weights/s2crnet.pt)")
    model_options.add_argument("--device", choices=DEVICES, default="auto",
                               help="where the network runs (default: auto = cuda when available)")
    model_options.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)

    harmonize = commands.add_parser(
        "harmonize", parents=[model_options], help="harmonize one composite or a whole folder",
        description="Harmonize one composite (COMPOSITE MASK -o OUT) or a folder (--composites DIR "
                    "--masks DIR -o OUTDIR). Folder pairing: identical stems, or iHarmony4 names "
                    "(a0041_1_5.jpg ↔ a0041_1.png).")
    harmonize.add_argument("composite", nargs="?", help="the composite image")
    harmonize.add_argument("mask", nargs="?", help="its mask: white = pasted object, grey levels blend")
    harmonize.add_argument("--mask", dest="mask_mode", choices=("auto",),
                           help="auto: find the object instead of reading a mask (U²-Netp), inside --box when "
                                "given; in folder mode with --composites (boxes from --boxes)")
    harmonize.add_argument("-o", "--output", required=True, metavar="OUT",
                           help="output file (format from its extension) or, in folder mode, output folder")
    harmonize.add_argument("--category", help="the pasted object's category, if the model is semantic")
    harmonize.add_argument("--quality", type=_quality, default=95,
                           help="JPEG/WebP quality 1-100 (default 95)")
    harmonize.add_argument("--curves", metavar="JSON",
                           help="also write the predicted curves as JSON (r, g, b)")
    harmonize.add_argument("--cube", metavar="CUBE", help="also write the curves as a .cube 1D LUT")
    harmonize.add_argument("--strength", type=_strength, default=None,
                           help="share of the curves' change to apply, 0-1 (0: unchanged; default: the "
                                "weights' own)")
    layers = harmonize.add_argument_group(
        "layer input", "place a cutout on a background, then harmonize it (negative positions: --at=-10,20)")
    layers.add_argument("--foreground", metavar="FILE",
                        help="the object: an RGBA cutout (alpha = matte) or RGB with --foreground-mask")
    layers.add_argument("--foreground-mask", metavar="FILE", help="the foreground's matte (replaces its alpha)")
    layers.add_argument("--background", metavar="FILE", help="the photo to place it on; the output has its size")
    layers.add_argument("--at", type=_point, metavar="X,Y",
                        help="the foreground's top-left in background pixels (default 0,0; may be negative)")
    placing = layers.add_mutually_exclusive_group()
    placing.add_argument("--scale", type=float, metavar="S", help="resample the foreground by S (default 1)")
    placing.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1",
                         help="fit the foreground into this box, aspect kept, centred (instead of --at); with "
                              "--mask auto: where the object is in the composite")
    layers.add_argument("--feather", type=float, metavar="PX",
                        help="pixels of Gaussian softening of the matte's edge, inwards (default 0)")
    layers.add_argument("--layer", action="store_true",
                        help="write the harmonized foreground as RGBA (its own size and alpha) for an editor's "
                             "layer, instead of the flattened image")
    layers.add_argument("--layers", metavar="MANIFEST",
                        help="CSV with columns foreground,background,x,y[,scale][,output] (paths relative to "
                             "it): one output per row in -o OUTDIR, like folder mode")
    folder = harmonize.add_argument_group("folder mode")
    folder.add_argument("--composites", metavar="DIR", help="folder of composites")
    folder.add_argument("--masks", metavar="DIR", help="folder of masks (or --mask auto)")
    folder.add_argument("--boxes", metavar="CSV", help="with --mask auto: columns composite (path relative to "
                        "--composites) and box (x0,y0,x1,y1); unlisted composites are searched whole")
    folder.add_argument("-r", "--recursive", action="store_true",
                        help="also take sub-folders (masks and outputs mirror the composites' sub-folders)")
    folder.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    folder.add_argument("--format", choices=sorted(FORMAT_CHOICES),
                        help="output format (default: the composite's own)")
    folder.add_argument("-j", "--jobs", type=_positive_int, default=min(4, cpu_cores()),
                        help="threads decoding and encoding while the network runs "
                             "(default: CPU cores, at most 4)")
    folder.add_argument("--batch-size", type=_positive_int, default=8,
                        help="images per forward pass (default 8)")
    folder.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: only on a terminal)")
    folder.add_argument("--report", metavar="CSV",
                        help="write one row per image: input, output, status, mismatch (mean, r, g, b), "
                             "timings in ms, error")
    add_ray_arguments(harmonize, _positive_int)
    harmonize.set_defaults(handler=cmd_harmonize)
    add_video_command(commands, model_options, _strength, _point, _positive_int, _box)
    add_mask_command(commands, _box)

    serve = commands.add_parser(
        "serve", help="run the REST service (settings also from S2CRNET_* variables)",
        description="Run the REST service. Flags override S2CRNET_* environment variables.")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--weights", metavar="PATH", help="weights file (default: the shipped weights)")
    serve.add_argument("--device", choices=DEVICES,
                       help="where the network runs (default auto)")
    serve.add_argument("--runtime", choices=RUNTIMES, help=RUNTIME_HELP)
    serve.set_defaults(handler=cmd_serve)

    export = commands.add_parser(
        "export", help="export the curve predictor to ONNX (for the onnx runtime, or any ONNX runtime)",
        description="Export the network (thumbnails (B, 8, S, S) → curve knots) to ONNX, with the model config, "
                    "the weights' sha256 and the thumb size in its metadata. Needs PyTorch and the onnx package.")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="the only format: onnx")
    export.add_argument("-o", "--output", required=True, metavar="OUT", help="the .onnx file to write")
    export.add_argument("--weights", metavar="PATH", help="weights file (default: the shipped weights)")
    export.add_argument("--batch", default="dynamic", metavar="dynamic|N",
                        help="batch size of the graph: dynamic (default) or a fixed N (the runtime pads to it)")
    export.set_defaults(handler=cmd_export)

    # train, eval, average, renorm and calibrate parse their own options (model.training.*), imported only when used.
    for name, module, summary in (
            ("train", "train", "train the network (s2crnet train --help)"),
            ("eval", "evaluate", "evaluate on an iHarmony4-format folder, draw a before/after sheet (s2crnet eval "
             "--help)"),
            ("average", "average", "average weights before and after fine-tuning (s2crnet average --help)"),
            ("renorm", "renorm", "measure a weights file's BatchNorm statistics anew (s2crnet renorm --help)"),
            ("calibrate", "calibrate", "fit how much of its change the network applies, on held-out pairs "
             "(s2crnet calibrate --help)")):
        module = f"model.training.{module}"
        delegated = commands.add_parser(name, help=summary, add_help=False, prefix_chars="\0")
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(handler=lambda args, m=module, n=name: delegate(m, f"s2crnet {n}", args.rest))

    info = commands.add_parser("info", parents=[model_options], help="print the model card of the weights")
    info.add_argument("--json", action="store_true", help="as JSON")
    info.set_defaults(handler=cmd_info)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning ("Corrupt EXIF data", ...) as one line of ours, not Python's two with a source path."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"s2crnet: warning: {text}\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The user's own files: Pillow's warning for images over ~89 MP is noise here (over 179 MP still fails).
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    warnings.showwarning = _one_line_warning
    # Their output is the result, not the logs.
    quiet_by_default = args.command in ("harmonize", "harmonize-video", "info", "mask")
    configure_logging("warning" if quiet_by_default and not args.verbose else "info")
    from app.startup import StartupError

    try:
        return args.handler(args)
    except StartupError as e:  # `serve`: bad configuration (2) or weights (3), one line like any error
        sys.stderr.write(f"s2crnet: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("s2crnet: interrupted\n")
        return 130
    except Exception as e:
        if args.debug:
            raise
        # One line, never a traceback: bad files, bad weights, bad flags, and anything unexpected alike.
        extra = needs_extra(e)  # an optional package missing: the extra that installs it
        message = f"'s2crnet {args.command}' {extra}" if extra else describe_error(e)
        sys.stderr.write(f"s2crnet: error: {message}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

