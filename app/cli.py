"""The `s2crnet` command: harmonize one image or whole folders, serve, train, evaluate, describe the weights.

    s2crnet harmonize comp.jpg mask.png -o out.jpg [--category person] [--curves c.json] [--cube c.cube]
    s2crnet harmonize --composites DIR --masks DIR -o OUTDIR [--recursive] [--overwrite] [--jobs 2] [--report CSV]
    s2crnet harmonize --foreground fg.png --background bg.jpg --at X,Y [--scale S | --box x0,y0,x1,y1]
                      [--feather PX] [--strength S] [--layer] -o out.png
    s2crnet harmonize --layers manifest.csv -o OUTDIR [--layer] [--report CSV]   # many placed layers
    s2crnet serve [--host 127.0.0.1] [--port 8000] [--weights PATH] [--device auto]
    s2crnet train ... | s2crnet eval DATASET_DIR ... | s2crnet average BEFORE.pt AFTER.pt --out MIXED.pt
    s2crnet renorm WEIGHTS --photos MANIFEST --out OUT | s2crnet calibrate WEIGHTS --photos MANIFEST --out OUT
    s2crnet info [--json] | s2crnet --version

Errors are one line on stderr and exit code 1 (2 for bad usage, 130 when interrupted); `--debug` shows the
traceback instead. Folder mode reports broken and unpaired files, skips them, and exits 1 if there were any.
"""

import argparse
import csv
import importlib
import json
import logging
import os
import sys
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from tqdm import tqdm

from app.startup import model_name

if TYPE_CHECKING:
    import torch

__all__ = ["main"]

log = logging.getLogger(__name__)

# Output format by file extension (Pillow format names).
OUTPUT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF",
                  ".tiff": "TIFF", ".bmp": "BMP"}
