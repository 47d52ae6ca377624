"""Layer input on the command line: placed foregrounds, the --layers manifest."""

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from .files import CliError, Prepared, decode_file, output_format
from .folder import output_extension

log = logging.getLogger(__name__)


# --- layer input: foreground + background + placement -------------------------------------------------------

# model.layers names request fields; on the command line they are these flags.
_LAYER_FLAGS = {"x, y": "--at", "x": "--at", "y": "--at", "scale": "--scale", "box": "--box",
                "feather": "--feather", "foreground": "--foreground", "foreground_mask": "--foreground-mask",
                "background": "--background"}
MANIFEST_COLUMNS = ("foreground", "background", "x", "y")  # required; "scale" and "output" are optional


def layer_message(error) -> str:
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
    model.layers.LayerError naming the manifest's column (x, y, scale). A foreground without a matte (no alpha,
    no foreground_mask) is a plain photo: its subject is cut out first."""
    from model.layers import compose
    from model.segmentation import has_matte

    from .masks import find_mask, segmenter_of

    start = time.perf_counter()
    decoded = decode_file(job.background, "background", True)  # the output is the background's, ICC profile too
    background, icc_profile = decoded.image, decoded.icc_profile
    foreground = decode_file(job.foreground, "foreground", True).image
    matte = decode_file(foreground_mask, "foreground_mask", False).image if foreground_mask is not None else None
    cutout = matte is None and not has_matte(foreground)
    if cutout:
        matte = find_mask(segmenter_of(harmonizer), foreground, None, job.foreground.name)
    layered = compose(foreground, background, None if box is not None else job.at, job.scale, box, feather, matte,
                      copy=False)
    image, mask, thumbs = harmonizer.prepare(layered.composite, layered.mask)
    return Prepared(image, mask, thumbs, icc_profile, layered, {"decode": time.perf_counter() - start}, cutout)


def _layer_extension(background: Path, layer: bool, extension: str | None) -> str:
    if extension:
        return extension
    return ".png" if layer else output_extension(background)


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
    with manifest.open(newline="", encoding="utf-8-sig") as f:  # a Path, or a UPath (s3://) with --ray
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


