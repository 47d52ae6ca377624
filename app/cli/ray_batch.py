"""--ray: folder and manifest mode as a Ray Data job, on a local cluster or a KubeRay one (the `ray` extra).

    jobs (paths) → read + decode + thumbnails (tasks) → curves, batched (actors: the model loaded once each)
                 → read + decode + render + encode + write (tasks) → one result row per image → report, summary

Pairing, naming, resume, the report and the exit code are folder mode's own (commands._run_jobs); only the
pipeline differs, and its forward passes are folder mode's batches (Group), so the bytes written are the same.
What passes between stages through the object store is a group's jobs (their paths), thumbnails (8 × S × S
float32 each) and LUTs (3 × 256): a full-size image exists only inside the task decoding it, never in the object
store, at the price of decoding each image twice (bench/bench_ray.py measures it).
Each output is written whole or not at all, and only where none exists (storage.write_whole), so a task that Ray
retries after its worker died (Ray Data's default: tasks run again, dead actors restart and take their batch
again, as often as needed) never leaves a half file nor writes an output twice.
"""

import logging
import os
import pickle
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .files import CliError, cpu_cores, image_bytes
from .folder import describe_error, shown_path
from .storage import write_whole

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RayOptions:
    address: str | None  # None: RAY_ADDRESS if set, else a new local cluster on this machine's cores
    actors: int  # curve-predicting actors
    actor_cpus: float
    actor_gpus: float
    memory_mb: int | None  # object store memory the job may fill before upstream stages wait (backpressure)
    task_memory_mb: int  # memory each decoding task reserves: how many full-size images a node holds at once


class _Thumbnailer:
    """What load_job / load_layer_job call `harmonizer`: its prepare() without a network (only the thumbnail
    size is needed); thumb None skips the thumbnails (the render stage decodes only to render)."""

    def __init__(self, thumb: int | None):
        self.thumb = thumb

    def prepare(self, image, mask):
        from model.inputs import to_pil_pair
        from model.thumbnails import thumbnail_array

        image, mask = to_pil_pair(image, mask)
        return image, mask, thumbnail_array(image, mask, self.thumb) if self.thumb else None


# --- the stages (each call takes one row: one group, as a dict of one-element numpy columns) -----------------

@dataclass
class Group:
    """One forward pass's worth of jobs: folder mode's batch (FolderRun: --batch-size consecutive jobs), so both
    modes run the same forward passes and write the same bytes (float sums over another batch move a level now
    and then). It travels pickled from stage to stage, collecting each job's outcome."""

    jobs: list  # FolderJob or LayerJob: paths only
    errors: list[str] = field(default_factory=list)  # "" while a job is fine
    luts: list = field(default_factory=list)  # (3, 256) uint8 per job, None where it failed
    mismatch: list = field(default_factory=list)
    timings: list = field(default_factory=list)  # seconds per stage, for --report

    def good(self) -> list[int]:
        return [i for i, error in enumerate(self.errors) if not error]


def _row(group: Group, **columns) -> dict:
    return {"group": np.array([pickle.dumps(group)], dtype=object), **columns}


def decode_and_thumbnail(row: dict, loader, thumb: int, batch_size: int) -> dict:
    """Stage 1 (tasks): read and decode each pair, keep only its thumbnails. A broken file fails its job."""
    group: Group = pickle.loads(row["group"][0])
    thumbs = np.zeros((1, batch_size, 8, thumb, thumb), np.float32)  # one shape for every row: padded
    for i, job in enumerate(group.jobs):
        try:
            prepared = loader(_Thumbnailer(thumb), job)
        except Exception as e:  # a broken image is reported, the job goes on
            group.errors.append(describe_error(e))
            group.timings.append({})
            continue
        thumbs[0, i] = prepared.thumbs
        group.errors.append("")
        group.timings.append(dict(prepared.timings))
    return _row(group, thumbs=thumbs)