_FORMATS_WITHOUT_ALPHA = {"JPEG", "BMP"}
_FORMATS_WITH_ICC = {"JPEG", "PNG", "WEBP", "TIFF"}
_FORMAT_CHOICES = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp"}
IMAGE_EXTENSIONS = set(OUTPUT_FORMATS)  # files folder mode looks at; anything else is ignored
PNG_COMPRESS_LEVEL = 3  # zlib level: Pillow's default 6 takes ~3× as long for files ~10% smaller
_PARTIAL_SUFFIX = ".partial"  # outputs are written under a hidden temporary name, then renamed into place


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 1."""


# --- images in and out --------------------------------------------------------------------------------------

def output_format(path: Path) -> str:
    try:
        return OUTPUT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise CliError(f"cannot tell the output format from {str(path)!r}: use one of "
                       f"{', '.join(sorted(OUTPUT_FORMATS))}") from None


def save_image(image: Image.Image, path: Path, quality: int, icc_profile: bytes | None) -> None:
    """Encode by the extension of `path`; alpha and ICC profile kept where the format allows.

    Written to a temporary name and renamed, so an interrupted run never leaves a half-written output that a
    resumed run would skip.
    """
    fmt = output_format(path)
    if fmt in _FORMATS_WITHOUT_ALPHA and image.mode == "RGBA":
        image = image.convert("RGB")
    params: dict = {}
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = quality
    elif fmt == "PNG":
        params["compress_level"] = PNG_COMPRESS_LEVEL
    if icc_profile and fmt in _FORMATS_WITH_ICC:
        params["icc_profile"] = icc_profile
    partial = path.with_name(f".{path.name}{_PARTIAL_SUFFIX}")
    try:
        image.save(partial, format=fmt, **params)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass
class Job:
    composite: Path
    mask: Path
    output: Path

    @property
    def source(self) -> Path:
        """What messages and the report name this job by."""
        return self.composite


@dataclass
class Prepared:
    """A decoded composite ready to render: image (RGB/RGBA), mask (L), thumbnails, ICC profile to keep."""

    image: Image.Image
    mask: Image.Image
    thumbs: "torch.Tensor"  # (8, S, S), see model.thumbnails
    icc_profile: bytes | None
    layered: object = None  # model.layers.Layered for layer input (what --layer cuts out), else None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, for --report


def decode_pair(composite: Path, mask: Path) -> tuple[Image.Image, Image.Image, bytes | None]:
    """Decode a composite and its mask through the service's own decoder (app/imaging.py: EXIF orientation,
    16-bit and float samples scaled, truncated data refused); also returns the ICC profile worth keeping."""
    decoded = _decode(composite, "composite", True)
    return decoded.image, _decode(mask, "mask", False).image, decoded.icc_profile


def _decode(path: Path, what: str, composite: bool):
    from app import imaging  # imports the model package (torch): only for the commands that decode
    from app.errors import ApiError

    try:
        return imaging.decode(str(path), what, None, composite)  # no pixel limit: the user's own files
    except ApiError as e:
        if e.code == "unsupported_image":
            raise CliError(f"cannot identify image file {str(path)!r}: {e.detail}") from None
        raise CliError(f"{path}: {e.detail}") from None


def load_job(harmonizer, job: Job) -> Prepared:
    """Decode, validate and thumbnail one pair (runs in a worker thread)."""
    start = time.perf_counter()
    image, mask, icc_profile = decode_pair(job.composite, job.mask)
    image, mask, thumbs = harmonizer.prepare(image, mask)
    return Prepared(image, mask, thumbs, icc_profile, timings={"decode": time.perf_counter() - start})


# --- folder mode: pairing -----------------------------------------------------------------------------------

def _image_files(root: Path, recursive: bool, exclude: list[Path]) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    files = []
    for path in root.glob(pattern):
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if hidden or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if any(path.is_relative_to(folder) for folder in exclude) or not path.is_file():
            continue
        files.append(path)
    return sorted(files)


def pair_folder(composites: Path, masks: Path, out_dir: Path, recursive: bool,
                extension: str | None) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Pair each composite with its mask: same stem, or iHarmony4 naming (a0041_1_5.jpg ↔ a0041_1.png).

    With `recursive`, a composite in composites/sub/ looks for its mask in masks/sub/ and its output goes to
    out_dir/sub/. Returns the jobs and the composites that could not be paired, each with the reason.
    """
    from model.iharmony import COMPOSITE_NAME  # the model package imports torch: only when pairing

    for what, folder in (("composites", composites), ("masks", masks)):
        if not folder.is_dir():
            raise CliError(f"--{what} {str(folder)!r} is not a folder")
    composites, masks, out_dir = composites.resolve(), masks.resolve(), out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"-o {str(out_dir)!r} is a file; folder mode writes into a folder")
    if out_dir in (composites, masks):
        raise CliError("the output folder must differ from the composites and masks folders: "
                       "harmonized images would replace the inputs")
    masks_by_stem: dict[tuple[Path, str], list[Path]] = {}
    for path in _image_files(masks, recursive, exclude=[out_dir]):
        masks_by_stem.setdefault((path.parent.relative_to(masks), path.stem), []).append(path)
    # Masks and earlier outputs may live inside the composites folder: never take them for composites.
    exclude = [folder for folder in (masks, out_dir) if folder != composites]
    jobs, unpaired, outputs = [], [], {}
    for path in _image_files(composites, recursive, exclude):
        folder = path.parent.relative_to(composites)
        iharmony4 = COMPOSITE_NAME.match(path.stem)  # a0041_1_5.jpg: its mask may be a0041_1.png
        candidates = masks_by_stem.get((folder, path.stem))
        if candidates is None and iharmony4:
            candidates = masks_by_stem.get((folder, iharmony4["mask"]))
        if not candidates:
            expected = f"{path.stem}.*" + (f" or {iharmony4['mask']}.*" if iharmony4 else "")
            unpaired.append((path, f"no mask named {expected} in {masks / folder}"))
            continue
        if len(candidates) > 1:
            unpaired.append((path, f"several masks could match: {', '.join(p.name for p in candidates)}"))
            continue
        output = out_dir / folder / (path.stem + (extension or _output_extension(path)))
        if output in outputs:
            unpaired.append((path, f"its output {output.name} clashes with that of {outputs[output].name}"))
            continue
        outputs[output] = path
        jobs.append(Job(path, candidates[0], output))
    return jobs, unpaired


def _output_extension(composite: Path) -> str:
    """Keep the composite's own format when it can be written, else PNG (lossless, keeps alpha)."""
    suffix = composite.suffix.lower()
    return suffix if suffix in OUTPUT_FORMATS else ".png"


# --- folder mode: the pipeline ------------------------------------------------------------------------------

@dataclass
class Summary:
    harmonized: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    unpaired: list[tuple[Path, str]] = field(default_factory=list)

    def line(self, seconds: float) -> str:
        rate = self.harmonized / seconds if seconds > 0 else 0.0
        return (f"{self.harmonized} harmonized, {self.skipped} skipped (output exists), "
                f"{len(self.failed)} failed, {len(self.unpaired)} unpaired "
                f"in {seconds:.1f} s ({rate:.2f} images/s)")


