"""Benchmark of the REST service end to end over HTTP on 127.0.0.1 (a real uvicorn server per configuration).

    nice -n 15 .venv/bin/python bench/bench_service.py [--quick] [--weights PATH] [--against TREE]

Prints two tables:
1. latency p50/p95 of POST /harmonize for 1024², 2048², 4096² JPEGs at concurrency 1, beside an in-process
   Pillow JPEG decode + encode (quality 95, the service's default) of the same image measured in the same run,
   and their ratio; plus the server's own stage times (Server-Timing, p50).
2. throughput (images/s) at concurrency 1, 4 and 8 with batching on (max_batch_size 8) and off (1).
Target on 2 CPU cores with the default model: 2048² JPEG p50 ≤ 100 ms end to end.

--against TREE (another checkout, e.g. `git worktree add --detach /tmp/base main`) runs that tree's server beside
this one and alternates every request and every throughput cell between the two, so that a before/after
comparison sees the same machine load (on a shared machine it swings 2× within minutes).
"""

import argparse
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from model.iharmony import mask_stem

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "iharmony4_samples"
SIDES = (1024, 2048, 4096)
CONCURRENCY = (1, 4, 8)
TARGET_2048_P50_MS = 100.0


# --- inputs: real photos cropped to squares -----------------------------------------------------------------
def real_square(side: int, index: int = 0) -> tuple[bytes, bytes]:
    """An iHarmony4 sample scaled to cover side×side and cropped around its object → (JPEG q90, PNG mask)."""
    names = sorted((SAMPLES / "composite_images").glob("*.jpg"))
    path = names[index % len(names)]
    image = Image.open(path).convert("RGB")
    mask = Image.open(SAMPLES / "masks" / f"{mask_stem(path.stem)}.png").convert("L")
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    image, mask = image.resize(size, Image.Resampling.BILINEAR), mask.resize(size, Image.Resampling.BILINEAR)
    left, top, right, bottom = mask.getbbox()
    x0 = min(max((left + right) // 2 - side // 2, 0), size[0] - side)
    y0 = min(max((top + bottom) // 2 - side // 2, 0), size[1] - side)
    box = (x0, y0, x0 + side, y0 + side)
    return _encode(image.crop(box), "JPEG", quality=90), _encode(mask.crop(box), "PNG")


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode_encode_ms(jpeg: bytes, repeats: int) -> float:
    """The baseline: what any image service pays at least — decode the JPEG, encode it again (p50, ms)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        image = Image.open(io.BytesIO(jpeg))
        image.load()
        _encode(image, "JPEG", quality=95)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# --- the server ---------------------------------------------------------------------------------------------
class Server:
    def __init__(self, env: dict[str, str], tree: Path = ROOT):
        with socket_port() as port:
            self.url = f"http://127.0.0.1:{port}"
            full_env = {**os.environ, "S2CRNET_HOST": "127.0.0.1", "S2CRNET_PORT": str(port),
                        "S2CRNET_LOG_LEVEL": "warning", **env}
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-m", "app"], cwd=tree, env=full_env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready after 180 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


class socket_port:
    """A free TCP port on 127.0.0.1 (context manager: the probe socket closes on exit)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def harmonize(client: httpx.Client, url: str, pair: tuple[bytes, bytes]) -> tuple[float, dict[str, float]]:
    """One request → (wall ms, Server-Timing stages in ms)."""
    files = {"composite": ("comp.jpg", pair[0], "image/jpeg"), "mask": ("mask.png", pair[1], "image/png")}
    start = time.perf_counter()
    response = client.post(url + "/harmonize", files=files, timeout=300)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"/harmonize answered {response.status_code}: {response.text[:300]}")
    stages = {k: float(v) for k, v in re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"])}
    return elapsed, stages


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_table(urls: dict[str, str], quick: bool) -> list[str]:
    """One row per image side and server (`urls`: label → URL), their requests alternating."""
    rows = ["| image | server | requests | p50 ms | p95 ms | decode+encode p50 ms (in-process) | ratio | "
            "server stages p50 ms (decode / thumbnail / queue / infer / decode_full / render / encode / critical) |",
            "|---|---|---|---|---|---|---|---|"]
    clients = {label: httpx.Client() for label in urls}
    try:
        for side in SIDES:
            pair = real_square(side)
            count = {1024: 30, 2048: 20, 4096: 8}[side] // (3 if quick else 1)
            walls, stages = {label: [] for label in urls}, {label: [] for label in urls}
            for label, url in urls.items():
                for _ in range(2):  # warm-up: first-touch allocations, connection set-up
                    harmonize(clients[label], url, pair)
            baselines = []
            for _ in range(count):  # interleaved, so all see the same machine load
                for label, url in urls.items():
                    wall, stage = harmonize(clients[label], url, pair)
                    walls[label].append(wall)
                    stages[label].append(stage)
                baselines.append(decode_encode_ms(pair[0], 1))
            baseline = statistics.median(baselines)
            for label in urls:
                p50 = statistics.median(walls[label])
                breakdown = " / ".join(f"{statistics.median(s.get(name, 0.0) for s in stages[label]):.0f}"
                                       for name in ("decode", "thumbnail", "queue", "infer", "decode_full", "render",
                                                    "encode", "critical"))
                rows.append(f"| {side}² JPEG ({len(pair[0]) // 1024} KiB) | {label} | {count} | {p50:.0f} | "
                            f"{percentile(walls[label], 0.95):.0f} | {baseline:.0f} | {p50 / baseline:.2f}× | "
                            f"{breakdown} |")
                if side == 2048:
                    verdict = "met" if p50 <= TARGET_2048_P50_MS else "NOT met"
                    rows.append(f"|  | {label} | target 2048² p50 ≤ {TARGET_2048_P50_MS:.0f} ms: {verdict} "
                                "| | | | | |")
    finally:
        for client in clients.values():
            client.close()
    return rows


def throughput(url: str, pair: tuple[bytes, bytes], concurrency: int, total: int) -> float:
    """images/s with `concurrency` clients, each on its own keep-alive connection."""
    clients = [httpx.Client() for _ in range(concurrency)]
    try:
        for client in clients:
            harmonize(client, url, pair)
        per_client = max(1, total // concurrency)
        with ThreadPoolExecutor(concurrency) as pool:
            start = time.perf_counter()
            list(pool.map(lambda c: [harmonize(c, url, pair) for _ in range(per_client)], clients))
            elapsed = time.perf_counter() - start
        return per_client * concurrency / elapsed
    finally:
        for client in clients:
            client.close()


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--weights", help="weights file (default: the shipped weights)")
    parser.add_argument("--throughput-side", type=int, default=1024, help="image side of the throughput runs")
    parser.add_argument("--against", help="another checkout whose server runs beside this one, alternating")
    args = parser.parse_args()
    env = {"S2CRNET_WEIGHTS": args.weights} if args.weights else {}

    load = os.getloadavg()
    out(f"# bench_service — {time.strftime('%Y-%m-%d %H:%M')} — {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} at start, Python {platform.python_version()}")
    trees = {"this tree": ROOT, **({"against": Path(args.against).resolve()} if args.against else {})}
    pair = real_square(args.throughput_side, 1)
    total = 16 if args.quick else 48
    on, off = {}, {}
    for batch, results in (("8", on), ("1", off)):
        servers = {label: Server({**env, "S2CRNET_MAX_BATCH_SIZE": batch}, tree) for label, tree in trees.items()}
        try:
            if batch == "8":
                out("\n## Latency at concurrency 1 (batching on, default settings)\n")
                out("\n".join(latency_table({label: s.url for label, s in servers.items()}, args.quick)))
            for c in CONCURRENCY:  # the servers alternate cell by cell
                for label, server in servers.items():
                    results[label, c] = throughput(server.url, pair, c, total)
        finally:
            for server in servers.values():
                server.stop()
    out(f"\n## Throughput, {args.throughput_side}² JPEG, images/s ({total} requests per cell)\n")
    out("| concurrency | server | batching on (max_batch_size 8) | batching off (max_batch_size 1) | on / off |")
    out("|---|---|---|---|---|")
    for c in CONCURRENCY:
        for label in trees:
            out(f"| {c} | {label} | {on[label, c]:.1f} | {off[label, c]:.1f} | {on[label, c] / off[label, c]:.2f}× |")
    out(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
