"""What finding the mask costs, beside harmonizing with a mask file, over HTTP against one real server.

    nice -n 10 .venv/bin/python bench/bench_mask.py [--quick]

For 1024², 2048² and 4096² JPEG crops of an iHarmony4 sample (bench_service.real_square), at concurrency 1,
the same run: POST /harmonize with the mask file (the baseline), POST /mask with the object's box, and POST
/harmonize with mask=auto and that box; p50 wall times and the server's `segment` stage (Server-Timing, p50).
The network always sees 320×320, so the segment stage grows only with the resampling in and out of it.
"""

import argparse
import io
import platform
import re
import statistics
import time

import httpx
from bench_service import SIDES, Server, out, real_square
from PIL import Image


def timed(client: httpx.Client, url: str, endpoint: str, files: dict, data: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    response = client.post(url + endpoint, files=files, data=data, timeout=600)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{endpoint} answered {response.status_code}: {response.text[:300]}")
    return elapsed, {k: float(v) for k, v in re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    out(f"# bench_mask: {platform.processor() or platform.machine()}, {repeats} repeats, concurrency 1")
    server = Server({"S2CRNET_SEGMENTATION": "on"})
    try:
        out("| size | /harmonize, mask file (p50 ms) | POST /mask (p50 ms) | segment stage (p50 ms) | "
            "/harmonize mask=auto (p50 ms) | auto ÷ mask file |")
        out("|---|---|---|---|---|---|")
        with httpx.Client() as client:
            for side in SIDES:
                jpeg, mask_png = real_square(side)
                box = ",".join(map(str, Image.open(io.BytesIO(mask_png)).getbbox()))
                composite = {"composite": ("c.jpg", jpeg, "image/jpeg")}
                cells: dict[str, list[float]] = {"file": [], "mask": [], "segment": [], "auto": []}
                for _ in range(repeats):  # interleaved, so that load on a shared machine hits all three alike
                    ms, _ = timed(client, server.url, "/harmonize",
                                  {**composite, "mask": ("m.png", mask_png, "image/png")}, {})
                    cells["file"].append(ms)
                    ms, stages = timed(client, server.url, "/mask", composite, {"box": box})
                    cells["mask"].append(ms)
                    cells["segment"].append(stages["segment"])
                    ms, _ = timed(client, server.url, "/harmonize", composite, {"mask": "auto", "box": box})
                    cells["auto"].append(ms)
                p50 = {key: statistics.median(values) for key, values in cells.items()}
                out(f"| {side}² | {p50['file']:.0f} | {p50['mask']:.0f} | {p50['segment']:.0f} | {p50['auto']:.0f} | "
                    f"{p50['auto'] / p50['file']:.2f}× |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