class FolderRun:
    """Decode → batched curves → render + encode, with decoding and encoding on `jobs` threads.

    The main thread runs one forward pass per batch while the threads decode the next images and encode the
    previous ones. At most `batch_size + 2·jobs` full-size images are held at once, so memory stays bounded.
    """

    def __init__(self, harmonizer, jobs: int, batch_size: int, category: str | None, quality: int,
                 progress: tqdm, summary: Summary, base: Path, strength: float | None = None,
                 report: "Report | None" = None, loader=load_job, layer_output: bool = False):
        self.harmonizer = harmonizer
        self.strength = strength  # None: the weights' own
        self.report = report
        self.loader = loader  # (harmonizer, job) → Prepared, in a worker thread
        self.layer_output = layer_output  # write the harmonized foreground (layer input) instead of the image
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="s2crnet-io")
        self.batch_size = batch_size
        self.budget = batch_size + 2 * jobs
        self.category = category
        self.quality = quality
        self.progress = progress
        self.summary = summary
        self.base = base

    def run(self, jobs: list[Job]) -> None:
        todo = iter(jobs)
        decoding: deque[tuple[Job, Future]] = deque()
        saving: deque[tuple[Job, Future]] = deque()
        batch: list[tuple[Job, Prepared]] = []
        exhausted = False
        try:
            while True:
                # 1. keep the threads busy decoding, within the memory budget
                while not exhausted and len(decoding) + len(batch) + len(saving) < self.budget:
                    job = next(todo, None)
                    if job is None:
                        exhausted = True
                    else:
                        decoding.append((job, self.pool.submit(self.loader, self.harmonizer, job)))
                while saving and saving[0][1].done():
                    self._finish_save(*saving.popleft())
                # 2. take the next decoded image, in order
                if decoding:
                    job, future = decoding.popleft()
                    try:
                        batch.append((job, future.result()))
                    except Exception as e:  # any broken file is reported and skipped, never fatal
                        self._fail(job, e)
                # 3. one forward pass per full batch (or for what is left at the end)
                if batch and (len(batch) >= self.batch_size or (exhausted and not decoding)):
                    saving.extend(self._infer(batch))
                    batch = []
                if exhausted and not decoding and not batch:
                    break
                if saving and len(decoding) + len(batch) + len(saving) >= self.budget:
                    self._finish_save(*saving.popleft())
            while saving:
                self._finish_save(*saving.popleft())
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _infer(self, batch: list[tuple[Job, Prepared]]) -> list[tuple[Job, Future]]:
        start = time.perf_counter()
        try:
            curves = self.harmonizer.curves_from_thumbnails([p.thumbs for _, p in batch],
                                                            [self.category] * len(batch))
        except Exception as e:  # a failed batch fails its images, the run goes on
            for job, _ in batch:
                self._fail(job, e)
            return []
        for _, prepared in batch:  # each image's row reports the forward pass of its batch
            prepared.timings["infer"] = time.perf_counter() - start
        return [(job, self.pool.submit(self._render_and_save, job, prepared, c.with_strength(self.strength)))
                for (job, prepared), c in zip(batch, curves, strict=True)]

    def _render_and_save(self, job: Job, prepared: Prepared, curves) -> tuple[dict | None, dict[str, float]]:
        start = time.perf_counter()
        if self.layer_output:
            from model.layers import cut_layer

            image = cut_layer(prepared.layered, curves.lut())
        else:
            image = self.harmonizer.render(prepared.image, prepared.mask, curves)
        rendered = time.perf_counter()
        job.output.parent.mkdir(parents=True, exist_ok=True)
        save_image(image, job.output, self.quality, prepared.icc_profile)
        timings = {**prepared.timings, "render": rendered - start, "encode": time.perf_counter() - rendered}
        return curves.mismatch, timings

    def _finish_save(self, job: Job, future: Future) -> None:
        try:
            mismatch, timings = future.result()
        except Exception as e:  # an unwritable output is reported, the run goes on
            self._fail(job, e)
            return
        self.summary.harmonized += 1
        if self.report is not None:
            self.report.write(job.source, job.output, "harmonized", mismatch=mismatch, timings=timings)
        self.progress.update()

    def _fail(self, job: Job, error: Exception) -> None:
        reason = _describe(error)
        self.summary.failed.append((job.source, reason))
        if self.report is not None:
            self.report.write(job.source, job.output, "failed", error=reason)
        self.progress.write(f"s2crnet: failed {_shown(job.source, self.base)}: {reason}", file=sys.stderr)
        self.progress.update()


