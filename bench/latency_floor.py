"""How fast can POST /harmonize be on this machine at best? The stages no schedule can remove, measured in one run.

    nice -n 15 .venv/bin/python bench/latency_floor.py [--runtime torch|onnx] [--weights PATH] [--repeats N]

For each side (1024², 2048², 4096² JPEG) it measures, interleaved so that they see the same load:
- baseline: an in-process Pillow decode + encode (q95) of the JPEG — the denominator of the latency targets;
- transport: a POST of the same multipart form to a FastAPI endpoint under uvicorn that reads both parts and
  answers the composite's bytes unchanged (upload, multipart parsing and download; no image work);
- forward: the curve prediction from ready thumbnails at batch 1 (the model alone);
- decode, render (LUT through the mask) and encode of the full-size image.
The floor is transport + max(decode, forward) + render + encode: the full-size decode perfectly overlapped with
the prediction, nothing else on the path. It prints the floor's ratio to the baseline beside the targets.
"""

import argparse
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import SIDES, decode_encode_ms, out, real_square, socket_port  # noqa: E402

from model import Harmonizer  # noqa: E402

TARGETS = {1024: 1.5, 2048: 1.2, 4096: 1.0}  # issue 20: p50 over HTTP / in-process Pillow decode + encode


def echo_app():
    from fastapi import FastAPI, Response, UploadFile

    app = FastAPI()

    @app.post("/echo")
    async def echo(composite: UploadFile, mask: UploadFile) -> Response:
        data = await composite.read()
        await mask.read()
        return Response(data, media_type="image/jpeg")

    return app


def serve_echo(port: int) -> None:
    import uvicorn

    uvicorn.run(echo_app(), host="127.0.0.1", port=port, log_level="warning")


def start_echo() -> tuple[subprocess.Popen, str]:
    with socket_port() as port:
        url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(port)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/docs", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the echo server did not start within 60 s")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def measure(harmonizer: Harmonizer, client: httpx.Client, url: str, side: int, repeats: int) -> dict[str, float]:
    jpeg, png = real_square(side)
    files = {"composite": ("comp.jpg", jpeg, "image/jpeg"), "mask": ("mask.png", png, "image/png")}
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    mask = Image.open(io.BytesIO(png))
    mask.load()
    _, _, thumbs = harmonizer.prepare(image, mask)
    curves = harmonizer.curves_from_thumbnails([thumbs])[0]
    rendered = harmonizer.render(image, mask, curves)

    def decode():
        Image.open(io.BytesIO(jpeg)).load()

    def encode():
        rendered.save(io.BytesIO(), "JPEG", quality=95)

    def transport():
        response = client.post(url + "/echo", files=files, timeout=120)
        if response.status_code != 200 or len(response.content) != len(jpeg):
            raise RuntimeError(f"echo answered {response.status_code}")

    stages = {"baseline": lambda: decode_encode_ms(jpeg, 1), "transport": transport, "decode": decode,
              "forward": lambda: harmonizer.curves_from_thumbnails([thumbs]),
              "render": lambda: harmonizer.render(image, mask, curves), "encode": encode}
    for fn in stages.values():
        fn()  # warm-up
    times = {name: [] for name in stages}
    for _ in range(repeats):
        for name, fn in stages.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped weights")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--serve-echo", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return
    harmonizer = Harmonizer.load(args.weights, runtime=args.runtime)
    process, url = start_echo()
    out(f"runtime {args.runtime}, weights {args.weights or 'shipped'}, medians of {args.repeats} (fewer for "
          "larger sides), stages interleaved")
    out("| image | baseline (Pillow decode+encode) | transport | decode | forward | render | encode | "
          "floor | floor / baseline | target |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    try:
        with httpx.Client() as client:
            for side in SIDES:
                t = measure(harmonizer, client, url, side, max(3, args.repeats * 1024 // side))
                floor = t["transport"] + max(t["decode"], t["forward"]) + t["render"] + t["encode"]
                out(f"| {side}² | {t['baseline']:.1f} | {t['transport']:.1f} | {t['decode']:.1f} | "
                      f"{t['forward']:.1f} | {t['render']:.1f} | {t['encode']:.1f} | {floor:.1f} | "
                      f"{floor / t['baseline']:.2f}× | ≤ {TARGETS[side]}× |")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
