"""The subcommands: harmonize (one image, a folder, layers), info, serve, and the delegated training tools."""

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from app.startup import model_name

if TYPE_CHECKING:
    pass

from .files import (
    FORMAT_CHOICES,
    IMAGE_EXTENSIONS,
    CliError,
    cpu_cores,
    decode_file,
    decode_pair,
    load_job,
    output_format,
    save_image,
)
from .folder import FolderRun, Report, Summary, ignored_files, needs_extra, pair_folder, shown_path
from .layers import LayerJob, layer_message, load_layer_job, read_manifest
from .masks import auto_mask_jobs, check_segmenter, find_mask, load_auto_mask_job, segmenter_of
from .storage import is_remote, location, s3_options

log = logging.getLogger(__name__)


# --- subcommands --------------------------------------------------------------------------------------------

def _load_harmonizer(args: argparse.Namespace):
    from app.startup import StartupError, load_harmonizer  # torch only for the commands that need the model

    try:
        return load_harmonizer(args.weights, args.device, weights_name="--weights", runtime=args.runtime)
    except StartupError as e:  # a command's error like any other (exit 1); `serve` keeps the 2 and 3
        message = str(e).replace("S2CRNET_DEVICE=", "--device ").replace("S2CRNET_RUNTIME=", "--runtime ")
        raise CliError(message) from None


def _check_category(harmonizer, category: str | None) -> None:
    try:
        harmonizer.config.check_category(category)
    except ValueError as e:
        raise CliError(str(e)) from None


def cmd_harmonize(args: argparse.Namespace) -> int:
    folder_mode = args.composites is not None or args.masks is not None
    layer_one = args.foreground is not None or args.background is not None
    auto = args.mask_mode == "auto"
    if auto:
        _check_auto_mask(args, folder_mode, layer_one)
        return _harmonize_auto_folder(args) if folder_mode else _harmonize_one(args)
    if args.boxes:
        raise CliError("--boxes gives the object's box per composite for --mask auto")
    placement = [flag for flag, value in (("--at", args.at), ("--scale", args.scale), ("--box", args.box),
                                          ("--feather", args.feather), ("--foreground-mask", args.foreground_mask))
                 if value is not None]
    modes = [name for name, on in (("COMPOSITE MASK", args.composite or args.mask), ("--composites/--masks",
             folder_mode), ("--foreground/--background", layer_one), ("--layers", args.layers)) if on]
    if len(modes) > 1:
        raise CliError(f"give one input form, not {' and '.join(modes)}")
    if placement and not layer_one and not (args.layers and set(placement) <= {"--feather"}):
        raise CliError(f"{', '.join(placement)} place a --foreground on a --background"
                       + ("; --layers takes only --feather" if args.layers else ""))
    if args.layer and not (layer_one or args.layers):
        raise CliError("--layer writes the harmonized foreground of layer input (--foreground/--background or "
                       "--layers)")
    if args.report and not (folder_mode or args.layers):
        raise CliError("--report writes one row per image of folder mode (--composites or --layers)")
    if (folder_mode or args.layers) and (args.curves or args.cube):
        raise CliError("--curves and --cube write the curves of one image; use them without --composites or "
                       "--layers")
    if args.ray is not None and not (folder_mode or args.layers):
        raise CliError("--ray runs folder or manifest mode (--composites/--masks or --layers) on a cluster")
    if args.layers:
        return _harmonize_layers(args)
    if folder_mode:
        if args.composite or args.mask or args.composites is None or args.masks is None:
            raise CliError("folder mode takes --composites DIR and --masks DIR (and no COMPOSITE MASK files)")
        return _harmonize_folder(args)
    if layer_one:
        if args.foreground is None or args.background is None:
            raise CliError("layer input takes --foreground FILE and --background FILE")
        return _harmonize_layer_one(args)
    if not (args.composite and args.mask):
        raise CliError("give COMPOSITE and MASK files, --composites DIR --masks DIR for a folder, "
                       "--foreground FILE --background FILE, or --layers MANIFEST")
    return _harmonize_one(args)