def _shown(path: Path, base: Path) -> str:
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _describe(error: BaseException) -> str:
    """One line for an exception: OSError's strerror with its file name, else the message, else the type."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return message or type(error).__name__



# --- layer input: foreground + background + placement -------------------------------------------------------

# model.layers names request fields; on the command line they are these flags.
_LAYER_FLAGS = {"x, y": "--at", "x": "--at", "y": "--at", "scale": "--scale", "box": "--box",
                "feather": "--feather", "foreground": "--foreground", "foreground_mask": "--foreground-mask",
                "background": "--background"}
MANIFEST_COLUMNS = ("foreground", "background", "x", "y")  # required; "scale" and "output" are optional


def _layer_message(error) -> str:
    """A model.layers.LayerError's sentence with the CLI's flag in place of the field name."""
    message = str(error)
    return f"{_LAYER_FLAGS.get(error.field, error.field)}{message[len(error.field):]}"


@dataclass
class LayerJob:
    """One manifest row: place `foreground` on `background` at `at` (× scale), write `output`."""

    foreground: Path
    background: Path
    at: tuple[int, int]
    scale: float | None
    output: Path
    row: str  # "manifest.csv:LINE", how messages and the report name it

    @property
    def source(self) -> Path:
        return Path(self.row)


def load_layer_job(harmonizer, job: LayerJob, feather: float = 0.0, foreground_mask: Path | None = None,
                   box=None) -> Prepared:
    """Decode foreground and background, compose, thumbnail (runs in a worker thread). A bad placement raises
    model.layers.LayerError naming the manifest's column (x, y, scale)."""
    from model.layers import compose

    start = time.perf_counter()
    decoded = _decode(job.background, "background", True)  # the output is the background's, ICC profile too
    background, icc_profile = decoded.image, decoded.icc_profile
    foreground = _decode(job.foreground, "foreground", True).image
    matte = _decode(foreground_mask, "foreground_mask", False).image if foreground_mask is not None else None
    layered = compose(foreground, background, None if box is not None else job.at, job.scale, box, feather, matte,
                      copy=False)
    image, mask, thumbs = harmonizer.prepare(layered.composite, layered.mask)
    return Prepared(image, mask, thumbs, icc_profile, layered, {"decode": time.perf_counter() - start})


def _layer_extension(background: Path, layer: bool, extension: str | None) -> str:
    if extension:
        return extension
    return ".png" if layer else _output_extension(background)


def read_manifest(manifest: Path, out_dir: Path, layer: bool,
                  extension: str | None) -> tuple[list[LayerJob], list[tuple[Path, str]]]:
    """The manifest's rows → jobs, and the rows that cannot be run (each with the reason).

    Paths in `foreground` and `background` are relative to the manifest's folder; `output` (optional) to OUTDIR.
    Without `output` a row writes OUTDIR/LINE_FOREGROUND_on_BACKGROUND.EXT, the same name on every run (resume).
    """
    from model.layers import LayerError, whole_number

    if not manifest.is_file():
        raise CliError(f"--layers {str(manifest)!r} is not a file")
    base = manifest.resolve().parent
    out_dir = out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"-o {str(out_dir)!r} is a file; --layers writes into a folder")
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CliError(f"the manifest {manifest.name} lacks the column(s) {', '.join(missing)} (it needs "
                           f"{','.join(MANIFEST_COLUMNS)}[,scale][,output])")
        rows = list(reader)
    jobs, bad, outputs = [], [], {}
    for number, row in enumerate(rows, start=1):
        label = Path(f"{manifest.name}:{number + 1}")  # its line in the file (the header is line 1)
        try:
            names = {key: (row.get(key) or "").strip() for key in ("foreground", "background", "scale", "output")}
            for key in ("foreground", "background"):
                if not names[key]:
                    raise CliError(f"{key}: empty")
            foreground, background = base / names["foreground"], base / names["background"]
            at = (whole_number(row.get("x") or "", "x"), whole_number(row.get("y") or "", "y"))
            scale = None
            if names["scale"]:
                try:
                    scale = float(names["scale"])
                except ValueError:
                    raise CliError(f"scale: must be a number, got {names['scale'][:40]!r}") from None
            if names["output"]:
                output = (out_dir / names["output"]).resolve()
                output_format(output)  # an unknown extension fails this row, not the run
            else:
                stem = f"{number:05d}_{foreground.stem}_on_{background.stem}"
                output = out_dir / (stem + _layer_extension(background, layer, extension))
            if output in (foreground.resolve(), background.resolve()):
                raise CliError(f"output: {names['output']!r} would replace an input")
            if output in outputs:
                raise CliError(f"output: {output.name} is also the output of {outputs[output]}")
        except (CliError, LayerError) as e:
            bad.append((label, str(e)))
            continue
        outputs[output] = label
        jobs.append(LayerJob(foreground, background, at, scale, output, str(label)))
    return jobs, bad