class PredictCurves:
    """Stage 2 (actors): one forward pass per group → each job's LUT and mismatch score."""

    def __init__(self, weights: str | None, device: str, runtime: str, category: str | None,
                 strength: float | None, threads: int):
        from app.startup import load_harmonizer

        self.harmonizer = load_harmonizer(weights, device, weights_name="--weights", runtime=runtime,
                                          threads=threads)
        self.category, self.strength = category, strength

    def __call__(self, row: dict) -> dict:
        group: Group = pickle.loads(row["group"][0])
        good = group.good()
        group.luts, group.mismatch = [None] * len(group.jobs), [None] * len(group.jobs)
        start = time.perf_counter()
        try:
            curves = self.harmonizer.curves_from_thumbnails([row["thumbs"][0][i] for i in good],
                                                            [self.category] * len(good))
        except Exception as e:  # a failed batch fails its images, the job goes on
            for i in good:
                group.errors[i] = describe_error(e)
            return _row(group)
        for i, c in zip(good, curves, strict=True):  # each image's row reports the forward pass of its batch
            c = c.with_strength(self.strength)
            group.luts[i], group.mismatch[i] = c.lut(), c.mismatch
            group.timings[i]["infer"] = time.perf_counter() - start
        return _row(group)


def render_and_write(row: dict, loader, layer: bool, quality: int, overwrite: bool) -> dict:
    """Stage 3 (tasks): decode again, render with the LUT, encode, write whole (storage.write_whole)."""
    from model.curves import render
    from model.layers import cut_layer

    group: Group = pickle.loads(row["group"][0])
    for i in group.good():
        job, timings = group.jobs[i], group.timings[i]
        try:
            # An output that appeared since the job was planned was written by an earlier attempt of this task
            # (Ray retried it after its worker died): done, not written again.
            if not overwrite and job.output.exists():
                continue
            start = time.perf_counter()
            prepared = loader(_Thumbnailer(None), job)
            decoded = time.perf_counter()
            lut = group.luts[i]
            image = cut_layer(prepared.layered, lut) if layer else render(prepared.image, prepared.mask, lut)
            rendered = time.perf_counter()
            write_whole(job.output, image_bytes(image, job.output, quality, prepared.icc_profile), overwrite)
            timings["decode"] += decoded - start  # the report's decode_ms: both decodes
            timings["render"], timings["encode"] = rendered - decoded, time.perf_counter() - rendered
        except Exception as e:  # an unreadable or unwritable file is reported, the job goes on
            group.errors[i] = describe_error(e)
    return _row(group)


# --- the driver ---------------------------------------------------------------------------------------------------

def connect(options: RayOptions) -> bool:
    """Join the cluster at options.address (or RAY_ADDRESS), else start a local one on this machine's cores
    → whether this call started it (and so stops it at the end)."""
    address = options.address or os.environ.get("RAY_ADDRESS")
    if not address:
        loopback_only()
    try:
        import ray
    except ImportError:
        raise CliError("--ray needs the ray extra: pip install 's2crnet[ray]'") from None

    if ray.is_initialized():  # a caller (a test, a notebook) already chose the cluster
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}  # the CLI's output is its own
    if address:
        ray.init(address=address, **quiet)
        return False
    store = options.memory_mb * 2**20 * 2 if options.memory_mb else None  # room for the job's limit, and more
    ray.init(address="local", num_cpus=cpu_cores(), include_dashboard=False, object_store_memory=store, **quiet)
    return True


