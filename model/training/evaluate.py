"""Evaluate harmonization the iHarmony4 way, always beside two baselines, and draw before/after sheets.

    s2crnet eval ../shared/data/iharmony4_samples                 # table: ours vs do nothing vs Lab mean/std
    s2crnet eval ../shared/data/iharmony4_samples --json          # the same as JSON (with per-image rows)
    s2crnet eval ../shared/data/real_composites --sheet sheet.jpg # composites without ground truth: sheet only
    s2crnet eval ../shared/data/photos/manifest.csv --pairs 768   # held-out photos, recoloured as in training

Protocol: predict at full resolution; resize composite, prediction and real to 256×256 (bicubic) and the mask
too (thresholded at half); MSE over the image, fMSE over the foreground (Σ_fg err² / (3·N_fg)), PSNR, fPSNR
(data range 255, capped at 100 dB) and SSIM (scikit-image); "All" is the mean over images, plus one row per
iHarmony4 subset. "worse" is the share of images a method leaves more than 20% worse (MSE) than the composite:
a mean can hide the few it spoils.
"""

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps
from skimage import color
from skimage.metrics import structural_similarity
from tqdm import tqdm

from ..harmonizer import DEVICES, Harmonizer
from ..iharmony import SUBSETS, read_iharmony_labels, read_iharmony_split
from ..inputs import open_upright
from .data import VAL_SEED, HarmonyPairs, PhotoSource, lab_to_rgb

__all__ = ["add_arguments", "run", "main", "score", "lab_transfer", "find_items", "evaluate"]

EVAL_SIZE = 256
METHODS = ("do nothing", "Lab mean/std", "S2CRNet")
METRICS = ("mse", "fmse", "psnr", "fpsnr", "ssim")
PSNR_CAP = 100.0  # dB
WORSE_MARGIN = 1.2  # "worse": MSE above 1.2 × the composite's


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="iHarmony4-format folder, a folder with images/ and masks/, or a "
                   "photos manifest.csv (its held-out split, recoloured as in training: the validation pairs)")
    p.add_argument("--pairs", type=int, default=192, help="with a manifest: how many held-out pairs to score")
    p.add_argument("--split", default="test", help="iHarmony4 list to read: *_SPLIT.txt or SPLIT.txt")
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped weights)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--sheet", type=Path, default=None, help="write a before/after contact sheet (jpg/png)")
    p.add_argument("--full-res", action="store_true", help="also score at full resolution")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")


def squared_errors(pred: torch.Tensor, real: torch.Tensor, fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (B,): MSE over the image and fMSE over the foreground `fg` (B, 1, H, W bool), on the 0–255 scale
    from (B, 3, H, W) images in [0, 1]. The one rule behind `score` and training's validation."""
    err = ((pred - real) * 255).square()
    fg = fg.to(err.dtype)
    return err.mean((1, 2, 3)), (err * fg).sum((1, 2, 3)) / (3 * fg.sum((1, 2, 3)).clamp_min(1))


def score(pred: np.ndarray, real: np.ndarray, fg: np.ndarray) -> dict[str, float]:
    """pred, real: (H, W, 3) uint8; fg: (H, W) bool → metrics on the 0–255 scale."""
    as_batch = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).permute(2, 0, 1)[None] / 255
                for a in (pred, real)]
    mse, fmse = (float(v[0]) for v in squared_errors(*as_batch, torch.from_numpy(fg)[None, None]))
    return {"mse": mse, "fmse": fmse, "psnr": _psnr(mse), "fpsnr": _psnr(fmse),
            "ssim": float(structural_similarity(pred, real, channel_axis=2, data_range=255))}


def _psnr(mse: float) -> float:
    # Identical images would score infinity; the cap keeps means (an untouched held-out pair) and JSON finite.
    return min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse)) if mse > 0 else PSNR_CAP