# --- the report -------------------------------------------------------------------------------------------

class Report:
    """--report: one CSV row per image as it finishes (flushed, so an interrupted run keeps what it did)."""

    COLUMNS = ("input", "output", "status", "mismatch", "mismatch_r", "mismatch_g", "mismatch_b",
               "decode_ms", "infer_ms", "render_ms", "encode_ms", "error")

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", newline="", encoding="utf-8")  # closed by close()
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.COLUMNS)

    def write(self, source: Path, output: Path | None, status: str, mismatch: dict | None = None,
              timings: dict | None = None, error: str = "") -> None:
        mismatch, timings = mismatch or {}, timings or {}
        values = [str(source), str(output) if output is not None else "", status]
        values += [f"{mismatch[k]:.3f}" if k in mismatch else "" for k in ("mean", "r", "g", "b")]
        values += [f"{timings[k] * 1000:.1f}" if k in timings else "" for k in ("decode", "infer", "render",
                                                                                "encode")]
        self.writer.writerow([*values, error])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# --- subcommands --------------------------------------------------------------------------------------------

def _load_harmonizer(args: argparse.Namespace):
    from app.startup import StartupError, load_harmonizer  # torch only for the commands that need the model

    try:
        return load_harmonizer(args.weights, args.device, weights_name="--weights")
    except StartupError as e:  # a command's error like any other (exit 1); `serve` keeps the 2 and 3
        raise CliError(str(e).replace("S2CRNET_DEVICE=", "--device ")) from None


def _check_category(harmonizer, category: str | None) -> None:
    if category is not None and category not in harmonizer.config.categories:
        known = ", ".join(harmonizer.config.categories)
        raise CliError(f"unknown category {category!r}; this model knows: {known}")


def cmd_harmonize(args: argparse.Namespace) -> int:
    folder_mode = args.composites is not None or args.masks is not None
    layer_one = args.foreground is not None or args.background is not None
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


def _write_curves(args: argparse.Namespace, harmonizer, curves, name: str) -> None:
    if args.curves:
        info = harmonizer.info()
        document = {**curves.to_dict(), "mismatch": curves.mismatch, "strength": curves.strength,
                    "model": model_name(harmonizer), "weights_sha256": info["sha256"]}
        Path(args.curves).write_text(json.dumps(document) + "\n")
    if args.cube:
        Path(args.cube).write_text(curves.to_cube(f"S2CRNet {name}"))


def _harmonize_layer_one(args: argparse.Namespace) -> int:
    from model.layers import LayerError

    output = Path(args.output)
    if output_format(output) in _FORMATS_WITHOUT_ALPHA and args.layer:
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
        raise CliError(_layer_message(e)) from None
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
    image, mask, icc_profile = decode_pair(Path(args.composite), Path(args.mask))
    harmonizer = _load_harmonizer(args)
    _check_category(harmonizer, args.category)
    image, mask, thumbs = harmonizer.prepare(image, mask)
    (curves,) = harmonizer.curves_from_thumbnails([thumbs], [args.category])
    curves = curves.with_strength(args.strength)
    image = harmonizer.render(image, mask, curves)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, output, args.quality, icc_profile)
    _write_curves(args, harmonizer, curves, Path(args.composite).name)
    return 0


def _harmonize_folder(args: argparse.Namespace) -> int:
    composites, out_dir = Path(args.composites), Path(args.output)
    extension = _FORMAT_CHOICES[args.format] if args.format else None
    jobs, unpaired = pair_folder(composites, Path(args.masks), out_dir, args.recursive, extension)
    base = composites.resolve()
    summary = Summary(unpaired=unpaired)
    for path, reason in unpaired:
        sys.stderr.write(f"s2crnet: unpaired {_shown(path, base)}: {reason}\n")
    if not jobs and not unpaired:
        raise CliError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {str(composites)!r}")
    return _run_jobs(args, jobs, summary, base, load_job, unpaired=unpaired)