def _check_auto_mask(args: argparse.Namespace, folder_mode: bool, layer_one: bool) -> None:
    """--mask auto: a COMPOSITE (with --box) or --composites (with --boxes), nothing else."""
    if layer_one or args.layers:
        raise CliError("--mask auto finds the object of a composite; a plain-photo --foreground is cut out "
                       "without it")
    if args.mask or args.masks:
        raise CliError("--mask auto finds the mask: give no MASK file or --masks folder with it")
    others = [flag for flag, value in (("--at", args.at), ("--scale", args.scale), ("--feather", args.feather),
                                       ("--foreground-mask", args.foreground_mask)) if value is not None]
    if others or args.layer:
        raise CliError(f"{', '.join(others or ['--layer'])}: layer input only, not with --mask auto")
    if folder_mode and args.box is not None:
        raise CliError("--box is one composite's; in folder mode give --boxes CSV")
    if not folder_mode and args.boxes:
        raise CliError("--boxes is for folder mode (--composites DIR); one composite takes --box")
    if folder_mode and (args.curves or args.cube):
        raise CliError("--curves and --cube write the curves of one image; use them without --composites")
    if not folder_mode and not args.composite:
        raise CliError("--mask auto takes a COMPOSITE (or --composites DIR)")
    if not folder_mode and args.report:
        raise CliError("--report writes one row per image of folder mode (--composites)")
    check_segmenter()


def _harmonize_auto_folder(args: argparse.Namespace) -> int:
    jobs = auto_mask_jobs(args)
    base = Path(args.composites).resolve()
    return _run_jobs(args, jobs, Summary(), base, load_auto_mask_job)


def _write_curves(args: argparse.Namespace, harmonizer, curves, name: str) -> None:
    if args.curves:
        info = harmonizer.info()
        document = {**curves.to_dict(), "mismatch": curves.mismatch, "strength": curves.strength,
                    "model": model_name(harmonizer), "weights_sha256": info["sha256"]}
        Path(args.curves).write_text(json.dumps(document) + "\n")
    if args.cube:
        Path(args.cube).write_text(curves.to_cube(f"S2CRNet {name}"))


def _harmonize_layer_one(args: argparse.Namespace) -> int:
    from app.imaging import FORMATS_WITHOUT_ALPHA
    from model.layers import LayerError

    output = Path(args.output)
    if output_format(output) in FORMATS_WITHOUT_ALPHA and args.layer:
        raise CliError(f"--layer keeps the foreground's alpha: write .png, .webp or .tif, not {output.suffix}")
    job = LayerJob(Path(args.foreground), Path(args.background), args.at or (0, 0), args.scale, output, "")
    if args.box is not None and args.at is not None:
        raise CliError("--box: give either --at (with an optional --scale) or --box, not both")
    harmonizer = _load_harmonizer(args)
    _check_category(harmonizer, args.category)
    mask_path = Path(args.foreground_mask) if args.foreground_mask else None
    try:
        prepared = load_layer_job(harmonizer, job, args.feather or 0.0, mask_path, args.box)
    except LayerError as e:
        raise CliError(layer_message(e)) from None
    if prepared.cutout:
        sys.stderr.write(f"s2crnet: {job.foreground.name} has no alpha: its subject was cut out automatically "
                         "(give --foreground-mask to choose the matte yourself)\n")
    (curves,) = harmonizer.curves_from_thumbnails([prepared.thumbs], [args.category])
    curves = curves.with_strength(args.strength)
    if args.layer:
        from model.layers import cut_layer

        image = cut_layer(prepared.layered, curves.lut())
    else:
        image = harmonizer.render(prepared.image, prepared.mask, curves)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, output, args.quality, prepared.icc_profile)
    _write_curves(args, harmonizer, curves, Path(args.foreground).name)
    return 0


def _harmonize_one(args: argparse.Namespace) -> int:
    output = Path(args.output)
    # Bad extensions and unreadable files fail at once, before the model's slow load.
    output_format(output)
    if args.mask_mode == "auto":
        decoded = decode_file(Path(args.composite), "composite", True)
        image, icc_profile = decoded.image, decoded.icc_profile
    else:
        image, mask, icc_profile = decode_pair(Path(args.composite), Path(args.mask))
    harmonizer = _load_harmonizer(args)
    _check_category(harmonizer, args.category)
    if args.mask_mode == "auto":
        mask = find_mask(segmenter_of(harmonizer), image, args.box, args.composite)
    image, mask, thumbs = harmonizer.prepare(image, mask)
    (curves,) = harmonizer.curves_from_thumbnails([thumbs], [args.category])
    curves = curves.with_strength(args.strength)
    image = harmonizer.render(image, mask, curves)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, output, args.quality, icc_profile)
    _write_curves(args, harmonizer, curves, Path(args.composite).name)
    return 0


