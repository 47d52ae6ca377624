"""Folder throughput of `s2crnet harmonize --composites DIR --masks DIR -o OUTDIR`, with --jobs 1 and 2.

    nice -n 15 .venv/bin/python bench/bench_cli.py     # the 10 iHarmony4 samples + 200 generated 1024² images
    nice -n 15 .venv/bin/python bench/bench_cli.py --count 50 --size 2048

Two folders: the 10 shared iHarmony4 samples (up to 4272×2848 JPEGs) and `--count` real crops of them at
`--size`² (JPEG, quality 90), generated into a temporary folder that is deleted afterwards. Each run is the
real console script in a subprocess writing JPEG outputs. The baseline, measured in the same run on the same
files, is what any folder tool pays at least: decode composite and mask, encode the composite as JPEG
(quality 95), one thread, no model. Columns: images/s from the CLI's summary (model loading aside), the wall
time of the whole command (start-up and model loading included), the CLI's images/s over the baseline's.
Each figure is the best of `--repeat` runs (default 3): other processes on a small machine only slow them.
"""

import argparse
import io
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from model.iharmony import mask_stem

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "iharmony4_samples"
S2CRNET = Path(sys.executable).parent / "s2crnet"
SUMMARY = re.compile(r"(\d+) harmonized, .* \(([\d.]+) images/s\)")


def iharmony4_pairs(root: Path) -> list[tuple[Path, Path]]:
    composites = sorted((root / "composite_images").glob("*.jpg"))
    return [(c, root / "masks" / f"{mask_stem(c.stem)}.png") for c in composites]


def generate(out: Path, count: int, size: int, seed: int = 0) -> None:
    """`count` size² crops of the samples around their objects: every mask has foreground and background."""
    rng = random.Random(seed)
    (out / "composites").mkdir(parents=True)
    (out / "masks").mkdir()
    sources = [(Image.open(c).convert("RGB"), Image.open(m).convert("L"))
               for c, m in iharmony4_pairs(SAMPLES)]
    made = attempt = 0
    while made < count:
        image, mask = sources[attempt % len(sources)]
        attempt += 1
        scale = max(size / image.width, size / image.height, rng.uniform(0.3, 0.6))
        scaled = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        small_image = image.resize(scaled, Image.Resampling.BILINEAR)
        small_mask = mask.resize(scaled, Image.Resampling.BILINEAR)
        left, top, right, bottom = small_mask.getbbox()
        jitter = size // 8
        x = min(max((left + right - size) // 2 + rng.randint(-jitter, jitter), 0), scaled[0] - size)
        y = min(max((top + bottom - size) // 2 + rng.randint(-jitter, jitter), 0), scaled[1] - size)
        box = (x, y, x + size, y + size)
        crop_mask = small_mask.crop(box)
        low, high = crop_mask.getextrema()
        if high == 0 or low == 255:
            continue  # an object that fills or misses the crop: not a valid composite
        small_image.crop(box).save(out / "composites" / f"gen{made:04d}_1_1.jpg", quality=90)
        crop_mask.save(out / "masks" / f"gen{made:04d}_1.png")
        made += 1


def baseline(pairs: list[tuple[Path, Path]]) -> float:
    """Images/s of decode composite + mask and encode the composite as JPEG, one thread, no model."""
    started = time.perf_counter()
    for composite, mask in pairs:
        image = Image.open(composite)
        Image.open(mask).load()
        image.save(io.BytesIO(), "JPEG", quality=95)
    return len(pairs) / (time.perf_counter() - started)


def timed_harmonize(arguments: list[str], expected: int) -> tuple[float, float]:
    """`s2crnet harmonize ARGUMENTS` that must harmonize `expected` images → (images/s from its summary, wall s)."""
    started = time.perf_counter()
    result = subprocess.run([str(S2CRNET), "harmonize", *arguments, "--no-progress"], capture_output=True,
                            text=True, check=False)
    wall = time.perf_counter() - started
    match = SUMMARY.search(result.stdout)
    if result.returncode != 0 or not match or int(match[1]) != expected:
        sys.exit(f"s2crnet failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return float(match[2]), wall


def run_cli(composites: Path, masks: Path, jobs: int, expected: int) -> tuple[float, float]:
    """Harmonize the folder into a fresh output folder → (images/s from the summary, wall seconds)."""
    with tempfile.TemporaryDirectory(prefix="s2crnet-bench-out-") as out:
        return timed_harmonize(["--composites", str(composites), "--masks", str(masks), "-o", out,
                                "--jobs", str(jobs)], expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200, help="generated images (default 200)")
    parser.add_argument("--size", type=int, default=1024, help="side of the generated images (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts (default 3)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="s2crnet-bench-") as scratch:
        generated = Path(scratch)
        generate(generated, args.count, args.size)
        folders = [
            ("iHarmony4 samples", SAMPLES / "composite_images", SAMPLES / "masks", iharmony4_pairs(SAMPLES)),
            (f"generated {args.size}²", generated / "composites", generated / "masks",
             [(c, generated / "masks" / f"{c.stem[:-2]}.png")
              for c in sorted((generated / "composites").glob("*.jpg"))]),
        ]
        for name, composites, masks, pairs in folders:
            floor = max(baseline(pairs) for _ in range(args.repeat))  # also warms the page cache
            rows.append((name, len(pairs), "decode+encode baseline", "", floor, 1.0))
            for jobs in (1, 2):
                rate, wall = max(run_cli(composites, masks, jobs, len(pairs)) for _ in range(args.repeat))
                rows.append((name, len(pairs), f"s2crnet --jobs {jobs}", f"{wall:.1f}", rate, rate / floor))

    header = ("folder", "images", "run", "wall s", "images/s", "vs baseline")
    lines = [f"| {' | '.join(header)} |", f"|{'|'.join('---' for _ in header)}|"]
    lines += [f"| {name} | {count} | {run} | {wall} | {rate:.2f} | {ratio:.2f}× |"
              for name, count, run, wall, rate, ratio in rows]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