def _harmonize_layers(args: argparse.Namespace) -> int:
    """--layers MANIFEST: one placed, harmonized composite (or --layer) per row, like folder mode."""
    from functools import partial

    manifest, out_dir = Path(args.layers), Path(args.output)
    extension = _FORMAT_CHOICES[args.format] if args.format else None
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
    report = Report(Path(args.report)) if args.report else None
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
            harmonizer = _load_harmonizer(args)
            _check_category(harmonizer, args.category)
            import torch

            # The --jobs threads already keep cores busy; intra-op threads on top of them only contend
            # (measured on 2 cores with --jobs 2: one torch thread gives ~15% more images/s than two).
            torch.set_num_threads(max(1, cpu_cores() - args.jobs))
            started = time.perf_counter()  # the summary's images/s is the folder's own rate, model loading aside
            with tqdm(total=len(pending), unit="img", desc="harmonize", file=sys.stderr, dynamic_ncols=True,
                      disable=None if args.progress is None else not args.progress) as progress:
                FolderRun(harmonizer, args.jobs, args.batch_size, args.category, args.quality, progress, summary,
                          base, args.strength, report, loader, args.layer).run(pending)
    finally:
        if report is not None:
            report.close()
    sys.stdout.write(summary.line(time.perf_counter() - started) + "\n")
    return 1 if summary.failed or summary.unpaired else 0


def cmd_info(args: argparse.Namespace) -> int:
    info = _load_harmonizer(args).info()
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    meta = info.pop("meta") or {}
    rows = [(key, ", ".join(value) if isinstance(value, list) else value) for key, value in info.items()]
    rows += [(f"meta.{key}", json.dumps(value) if isinstance(value, dict | list) else value)
             for key, value in meta.items()]
    width = max(len(key) for key, _ in rows)
    sys.stdout.write("".join(f"{key:<{width}}  {value}\n" for key, value in rows))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.startup import settings_from

    # Flags given on the command line beat S2CRNET_* variables, which beat the defaults. A bad value is a
    # StartupError: one line and exit 2 (3 for weights that cannot be loaded), as with `python -m app`.
    settings = settings_from(**{name: getattr(args, name) for name in ("host", "port", "weights", "device")})
    from app.main import run  # FastAPI, uvicorn and torch are imported only to serve

    run(settings)
    return 0


def _delegate(module_name: str, prog: str, argv: list[str]) -> int:
    """`s2crnet train|eval|average|renorm|calibrate ...` → the module's own add_arguments(parser) and run(args)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CliError(f"'{prog}' is not available in this installation ({e})") from e
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().split("\n")[0])
    module.add_arguments(parser)
    result = module.run(parser.parse_args(argv))
    return result if isinstance(result, int) else 0


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
    model_options.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                               help="where the network runs (default: auto = cuda when available)")

    harmonize = commands.add_parser(
        "harmonize", parents=[model_options], help="harmonize one composite or a whole folder",
        description="Harmonize one composite (COMPOSITE MASK -o OUT) or a folder (--composites DIR "
                    "--masks DIR -o OUTDIR). Folder pairing: identical stems, or iHarmony4 names "
                    "(a0041_1_5.jpg ↔ a0041_1.png).")
    harmonize.add_argument("composite", nargs="?", help="the composite image")
    harmonize.add_argument("mask", nargs="?", help="its mask: white = pasted object, grey levels blend")
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
                         help="fit the foreground into this box, aspect kept, centred (instead of --at)")
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
    folder.add_argument("--masks", metavar="DIR", help="folder of masks")
    folder.add_argument("-r", "--recursive", action="store_true",
                        help="also take sub-folders (masks and outputs mirror the composites' sub-folders)")
    folder.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    folder.add_argument("--format", choices=sorted(_FORMAT_CHOICES),
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
    harmonize.set_defaults(handler=cmd_harmonize)

    serve = commands.add_parser(
        "serve", help="run the REST service (settings also from S2CRNET_* variables)",
        description="Run the REST service. Flags override S2CRNET_* environment variables.")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--weights", metavar="PATH", help="weights file (default: the shipped weights)")
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"),
                       help="where the network runs (default auto)")
    serve.set_defaults(handler=cmd_serve)

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
        delegated.set_defaults(handler=lambda args, m=module, n=name: _delegate(m, f"s2crnet {n}", args.rest))

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
    quiet_by_default = args.command in ("harmonize", "info")  # their output is the result, not the logs
    logging.basicConfig(level=logging.WARNING if quiet_by_default and not args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        sys.stderr.write(f"s2crnet: error: {_describe(e)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