def _location(args: argparse.Namespace, text: str):
    """A local Path, or (with --ray) an s3:// location."""
    if is_remote(text) and args.ray is None:
        raise CliError(f"{text!r}: s3:// locations are read and written by the Ray job: add --ray")
    return location(text, s3_options(args.s3_endpoint, args.s3_region))


def _harmonize_folder(args: argparse.Namespace) -> int:
    composites, out_dir = _location(args, args.composites), _location(args, args.output)
    extension = FORMAT_CHOICES[args.format] if args.format else None
    jobs, unpaired = pair_folder(composites, _location(args, args.masks), out_dir, args.recursive, extension)
    base = composites.resolve()
    summary = Summary(unpaired=unpaired)
    for path, reason in unpaired:
        sys.stderr.write(f"s2crnet: unpaired {shown_path(path, base)}: {reason}\n")
    for path, reason in ignored_files(composites, Path(args.masks), out_dir, args.recursive):
        sys.stderr.write(f"s2crnet: ignored {shown_path(path, base)}: {reason}\n")
    if not jobs and not unpaired:
        raise CliError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {str(composites)!r}")
    return _run_jobs(args, jobs, summary, base, load_job, unpaired=unpaired)


def _harmonize_layers(args: argparse.Namespace) -> int:
    """--layers MANIFEST: one placed, harmonized composite (or --layer) per row, like folder mode."""
    from functools import partial

    manifest, out_dir = _location(args, args.layers), _location(args, args.output)
    extension = FORMAT_CHOICES[args.format] if args.format else None
    if args.layer and extension in (".jpg", ".bmp"):
        raise CliError(f"--layer keeps the foreground's alpha: --format png, webp or tiff, not {args.format}")
    jobs, bad = read_manifest(manifest, out_dir, args.layer, extension)
    if not jobs and not bad:
        raise CliError(f"the manifest {str(manifest)!r} has no rows")
    summary = Summary(failed=list(bad))
    for label, reason in bad:
        sys.stderr.write(f"s2crnet: failed {label}: {reason}\n")
    loader = partial(load_layer_job, feather=args.feather or 0.0)
    return _run_jobs(args, jobs, summary, manifest.resolve().parent, loader, bad_rows=bad)


def _run_jobs(args: argparse.Namespace, jobs: list, summary: Summary, base: Path, loader,
              unpaired: list | None = None, bad_rows: list | None = None) -> int:
    """The shared pipeline of folder and manifest mode: resume, progress bar, report, summary, exit code."""
    pending = [job for job in jobs if args.overwrite or not job.output.exists()]
    summary.skipped = len(jobs) - len(pending)
    log.info("%d jobs, %d not runnable, %d outputs already there", len(jobs),
             len(unpaired or []) + len(bad_rows or []), summary.skipped)
    report = Report(_location(args, args.report)) if args.report else None
    try:
        if report is not None:
            for path, reason in unpaired or []:
                report.write(path, None, "unpaired", error=reason)
            for label, reason in bad_rows or []:
                report.write(label, None, "failed", error=reason)
            for job in jobs:
                if job not in pending:
                    report.write(job.source, job.output, "skipped")
        started = time.perf_counter()
        if pending:
            harmonizer = _load_harmonizer(args)  # with --ray too: bad weights or category fail before the job
            _check_category(harmonizer, args.category)
            if args.ray is not None:
                from .ray_batch import run_on_ray

                with _progress_bar(args, len(pending)) as progress:  # the rate excludes joining the cluster
                    started = run_on_ray(args, pending, summary, report, progress, harmonizer.config.thumb,
                                         loader, base)
            else:
                # The --jobs threads already keep cores busy; intra-op threads on top of them only contend
                # (measured on 2 cores with --jobs 2: one torch thread gives ~15% more images/s than two).
                harmonizer.set_threads(max(1, cpu_cores() - args.jobs))
                started = time.perf_counter()  # the summary's images/s is the folder's own rate, loading aside
                with _progress_bar(args, len(pending)) as progress:
                    FolderRun(harmonizer, args.jobs, args.batch_size, args.category, args.quality, progress,
                              summary, base, args.strength, report, loader, args.layer).run(pending)
    finally:
        if report is not None:
            report.close()
    sys.stdout.write(summary.line(time.perf_counter() - started) + "\n")
    return 1 if summary.failed or summary.unpaired else 0


