"""Images/s of folder mode on Ray Data (`s2crnet harmonize ... --ray`) against plain folder mode, same files, same run.

    nice -n 15 .venv/bin/python bench/bench_ray.py                  # 200 generated 512² composites
    nice -n 15 .venv/bin/python bench/bench_ray.py --count 300 --size 256 --repeat 1

The baseline is plain folder mode (`--jobs 2`, this machine's cores) on the same `--count` real crops of the
iHarmony4 samples (bench_cli.generate). The Ray rows run the same command with `--ray ADDRESS` against one local
cluster that this script starts (all cores, 127.0.0.1): local folders with 1 actor and with 2 actors (half a CPU
each, so decoding tasks keep the rest), and S3 → S3 through a moto server on 127.0.0.1 with 2 actors. Every run
writes into a fresh output place; images/s is the CLI's summary (model loading on the driver aside, the actors'
start-up included: a cost each job pays once), overhead per image is 1/rate − 1/baseline rate. Ray on one
machine does not beat folder mode: what the 1- and 2-actor rows show is how the job scales with actors, which on a
cluster means with nodes. Each figure is the best of `--repeat` runs.
"""

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from bench_cli import generate, run_cli, timed_harmonize

from app.cli.files import cpu_cores
from app.cli.ray_batch import loopback_only


def run_ray(composites: str, masks: str, out: str, address: str, expected: int, *extra) -> tuple[float, float]:
    """One --ray job → (images/s from the summary, wall seconds)."""
    return timed_harmonize(["--composites", composites, "--masks", masks, "-o", out, "--ray", address,
                            *map(str, extra)], expected)


def start_s3(root: Path):
    """moto's S3 server on 127.0.0.1 with the inputs in s3://bench-in → (server, endpoint)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.mkdir("bench-in")
    fs.mkdir("bench-out")
    for folder in ("composites", "masks"):
        fs.put(str(root / folder) + "/", f"bench-in/{folder}/", recursive=True)
    return server, endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200, help="generated images (default 200)")
    parser.add_argument("--size", type=int, default=512, help="side of the generated images (default 512)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure; the best counts (default 1)")
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)  # before the cluster starts: its workers inherit them
    loopback_only()
    import ray

    rows = []
    with tempfile.TemporaryDirectory(prefix="s2crnet-bench-ray-", dir="/tmp") as scratch:
        root = Path(scratch)
        generate(root, args.count, args.size)
        composites, masks = root / "composites", root / "masks"
        folder_rate, folder_wall = max(run_cli(composites, masks, min(2, cpu_cores()), args.count)
                                       for _ in range(args.repeat))
        rows.append(("folder mode --jobs 2", folder_wall, folder_rate))
        server, endpoint = start_s3(root)
        ray.init(address="local", num_cpus=cpu_cores(), include_dashboard=False, object_store_memory=256 * 2**20,
                 _temp_dir=str(root / "ray"), logging_level=logging.ERROR, log_to_driver=False)
        address = ray.get_runtime_context().gcs_address
        try:
            runs = [("ray, local folders, 1 actor", str(composites), str(masks), None, ["--ray-actors", 1]),
                    ("ray, local folders, 2 actors", str(composites), str(masks), None,
                     ["--ray-actors", 2, "--ray-actor-cpus", 0.5]),
                    ("ray, S3 → S3, 2 actors", "s3://bench-in/composites", "s3://bench-in/masks", "s3",
                     ["--ray-actors", 2, "--ray-actor-cpus", 0.5, "--s3-endpoint", endpoint])]
            for label, source, mask_source, storage, extra in runs:
                best = (0.0, 0.0)
                for attempt in range(args.repeat):
                    out = (f"s3://bench-out/run{len(rows)}-{attempt}" if storage
                           else str(root / f"out-{len(rows)}-{attempt}"))
                    best = max(best, run_ray(source, mask_source, out, address, args.count, *extra))
                rows.append((label, best[1], best[0]))
        finally:
            ray.shutdown()
            server.stop()

    header = ("run", "images", "wall s", "images/s", "vs folder mode", "overhead ms/image")
    lines = [f"{args.count} generated {args.size}² composites, {cpu_cores()} cores",
             f"| {' | '.join(header)} |", f"|{'|'.join('---' for _ in header)}|"]
    for label, wall, rate in rows:
        overhead = 1000 * (1 / rate - 1 / folder_rate)
        lines.append(f"| {label} | {args.count} | {wall:.1f} | {rate:.2f} | {rate / folder_rate:.2f}× | "
                     f"{overhead:+.0f} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