def loopback_only() -> None:
    """Make a local cluster (this machine alone) use 127.0.0.1, not an address other hosts reach: Ray on Linux
    turns 127.0.0.1 into the machine's own address unless clusters are off (ray_constants.ENABLE_RAY_CLUSTER,
    read when ray is first imported)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def build_dataset(jobs: list, args, loader, thumb: int, options: RayOptions):
    """The three stages over `jobs` in groups of --batch-size, lazily: nothing runs until iterated."""
    import ray.data

    if not log.isEnabledFor(logging.INFO):  # without --verbose, Ray Data's own lines stay out of the CLI's output
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI's own bar counts finished images
    context.print_on_execution_start = False
    context.execution_options.preserve_order = False
    if options.memory_mb:
        context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
            object_store_memory=options.memory_mb * 2**20)
    size = args.batch_size
    groups = [Group(jobs[start:start + size]) for start in range(0, len(jobs), size)]
    # One group per block: a task holds one full-size image at a time, a retry redoes one group.
    dataset = ray.data.from_items([{"group": pickle.dumps(group)} for group in groups],
                                  override_num_blocks=len(groups))
    # The reservation also keeps the decoding stages apart from the actors' (Ray Data fuses stages whose
    # remote arguments agree): decoding scales out with tasks while the actors only predict.
    task = {"batch_size": 1, "num_cpus": 1, "memory": options.task_memory_mb * 2**20}
    dataset = dataset.map_batches(decode_and_thumbnail, fn_kwargs={"loader": loader, "thumb": thumb,
                                                                   "batch_size": size}, **task)
    threads = max(1, int(options.actor_cpus))
    device = "cuda" if options.actor_gpus > 0 and args.device == "auto" else args.device
    dataset = dataset.map_batches(
        PredictCurves, batch_size=1,
        fn_constructor_kwargs={"weights": args.weights, "device": device, "runtime": args.runtime,
                               "category": args.category, "strength": args.strength, "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.actor_cpus, num_gpus=options.actor_gpus)
    return dataset.map_batches(render_and_write, fn_kwargs={"loader": loader, "layer": args.layer,
                                                            "quality": args.quality, "overwrite": args.overwrite},
                               **task)


def run_on_ray(args, pending: list, summary, report, progress, thumb: int, loader, base) -> float:
    """Run `pending` through the cluster; each finished row goes to the summary, report and progress bar as it
    comes, like FolderRun. Returns the time the pipeline started (the summary's rate excludes connecting)."""
    options = ray_options(args)
    local = connect(options)  # before anything imports ray (see loopback_only)
    try:
        dataset = build_dataset(pending, args, loader, thumb, options)
        return _collect(dataset, summary, report, progress, base)
    finally:
        if local:
            import ray

            ray.shutdown()


def _collect(dataset, summary, report, progress, base) -> float:
    started = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for raw in batch["group"]:
            group: Group = pickle.loads(raw)
            for job, error, mismatch, timings in zip(group.jobs, group.errors, group.mismatch, group.timings,
                                                     strict=True):
                if error:
                    summary.failed.append((job.source, error))
                    if report is not None:
                        report.write(job.source, job.output, "failed", error=error)
                    progress.write(f"s2crnet: failed {shown_path(job.source, base)}: {error}", file=sys.stderr)
                else:
                    summary.harmonized += 1
                    if report is not None:
                        report.write(job.source, job.output, "harmonized", mismatch=mismatch, timings=timings)
                progress.update()
    return started


# --- the command line -------------------------------------------------------------------------------------------

def add_arguments(parser, positive_int) -> None:
    """The harmonize command's --ray and storage options."""
    group = parser.add_argument_group(
        "Ray and storage", "run folder or manifest mode as a Ray Data job (pip install 's2crnet[ray]'); inputs "
        "and -o may then be s3://bucket/prefix")
    group.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="the cluster: ADDRESS (host:6379, auto, ray://host:10001), or none: RAY_ADDRESS if "
                            "set, else a local cluster on this machine")
    group.add_argument("--ray-actors", type=positive_int, default=1, metavar="N",
                       help="curve-predicting actors, each loading the model once (default 1)")
    group.add_argument("--ray-actor-cpus", type=float, default=1.0, metavar="C",
                       help="CPUs each actor reserves (default 1; also its forward pass's threads)")
    group.add_argument("--ray-actor-gpus", type=float, default=0.0, metavar="G",
                       help="GPUs each actor reserves (default 0; above 0 the network runs on CUDA)")
    group.add_argument("--ray-memory-mb", type=positive_int, default=None, metavar="MB",
                       help="object store memory the job may fill before reading waits (default: Ray's share)")
    group.add_argument("--ray-task-memory-mb", type=positive_int, default=1024, metavar="MB",
                       help="memory each decoding task reserves, so a node decodes no more full-size images "
                            "than it holds (default 1024; a 49 MP image needs about 600)")
    group.add_argument("--s3-endpoint", metavar="URL",
                       help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS); credentials come from "
                            "the AWS environment variables of every node")
    group.add_argument("--s3-region", metavar="REGION", help="S3 region (default: AWS_REGION)")


def ray_options(args) -> RayOptions:
    return RayOptions(args.ray or None, args.ray_actors, args.ray_actor_cpus, args.ray_actor_gpus,
                      args.ray_memory_mb, args.ray_task_memory_mb)
