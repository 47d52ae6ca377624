"""Masks without painting on the command line (model/segmentation.py: U²-Netp).

    s2crnet mask photo.jpg -o mask.png [--box x0,y0,x1,y1]           # the found mask, the image's size
    s2crnet harmonize comp.jpg --mask auto [--box x0,y0,x1,y1] -o out.jpg
    s2crnet harmonize --composites DIR --mask auto [--boxes boxes.csv] -o OUTDIR   # folder mode
    s2crnet harmonize --foreground photo.jpg --background bg.jpg --at X,Y -o out.jpg  # a plain photo: cut out

boxes.csv: columns `composite` (its path relative to --composites) and `box` ("x0,y0,x1,y1"); a composite it
does not list is searched as a whole.
"""

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .files import CliError, Prepared, decode_file, output_format, save_image

__all__ = ["AUTO", "AutoMaskJob", "add_mask_command", "auto_mask_jobs", "check_segmenter", "find_mask",
           "load_auto_mask_job", "read_boxes", "segmenter_of"]

AUTO = "auto"
BOX_COLUMNS = ("composite", "box")


def check_segmenter() -> None:
    """Fail at once, before the model's slow load, when the segmentation model is not installed."""
    from model.runtime import ONNX_INSTALL, installed
    from model.segmentation import SegmenterError, find_model_file

    if not installed("onnxruntime"):
        raise CliError(f"masks without painting run on onnxruntime, which is not installed: {ONNX_INSTALL}")
    try:
        find_model_file()
    except SegmenterError as e:
        raise CliError(str(e)) from None


def find_mask(segmenter, image, box, what: str):
    """segmenter.mask with its errors as one line naming the flag or file."""
    from model.segmentation import BoxError, NoObjectError

    try:
        return segmenter.mask(image, box)
    except BoxError as e:
        raise CliError(f"--{e}") from None
    except NoObjectError as e:
        raise CliError(f"{what}: {e}") from None


def segmenter_of(harmonizer):
    """The harmonizer's segmenter, loaded on first use; not installed → one line saying what to install."""
    from model.segmentation import SegmenterError

    try:
        return harmonizer.segmenter
    except SegmenterError as e:
        raise CliError(str(e)) from None


# --- `s2crnet mask` ---------------------------------------------------------------------------------------
def add_mask_command(commands, box_type) -> None:
    mask = commands.add_parser(
        "mask", help="find the object of an image (inside --box) and write its mask",
        description="Find the object with U²-Netp (salient-object segmentation) — the most salient one, or the "
                    "one inside --box — and write its mask (8-bit grey, the image's size, 255 = object), to "
                    "check or edit before `s2crnet harmonize IMAGE MASK`.")
    mask.add_argument("image", help="the image (a composite, or a plain photo to cut out)")
    mask.add_argument("-o", "--output", required=True, metavar="OUT", help="the mask to write (.png, .tif, .webp)")
    mask.add_argument("--box", type=box_type, metavar="X0,Y0,X1,Y1",
                      help="where the object is, in image pixels (grown by 10%% on each side before searching)")
    mask.set_defaults(handler=cmd_mask)


def cmd_mask(args: argparse.Namespace) -> int:
    from model.segmentation import Segmenter, SegmenterError

    output = Path(args.output)
    output_format(output)
    check_segmenter()
    image = decode_file(Path(args.image), "image", True).image
    try:
        segmenter = Segmenter.load()
    except SegmenterError as e:
        raise CliError(str(e)) from None
    found = find_mask(segmenter, image, args.box, args.image)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_image(found, output, 100, None)
    return 0


# --- harmonize --mask auto -----------------------------------------------------------------------------------
@dataclass
class AutoMaskJob:
    """One composite of folder mode with --mask auto: its object is found (inside `box`), then harmonized."""

    composite: Path
    output: Path
    box: tuple[int, int, int, int] | None = None

    @property
    def source(self) -> Path:
        return self.composite


def load_auto_mask_job(harmonizer, job: AutoMaskJob) -> Prepared:
    """Decode, find the mask, thumbnail (runs in a worker thread)."""
    start = time.perf_counter()
    decoded = decode_file(job.composite, "composite", True)
    decode_s = time.perf_counter() - start
    found = find_mask(segmenter_of(harmonizer), decoded.image, job.box, job.composite.name)
    segment_s = time.perf_counter() - start - decode_s
    image, mask, thumbs = harmonizer.prepare(decoded.image, found)
    return Prepared(image, mask, thumbs, decoded.icc_profile, timings={"decode": decode_s, "segment": segment_s})


def read_boxes(path: Path, composites: Path) -> dict[Path, tuple[int, int, int, int]]:
    """--boxes CSV → {composite path: box}; a bad row fails the run at once, naming its line."""
    from model.segmentation import BoxError, parse_mask_box

    if not path.is_file():
        raise CliError(f"--boxes {str(path)!r} is not a file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CliError(f"--boxes {path.name} lacks the column(s) {', '.join(missing)} (it needs "
                           f"{','.join(BOX_COLUMNS)})")
        boxes = {}
        for line, row in enumerate(reader, start=2):
            try:
                boxes[(composites / (row["composite"] or "").strip()).resolve()] = parse_mask_box(row["box"] or "")
            except BoxError as e:
                raise CliError(f"--boxes {path.name}:{line}: {e}") from None
    return boxes


def auto_mask_jobs(args: argparse.Namespace) -> list[AutoMaskJob]:
    """Every image in --composites (sub-folders with --recursive), its output in -o, its box from --boxes."""
    from .files import FORMAT_CHOICES, IMAGE_EXTENSIONS
    from .folder import output_extension

    composites, out_dir = Path(args.composites), Path(args.output)
    if not composites.is_dir():
        raise CliError(f"--composites {str(composites)!r} is not a folder")
    composites, out_dir = composites.resolve(), out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"-o {str(out_dir)!r} is a file; folder mode writes into a folder")
    if out_dir == composites:
        raise CliError("the output folder must differ from the composites folder: harmonized images would "
                       "replace the inputs")
    boxes = read_boxes(Path(args.boxes), composites) if args.boxes else {}
    extension = FORMAT_CHOICES[args.format] if args.format else None
    pattern = "**/*" if args.recursive else "*"
    jobs, outputs = [], {}
    for path in sorted(composites.glob(pattern)):
        relative = path.relative_to(composites)
        if (path.suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in relative.parts)
                or path.is_relative_to(out_dir) or not path.is_file()):
            continue
        output = out_dir / relative.parent / (path.stem + (extension or output_extension(path)))
        if output in outputs:
            raise CliError(f"{relative} and {outputs[output]} would both be written to {output.name}; use --format")
        outputs[output] = relative
        jobs.append(AutoMaskJob(path, output, boxes.pop(path.resolve(), None)))
    if not jobs:
        raise CliError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {str(composites)!r}")
    if boxes:
        unknown = ", ".join(sorted(str(p.relative_to(composites)) if p.is_relative_to(composites) else str(p)
                                   for p in boxes))
        sys.stderr.write(f"s2crnet: warning: --boxes names images not in --composites: {unknown}\n")
    return jobs