def lab_transfer(composite: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Baseline: move the foreground's per-channel Lab mean/std to the background's."""
    if fg.all() or not fg.any():
        return composite.copy()
    lab = color.rgb2lab(composite)
    src, dst = lab[fg], lab[~fg]
    lab[fg] = (src - src.mean(0)) / (src.std(0) + 1e-6) * dst.std(0) + dst.mean(0)
    return np.rint(lab_to_rgb(lab) * 255).astype(np.uint8)


def find_items(root: Path, split: str = "test", pairs: int = 192) -> list[dict]:
    """Each item: name, composite, mask, real (None without ground truth), category; paths or images."""
    if root.suffix == ".csv":
        return held_out_items(root, pairs)
    if (root / "composite_images").is_dir():
        labels = read_iharmony_labels(root)
        return [{"name": n, "composite": c, "mask": m, "real": r, "category": labels.get(n)}
                for n, c, m, r in read_iharmony_split(root, split)]
    images, masks = root / "images", root / "masks"
    if not (images.is_dir() and masks.is_dir()):
        raise ValueError(f"{root} is neither an iHarmony4 folder (composite_images/, masks/, real_images/) "
                         f"nor a folder with images/ and masks/")
    by_stem = {p.stem: p for p in masks.iterdir()}
    return [{"name": p.name, "composite": p, "mask": by_stem[p.stem], "real": None, "category": None}
            for p in sorted(images.iterdir()) if p.stem in by_stem]


def held_out_items(manifest: Path, count: int) -> list[dict]:
    """The first `count` validation pairs training scores (same seed, same generator) at 256²."""
    # Only .pair() is used (images, not the network's tensors), so no categories or thumbnail size are needed.
    pairs = HarmonyPairs([PhotoSource(manifest, "val")], categories=(), thumb=0, size=EVAL_SIZE, seed=VAL_SEED,
                         length=count)
    items = []
    for i in range(count):
        pair = pairs.pair(i)
        items.append({"name": f"held-out {i:04d}", "composite": Image.fromarray(pair.composite),
                      "mask": Image.fromarray(pair.mask), "real": Image.fromarray(pair.real),
                      "category": pair.category})
    return items


def _small(im: Image.Image) -> np.ndarray:
    return np.asarray(im.resize((EVAL_SIZE, EVAL_SIZE), Image.Resampling.BICUBIC))


def evaluate(harmonizer: Harmonizer, items: list[dict], full_res: bool = False, keep_images: bool = False):
    """Score every item; returns (per-image rows, images for a sheet when keep_images)."""
    rows, sheet_rows = [], []
    semantic = harmonizer.config.semantic
    for item in tqdm(items, desc="eval", unit="img", file=sys.stderr):
        composite, mask = open_upright(item["composite"], "RGB"), open_upright(item["mask"], "L")
        if mask.size != composite.size:
            mask = mask.resize(composite.size, Image.Resampling.BILINEAR)
        category = item["category"] if semantic and item["category"] in harmonizer.config.categories else None
        ours = harmonizer.harmonize(composite, mask, category=category)
        row = {"name": item["name"]}
        if item["real"] is not None:
            real = open_upright(item["real"], "RGB")
            comp_s, ours_s, real_s = _small(composite), _small(ours), _small(real)
            fg = _small(mask) > 127
            for method, pred in zip(METHODS, (comp_s, lab_transfer(comp_s, fg), ours_s), strict=True):
                row[method] = score(pred, real_s, fg)
            if full_res:
                fg_full = np.asarray(mask) > 127
                row["S2CRNet full-res"] = score(np.asarray(ours), np.asarray(real), fg_full)
                row["do nothing full-res"] = score(np.asarray(composite), np.asarray(real), fg_full)
            rows.append(row)
        if keep_images:
            sheet_rows.append([outline_mask(composite, mask), ours] + ([real] if item["real"] is not None else []))
    return rows, sheet_rows


def _made_worse(row: dict, method: str) -> bool:
    composite = "do nothing full-res" if method.endswith("full-res") else "do nothing"
    return row[method]["mse"] > WORSE_MARGIN * row[composite]["mse"]


def _summarise_method(members: list[dict], method: str) -> dict:
    means = {k: float(np.mean([r[method][k] for r in members])) for k in METRICS}
    return {**means, "worse": float(np.mean([_made_worse(r, method) for r in members]))}


def summarise(rows: list[dict]) -> dict:
    """Mean of every metric per method, and the share of images it made worse, for All and for each iHarmony4
    subset present."""
    groups = defaultdict(list)
    for row in rows:
        groups["All"].append(row)
        subset = SUBSETS.get(row["name"][:1])
        if subset:
            groups[subset].append(row)
    summary = {}
    for group, members in groups.items():
        methods = [m for m in members[0] if m != "name"]
        summary[group] = {"n": len(members), **{m: _summarise_method(members, m) for m in methods}}
    return summary


def format_table(summary: dict) -> str:
    lines = [f"{'subset':<11}{'n':>4}  {'method':<22}{'MSE':>9}{'fMSE':>10}{'PSNR':>8}{'fPSNR':>8}{'SSIM':>7}"
             f"{'worse':>7}"]
    for group, data in summary.items():
        for method, m in data.items():
            if method == "n":
                continue
            lines.append(f"{group:<11}{data['n']:>4}  {method:<22}{m['mse']:>9.1f}{m['fmse']:>10.1f}"
                         f"{m['psnr']:>8.2f}{m['fpsnr']:>8.2f}{m['ssim']:>7.3f}{m['worse']:>7.0%}")
    return "\n".join(lines)


def outline_mask(image: Image.Image, mask: Image.Image, width: int = 3) -> Image.Image:
    """A copy of the image, at most 512 pixels a side (a sheet cell's size), with the mask's edge in yellow."""
    image = ImageOps.contain(image.convert("RGB"), (512, 512))
    binary = mask.resize(image.size, Image.Resampling.BILINEAR).point(lambda v: 255 if v > 127 else 0)
    edge = ImageChops.difference(binary.filter(ImageFilter.MaxFilter(width)),
                                 binary.filter(ImageFilter.MinFilter(width)))
    image.paste((255, 220, 0), (0, 0, *image.size), edge)
    return image


def draw_sheet(rows: list[list[Image.Image]], path: Path, cell: int = 256) -> None:
    """One row per image: composite with the mask outlined | ours | real (when known), each fitted into a
    cell × cell box."""
    columns = max(len(r) for r in rows)
    header = 24
    sheet = Image.new("RGB", (columns * cell, header + len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(("composite (mask outlined)", "S2CRNet", "real")[:columns]):
        draw.text((i * cell + 8, 6), title, fill="black")
    for r, images in enumerate(rows):
        for c, im in enumerate(images):
            thumb = ImageOps.contain(im.convert("RGB"), (cell - 4, cell - 4))
            sheet.paste(thumb, (c * cell + 2, header + r * cell + 2))
    sheet.save(path, quality=90)


def run(args) -> dict:
    items = find_items(args.dataset, args.split, args.pairs)[: args.limit]
    if not items:
        raise ValueError(f"no composites found in {args.dataset}")
    harmonizer = Harmonizer.load(args.weights, device=args.device)
    rows, sheet_rows = evaluate(harmonizer, items, args.full_res, keep_images=args.sheet is not None)
    report = {"dataset": str(args.dataset), "weights": str(harmonizer.weights_path), "sha256": harmonizer.sha256,
              "images": len(items), "summary": summarise(rows) if rows else {}, "per_image": rows}
    if args.sheet is not None:
        draw_sheet(sheet_rows, args.sheet)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write((format_table(report["summary"]) if rows else
                          f"{len(items)} composites without ground truth: nothing to score") + "\n")
        if args.sheet is not None:
            sys.stdout.write(f"sheet written to {args.sheet}\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
