"""PyTorch vs onnxruntime on the CPU, in the same run: curve prediction and the service end to end.

    nice -n 15 .venv/bin/python bench/bench_runtime.py [--quick] [--weights PATH]

Prints two tables (markdown, for docs/BENCHMARKS.md):
1. curve prediction per image (thumbnails → knots, the forward pass alone) at batch 1 and 8, with 1 and 2
   intra-op threads, each runtime timed in turns on the same thumbnails of the real samples;
2. POST /harmonize p50 of a 2048² JPEG with a server per runtime (S2CRNET_RUNTIME=torch / onnx).
The weights are copied to a temporary folder and exported there (`s2crnet export`), so the checkout's own
model/weights/ is left as it is.
"""

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from bench_service import Server, harmonize, percentile, real_square  # noqa: E402
from PIL import Image  # noqa: E402

from model import DEFAULT_WEIGHTS, Harmonizer  # noqa: E402
from model.onnx_export import export_onnx  # noqa: E402

RUNTIMES = ("torch", "onnx")


def thumbnails(harmonizer: Harmonizer, count: int) -> np.ndarray:
    """(count, 8, S, S) of the real samples at 1024² (the thumbnails do not depend on the size much)."""
    out = []
    for i in range(count):
        jpeg, png = real_square(1024, i)
        image, mask = (Image.open(io.BytesIO(data)) for data in (jpeg, png))
        out.append(harmonizer.prepare(image.convert("RGB"), mask.convert("L"))[2])
    return np.stack(out)


def prediction_table(weights: Path, quick: bool) -> list[str]:
    loaded = {runtime: Harmonizer.load(weights, "cpu", runtime=runtime) for runtime in RUNTIMES}
    thumbs = thumbnails(loaded["torch"], 8)
    index = np.full(8, loaded["torch"].config.category_index(None), np.int64)
    rows = ["| threads | batch | torch ms/image | onnxruntime ms/image | speed-up |", "|---|---|---|---|---|"]
    for threads in (1, 2):
        for harmonizer in loaded.values():
            harmonizer.set_threads(threads)
        for batch in (1, 8):
            repeats = (5 if quick else 20) if batch == 1 else (2 if quick else 6)
            times = {runtime: [] for runtime in RUNTIMES}
            for runtime in RUNTIMES:  # warm-up
                loaded[runtime].predictor.knots(thumbs[:batch], index[:batch])
            for _ in range(repeats):
                for runtime in RUNTIMES:  # in turns, so a busy neighbour costs both alike
                    start = time.perf_counter()
                    loaded[runtime].predictor.knots(thumbs[:batch], index[:batch])
                    times[runtime].append((time.perf_counter() - start) * 1000 / batch)
            torch_ms, onnx_ms = (statistics.median(times[r]) for r in RUNTIMES)
            rows.append(f"| {threads} | {batch} | {torch_ms:.1f} | {onnx_ms:.1f} | {torch_ms / onnx_ms:.2f}× |")
    return rows


def service_table(weights: Path, quick: bool) -> list[str]:
    pair = real_square(2048)
    requests = 6 if quick else 20
    rows = ["| runtime | requests | /harmonize 2048² p50 ms | p95 ms | server infer p50 ms |", "|---|---|---|---|---|"]
    for runtime in RUNTIMES:
        server = Server({"S2CRNET_WEIGHTS": str(weights), "S2CRNET_RUNTIME": runtime, "S2CRNET_DEVICE": "cpu"})
        try:
            info = httpx.get(server.url + "/info", timeout=30).json()["model"]
            assert info["runtime"] == runtime, info
            with httpx.Client() as client:
                harmonize(client, server.url, pair)  # warm-up
                results = [harmonize(client, server.url, pair) for _ in range(requests)]
        finally:
            server.stop()
        walls = [wall for wall, _ in results]
        infer = [stages.get("infer", 0.0) for _, stages in results]
        rows.append(f"| {runtime} | {requests} | {percentile(walls, 0.5):.0f} | {percentile(walls, 0.95):.0f} | "
                    f"{percentile(infer, 0.5):.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / args.weights.name
        shutil.copyfile(args.weights, weights)
        export_onnx(weights, weights.with_suffix(".onnx"))
        print(f"CPU cores: {os.cpu_count()}, weights {args.weights.name}\n")  # noqa: T201
        print("\n".join(prediction_table(weights, args.quick)) + "\n")  # noqa: T201
        print("\n".join(service_table(weights, args.quick)))  # noqa: T201


if __name__ == "__main__":
    main()