def _progress_bar(args: argparse.Namespace, total: int) -> tqdm:
    return tqdm(total=total, unit="img", desc="harmonize", file=sys.stderr, dynamic_ncols=True,
                disable=None if args.progress is None else not args.progress)


def cmd_info(args: argparse.Namespace) -> int:
    info = _load_harmonizer(args).info()
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    meta = info.pop("meta") or {}
    rows = [(key, ", ".join(value) if isinstance(value, list) else value) for key, value in info.items()]
    shown = {key: _readable(value) for key, value in meta.items()}
    rows += [(f"meta.{key}", text) for key, text in shown.items() if text is not None]
    width = max(len(key) for key, _ in rows)
    sys.stdout.write("".join(f"{key:<{width}}  {value}\n" for key, value in rows))
    left_out = [f"meta.{key}" for key, text in shown.items() if text is None]
    if left_out:
        sys.stdout.write(f"({', '.join(left_out)}: s2crnet info --json)\n")
    return 0


INFO_WIDTH = 200  # longer meta values (the training command, its arguments) are left to `info --json`


def _readable(value) -> str | None:
    """One meta value as a person reads it: numbers to 4 significant digits, a flat table as `key value, ...`;
    None when it is too long or nested for a line."""
    def scalar(v) -> str | None:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v) if isinstance(v, int | str | bool) or v is None else None

    if isinstance(value, dict):
        parts = [f"{k} {scalar(v)}" for k, v in value.items()]
        text = None if any(scalar(v) is None for v in value.values()) else ", ".join(parts)
    elif isinstance(value, list):
        items = [scalar(v) for v in value]
        text = None if None in items else ", ".join(items)
    else:
        text = scalar(value)
    return text if text is not None and len(text) <= INFO_WIDTH else None


def cmd_serve(args: argparse.Namespace) -> int:
    from app.startup import settings_from

    # Flags given on the command line beat S2CRNET_* variables, which beat the defaults. A bad value is a
    # StartupError: one line and exit 2 (3 for weights that cannot be loaded), as with `python -m app`.
    settings = settings_from(**{name: getattr(args, name)
                                for name in ("host", "port", "weights", "device", "runtime")})
    from app.main import run  # FastAPI, uvicorn and torch are imported only to serve

    run(settings)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`s2crnet export --format onnx -o OUT`: the network of --weights as an ONNX graph (model/onnx_export.py)."""
    from model import DEFAULT_WEIGHTS
    from model.runtime import WeightsError, installed

    missing = [package for package in ("torch", "onnx") if not installed(package)]
    if missing:
        raise CliError(f"export needs {' and '.join(missing)}: pip install 's2crnet[export]'")
    from model.onnx_export import export_onnx, parse_batch

    try:
        batch = parse_batch(args.batch)
    except ValueError as e:
        raise CliError(f"--batch: {e}") from None
    try:
        out = export_onnx(Path(args.weights) if args.weights else DEFAULT_WEIGHTS, Path(args.output), batch)
    except WeightsError as e:
        raise CliError(f"--weights: {e}") from None
    sys.stdout.write(f"{out}\n")
    return 0


def delegate(module_name: str, prog: str, argv: list[str]) -> int:
    """`s2crnet train|eval|average|renorm|calibrate ...` → the module's own add_arguments(parser) and run(args)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CliError(f"'{prog}' {needs_extra(e) or f'is not available in this installation ({e})'}") from e
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().split("\n")[0])
    module.add_arguments(parser)
    parse = getattr(module, "parse_arguments", None)  # train's: --recipe supplies defaults before parsing
    result = module.run(parse(parser, argv) if parse else parser.parse_args(argv))
    return result if isinstance(result, int) else 0


