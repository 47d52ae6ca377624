"""How good masks without painting are, over HTTP against a real server, on the 18 iharmony4_val composites.

    nice -n 10 .venv/bin/python bench/eval_masks.py [--data ../shared/data/iharmony4_val] [--limit N]

For each composite at full size (the JPEG as it is), with its true mask's bounding box:
1. POST /mask with the true box (the server grows it by 10% on each side: model.segmentation.BOX_MARGIN), with
   that box grown by 10% first (so 21% in all), and without a box → IoU against the true mask (at 127).
2. POST /harmonize with mask=auto and the true box, and with the true mask file → MSE at 256² against the real
   image, the iHarmony4 protocol of model/training/evaluate.py; beside the composite's own MSE (do nothing).
   A 422 no_object (nothing found) counts as the composite itself: the client keeps what it had.
Bars (issue 31): mean IoU with the box ≥ 0.80; mean MSE with mask=auto ≤ 1.10 × with the true masks.
"""

import argparse
import io
import statistics
import sys
from pathlib import Path

import httpx
import numpy as np
from bench_service import Server, out
from PIL import Image

from model.iharmony import read_iharmony_split
from model.training.evaluate import _small, score

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "iharmony4_val"
IOU_BAR, MSE_RATIO_BAR = 0.80, 1.10


def true_box(truth: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(truth)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def grown(box, size, margin: float = 0.1) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return max(x0 - dx, 0), max(y0 - dy, 0), min(x1 + dx, size[0]), min(y1 + dy, size[1])


def iou(png: bytes, truth: np.ndarray) -> float:
    found = np.asarray(Image.open(io.BytesIO(png)).convert("L")) > 127
    return float((found & truth).sum() / max((found | truth).sum(), 1))


def post(client: httpx.Client, url: str, endpoint: str, files: dict, data: dict) -> httpx.Response:
    response = client.post(url + endpoint, files=files, data=data, timeout=600)
    if response.status_code not in (200, 422):
        raise RuntimeError(f"{endpoint} answered {response.status_code}: {response.text[:300]}")
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=VAL, help="an iHarmony4-format folder (default: iharmony4_val)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N composites")
    args = parser.parse_args()
    items = read_iharmony_split(args.data, "test")[: args.limit]
    server = Server({"S2CRNET_SEGMENTATION": "on", "S2CRNET_MAX_PIXELS": "100000000"})
    rows = []
    try:
        with httpx.Client() as client:
            for name, composite_path, mask_path, real_path in items:
                data = Path(composite_path).read_bytes()
                with Image.open(composite_path) as image:
                    composite = image.convert("RGB")
                truth_image = Image.open(mask_path).convert("L").resize(composite.size)
                truth = np.asarray(truth_image) > 127
                box = true_box(truth)
                files = {"composite": ("c.jpg", data, "image/jpeg")}
                row = {"name": Path(name).stem}
                for key, sent in (("iou_box", box), ("iou_box21", grown(box, composite.size)), ("iou_whole", None)):
                    response = post(client, server.url, "/mask", files, {"box": ",".join(map(str, sent))}
                                    if sent else {})
                    row[key] = iou(response.content, truth) if response.status_code == 200 else 0.0
                real = _small(Image.open(real_path).convert("RGB"))
                fg = _small(truth_image) > 127
                row["mse_nothing"] = score(_small(composite), real, fg)["mse"]
                with_true = post(client, server.url, "/harmonize",
                                 {**files, "mask": ("m.png", Path(mask_path).read_bytes(), "image/png")},
                                 {"format": "png"})
                row["mse_true"] = score(_small(Image.open(io.BytesIO(with_true.content)).convert("RGB")), real,
                                        fg)["mse"]
                auto = post(client, server.url, "/harmonize", files,
                            {"mask": "auto", "box": ",".join(map(str, box)), "format": "png"})
                row["no_object"] = auto.status_code == 422
                row["mse_auto"] = row["mse_nothing"] if row["no_object"] else score(
                    _small(Image.open(io.BytesIO(auto.content)).convert("RGB")), real, fg)["mse"]
                rows.append(row)
                out(f"{row['name']:<28} IoU box {row['iou_box']:.3f}  box+10% {row['iou_box21']:.3f}  whole "
                    f"{row['iou_whole']:.3f}   MSE true mask {row['mse_true']:7.1f}  mask=auto "
                    f"{row['mse_auto']:7.1f}{' (no_object)' if row['no_object'] else ''}  do nothing "
                    f"{row['mse_nothing']:7.1f}")
    finally:
        server.stop()
    mean = {key: statistics.fmean(r[key] for r in rows) for key in rows[0] if key not in ("name", "no_object")}
    median_box = statistics.median(r["iou_box"] for r in rows)
    ratio = mean["mse_auto"] / mean["mse_true"]
    out("")
    out(f"{len(rows)} composites of {args.data}")
    out(f"POST /mask mean IoU: true box {mean['iou_box']:.3f} (median {median_box:.3f}; bar ≥ {IOU_BAR}), true box "
        f"grown 10% by the client {mean['iou_box21']:.3f}, no box {mean['iou_whole']:.3f}")
    out(f"/harmonize mean MSE at 256²: true masks {mean['mse_true']:.1f}, mask=auto + true box {mean['mse_auto']:.1f} "
        f"(ratio {ratio:.3f}; bar ≤ {MSE_RATIO_BAR}), do nothing {mean['mse_nothing']:.1f}; "
        f"{sum(r['no_object'] for r in rows)} answered no_object")
    sys.exit(0 if mean["iou_box"] >= IOU_BAR and ratio <= MSE_RATIO_BAR else 1)


if __name__ == "__main__":
    main()
