"""Benchmark of the model core on the CPU: curve prediction, full-resolution render and its peak memory.

    nice -n 15 .venv/bin/python bench/bench_model.py [--weights PATH] [--repeats 7]

Prints one table. Each render figure stands beside a plain JPEG decode + encode of the same image, measured in
the same run, and memory is measured in a fresh subprocess per operation (ru_maxrss is a high-water mark):
tracemalloc catches Python/numpy allocations, the RSS delta catches Pillow's and torch's own buffers.
Targets (default model, 2 threads): prediction ≤ 30 ms/image at batch 1; render 2048² ≤ 20 ms; ≤ 1 extra copy.
"""

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere without installing the package

from model import Harmonizer  # noqa: E402
from model.iharmony import mask_stem  # noqa: E402
from model.thumbnails import make_thumbnails  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "iharmony4_samples"
THREADS = 2
RENDER_SIDES = (1024, 2048, 4096)
MEMORY_SIDE = 4096
PROBES = ("thumbnails", "render", "render-wholebox", "harmonize")
TARGETS = {"predict_ms": 30.0, "render_2048_ms": 20.0, "extra_copies": 1.0}


def load_samples() -> list[tuple[Image.Image, Image.Image]]:
    """The iHarmony4 sample composites at their own sizes (230×312 to 4992×3328), or synthetic stand-ins."""
    names = sorted((DATA / "composite_images").glob("*.jpg")) if DATA.is_dir() else []
    samples = []
    for path in names:
        mask_path = DATA / "masks" / f"{mask_stem(path.stem)}.png"
        samples.append((Image.open(path).convert("RGB"), Image.open(mask_path).convert("L")))
    if not samples:
        sys.stderr.write(f"no samples under {DATA}; using synthetic images\n")
        rng = np.random.default_rng(0)
        for side in (320, 640, 1024, 2048) * 2:
            image = Image.fromarray(rng.integers(0, 256, (side, side * 3 // 2, 3), dtype=np.uint8))
            mask = Image.new("L", image.size, 0)
            mask.paste(255, (side // 4, side // 4, side // 2, side // 2))
            samples.append((image, mask))
    return samples


def square_sample(side: int, whole_box: bool = False) -> tuple[Image.Image, Image.Image]:
    """The first sample resized to side² (a photo compresses like a photo, unlike noise).

    whole_box: the worst case for the render, a mask whose bounding box is the whole image.
    """
    image, mask = load_samples()[0]
    image, mask = image.resize((side, side), Image.Resampling.BILINEAR), mask.resize((side, side))
    if whole_box:
        mask.putpixel((0, 0), 255)
        mask.putpixel((side - 1, side - 1), 255)
    return image, mask


def median_ms(fn, repeats: int, setup=lambda: ()) -> float:
    """Median wall time of fn(*setup()) in ms; setup (e.g. a fresh copy to render into) is not timed."""
    times = []
    for _ in range(repeats):
        args = setup()
        start = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_predict(h: Harmonizer, samples, repeats: int) -> dict[int, float]:
    """ms per image for thumbnails + one forward pass, at batch 1 and batch 8."""
    def batch(pairs):
        thumbs = [h.prepare(image, mask)[2] for image, mask in pairs]
        h.curves_from_thumbnails(thumbs)

    batch(samples[:1])  # warm-up: first-call allocations
    per_image_b1 = statistics.mean(median_ms(lambda p=p: batch([p]), repeats) for p in samples[:8])
    eight = (samples * 8)[:8]
    per_image_b8 = median_ms(lambda: batch(eight), repeats) / 8
    return {1: per_image_b1, 8: per_image_b8}


def bench_render(h: Harmonizer, side: int, repeats: int, whole_box: bool = False) -> tuple[float, float]:
    """(render ms, JPEG decode + encode ms) for one side² image."""
    image, mask = square_sample(side, whole_box)
    (curves,) = h.predict_curves([image], [mask])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()

    def jpeg_roundtrip():
        decoded = Image.open(io.BytesIO(jpeg))
        decoded.load()
        decoded.save(io.BytesIO(), "JPEG", quality=90)

    render_ms = median_ms(lambda im: h.render(im, mask, curves), repeats, setup=lambda: (image.copy(),))
    return render_ms, median_ms(jpeg_roundtrip, repeats)


def peak_rss() -> int:
    """The process's resident high-water mark (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so setup (decoding, resizing) does not mask the probe."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_probe(what: str, side: int) -> dict:
    """Runs in a fresh process: peak extra memory of one operation on a side² RGB image."""
    h = Harmonizer.load(device="cpu")
    image, mask = square_sample(side, whole_box=what == "render-wholebox")
    (curves,) = h.predict_curves([image], [mask])
    operation = {
        "thumbnails": lambda: make_thumbnails(image, mask, h.config.thumb),
        "render": lambda: h.render(image, mask, curves),
        "render-wholebox": lambda: h.render(image, mask, curves),
        "harmonize": lambda: h.harmonize(image, mask),
    }[what]
    rss_before = psutil.Process().memory_info().rss
    reset_peak_rss()
    tracemalloc.start()
    operation()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Pillow keeps RGB at 4 bytes per pixel, so that is the size of "one copy of the image" in memory.
    return {"what": what, "traced_peak": traced_peak, "rss_peak_delta": max(peak_rss() - rss_before, 0),
            "image_bytes": side * side * 4}


def run_probe(what: str, side: int) -> dict:
    cmd = [sys.executable, __file__, "--probe", what, "--side", str(side)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped one)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (default %(default)s)")
    parser.add_argument("--probe", choices=PROBES, help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, default=MEMORY_SIDE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        sys.stdout.write(json.dumps(memory_probe(args.probe, args.side)) + "\n")
        return

    h = Harmonizer.load(args.weights, device="cpu")
    out = sys.stdout.write
    out(f"S2CRNet model core benchmark: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({args.threads} threads), Pillow {Image.__version__}\n")
    out(f"model: {h.config.backbone}, thumb {h.config.thumb}, {h.config.stages} stages, "
        f"{h.num_parameters() / 1e6:.3f} M parameters\n")
    # Other work on the machine (e.g. a training run) inflates every figure: print the load beside them.
    out(f"load average at start: {os.getloadavg()[0]:.2f} (1 min)\n\n")

    predict = bench_predict(h, load_samples(), args.repeats)
    out("| measurement | figure | baseline (same run) | ratio | target |\n|---|---|---|---|---|\n")
    for size, ms in predict.items():
        target = f"≤ {TARGETS['predict_ms']:.0f} ms" if size == 1 else ""
        out(f"| predict, batch {size} (thumbnails + forward) | {ms:.1f} ms/image | | | {target} |\n")
    for side, whole_box in [(side, False) for side in RENDER_SIDES] + [(2048, True)]:
        render_ms, jpeg_ms = bench_render(h, side, args.repeats, whole_box)
        target = f"≤ {TARGETS['render_2048_ms']:.0f} ms" if side == 2048 else ""
        label = "render, mask box = whole image," if whole_box else "render"
        out(f"| {label} {side}² | {render_ms:.1f} ms | JPEG decode+encode {jpeg_ms:.1f} ms | "
            f"{render_ms / jpeg_ms:.2f}× | {target} |\n")
    for what in PROBES:
        probe = run_probe(what, MEMORY_SIDE)
        copies = probe["rss_peak_delta"] / probe["image_bytes"]
        target = f"≤ {TARGETS['extra_copies']:.0f} copy" if what.startswith("render") else ""
        out(f"| peak memory, {what} {MEMORY_SIDE}² | +{probe['rss_peak_delta'] / 2**20:.1f} MiB RSS, "
            f"{probe['traced_peak'] / 2**20:.1f} MiB traced | image {probe['image_bytes'] / 2**20:.0f} MiB | "
            f"{copies:.2f} extra copies | {target} |\n")


if __name__ == "__main__":
    main()
