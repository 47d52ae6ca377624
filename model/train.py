"""Train S²CRNet from scratch on recoloured real photos (and/or iHarmony4), on a CPU or a GPU.

The defaults are the from-scratch recipe that fits 2 hours on 2 CPU cores (about 1.8 steps/s; MODEL_CARD.md has its
quality, and the longer three-stage recipe of the shipped weights):

    s2crnet train --photos ../shared/data/photos/manifest.csv --threads 2 --run-dir runs/mine

Same as `python -m model.train ...`. Interrupted? Add `--resume`: it continues exactly from the last checkpoint in
--run-dir (model, optimizer, schedule, data order). With iHarmony4: `--iharmony /data/HAdobe5k --iharmony ...`.
"""

import argparse
import copy
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .backbones import list_backbones
from .config import ModelConfig
from .data import UNTOUCHED_SHARE, VAL_SEED, HarmonyPairs, IHarmonySource, PhotoSource
from .harmonizer import resolve_device, save_weights
from .network import S2CRNet, count_parameters, recompute_batch_norm

__all__ = ["add_arguments", "run", "main", "validation_batches"]

log = logging.getLogger(__name__)
BATCH_NORM_SAMPLES = 256  # training pairs that measure the weight average's BatchNorm statistics


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--photos", type=Path, action="append", default=[],
                   help="photo manifest.csv (recoloured on the fly); repeatable")
    g.add_argument("--iharmony", type=Path, action="append", default=[],
                   help="iHarmony4-format folder, its *_train.txt split; repeatable")
    g.add_argument("--size", type=int, default=192, help="training image side: the loss is computed at size²")
    g.add_argument("--untouched-share", type=float, default=UNTOUCHED_SHARE,
                   help="share of training photos left as they are (validation always uses the default)")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="squeezenet", choices=list_backbones())
    g.add_argument("--thumb", type=int, default=ModelConfig.thumb)
    g.add_argument("--stages", type=int, default=ModelConfig.stages)
    g.add_argument("--pieces", type=int, default=ModelConfig.pieces)
    g.add_argument("--semantic", action="store_true", help="Semantic-CRM: use the foreground category")
    g.add_argument("--norm", default="batch", choices=["batch", "none"], help="'none' = the paper's backbone")
    g.add_argument("--no-color-stats", dest="color_stats", action="store_false",
                   help="the paper's embeddings, without appended colour statistics")
    g.add_argument("--head-hidden", type=int, default=ModelConfig.head_hidden,
                   help="width of a hidden layer beside each CRM's linear maps (0 = the paper's CRM)")
    g.add_argument("--no-seam-stats", dest="seam_stats", action="store_false",
                   help="without the statistics of how colours jump across the mask's edge (the paper has none)")
    g.add_argument("--init", type=Path, default=None,
                   help="start from these weights; parameters the file lacks (e.g. a new --head-hidden) start fresh")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=24)
    g.add_argument("--steps", type=int, default=12000)
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup", type=int, default=500, help="linear warm-up steps before the cosine decay")
    g.add_argument("--mismatch-scale", type=float, default=0.0,
                   help="weigh each image by 1 / (its composite's relative L1 + this), in 0-1 pixel units "
                        "(0 = the paper's equal weights)")
    g.add_argument("--gan-weight", type=float, default=0.0, help="the paper's LSGAN term (0.01 in the paper)")
    g.add_argument("--ema", type=float, default=0.999,
                   help="validate and save an exponential moving average of the weights with this decay (0 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--workers", type=int, default=1, help="data-generating processes")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all cores; 1 keeps a shared machine responsive)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None,
                   help="best weights (by validation MSE) are written here (default: RUN_DIR/best.pt; the shipped "
                        "weights are only replaced on purpose)")
    g.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="checkpoints and log")
    g.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    g.add_argument("--val-every", type=int, default=1000, help="steps between validations")
    g.add_argument("--val-samples", type=int, default=768, help="fixed held-out pairs scored at each validation")
    g.add_argument("--checkpoint-minutes", type=float, default=3.0)
    g.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this wall time")


def get_lr(step: int, args) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def masked_l1_per_image(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper's relative L1 of each image: Σ|ŷ − y|·m / Σm."""
    return ((pred - real).abs() * mask).sum((1, 2, 3)) / (3 * mask.sum((1, 2, 3)).clamp_min(1.0))


def masked_l1(pred: torch.Tensor, real: torch.Tensor, mask: torch.Tensor,
              image_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's loss: the relative L1 averaged over the batch (weighted if given)."""
    per_image = masked_l1_per_image(pred, real, mask)
    return per_image.mean() if image_weights is None else (per_image * image_weights).mean()


def mismatch_weights(composite: torch.Tensor, real: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-image loss weights ∝ 1 / (the composite's own relative L1 + scale), averaging 1 over the batch.

    An image then counts by the share of its own mismatch left, as the "no image made more than 20% worse" bar
    does: a mild mismatch weighs as much as a large one instead of a few times less. `scale` keeps untouched
    pairs (mismatch 0) from dominating.
    """
    weights = 1.0 / (masked_l1_per_image(composite, real, mask) + scale)
    return weights / weights.mean()


class Discriminator(nn.Module):
    """A small patch discriminator on (image, mask) for the optional LSGAN term."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, ch = [], 4
        for out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, 1, 3, 1, 1))

    def forward(self, image, mask):
        return self.net(torch.cat([image, mask], 1))


def load_initial_weights(net: S2CRNet, path: Path) -> None:
    """--init: start from trained weights. Parameters the file lacks keep their fresh init; a weight matrix that
    only gained input columns (a wider embedding, e.g. seam_stats) keeps its trained columns and gets zero ones,
    so the network computes exactly what the file's network did until training moves the new parts."""
    initial = torch.load(path, map_location="cpu", weights_only=True)["model"]
    own = net.state_dict()
    unexpected = [name for name in initial if name not in own]
    if unexpected:
        raise ValueError(f"--init {path} has parameters this model lacks: {', '.join(unexpected)}")
    widened = []
    for name, value in initial.items():
        shape = own[name].shape
        if value.shape == shape:
            continue
        if value.ndim != 2 or value.shape[0] != shape[0] or value.shape[1] > shape[1]:
            raise ValueError(f"--init {path}: {name} is {tuple(value.shape)} there, {tuple(shape)} here")
        initial[name] = torch.cat([value, value.new_zeros(shape[0], shape[1] - value.shape[1])], 1)
        widened.append(name)
    missing, _ = net.load_state_dict(initial, strict=False)
    log.info("initialised from %s; fresh parameters: %s; widened with zero columns: %s",
             path, ", ".join(missing) or "none", ", ".join(widened) or "none")


def training_sources(args) -> list:
    sources = [PhotoSource(m, "train", untouched_share=args.untouched_share) for m in args.photos]
    sources += [IHarmonySource(root, "train") for root in args.iharmony]
    if not sources:
        raise ValueError("no training data: give --photos MANIFEST and/or --iharmony DIR")
    return sources


def validation_batches(photos: list[Path], iharmony: list[Path], config: ModelConfig, size: int,
                       count: int) -> list[dict]:
    """The fixed held-out pairs, in batches of 32: the photos' validation split; iHarmony4 has none of its own, so
    without photos its test lists (which are `s2crnet eval`'s)."""
    sources = [PhotoSource(m, "val", untouched_share=UNTOUCHED_SHARE) for m in photos]
    sources = sources or [IHarmonySource(root, "test") for root in iharmony]
    if not sources:
        raise ValueError("no validation data: give --photos MANIFEST and/or --iharmony DIR")
    pairs = HarmonyPairs(sources, config.categories, config.thumb, size, VAL_SEED, count)
    return list(torch.utils.data.DataLoader(pairs, batch_size=32))


def batch_norm_thumbnails(sources: list, config: ModelConfig, size: int, seed: int) -> list[torch.Tensor]:
    """Fixed training thumbnails on which averaged weights get BatchNorm statistics of their own
    (model.network.recompute_batch_norm)."""
    pairs = HarmonyPairs(sources, config.categories, config.thumb, size, seed, BATCH_NORM_SAMPLES)
    return [batch["thumbs"] for batch in torch.utils.data.DataLoader(pairs, batch_size=32)]


@torch.no_grad()
def estimate_quality(net: S2CRNet, val: list[dict], device) -> dict[str, float]:
    """MSE / fMSE (0–255 scale) of the last stage and of doing nothing, on the fixed validation pairs."""
    net.eval()
    sums = np.zeros(4)
    for batch in val:
        batch = {k: v.to(device) for k, v in batch.items()}
        pred = net(batch["thumbs"], batch["composite"], batch["mask"], batch["category"])[-1]
        fg = (batch["mask"] > 0.5).float()
        for i, image in enumerate((pred, batch["composite"])):
            err = ((image - batch["real"]) * 255) ** 2
            sums[i] += err.mean((1, 2, 3)).sum().item()
            sums[2 + i] += ((err * fg).sum((1, 2, 3)) / (3 * fg.sum((1, 2, 3)).clamp_min(1))).sum().item()
    net.train()
    n = sum(len(b["thumbs"]) for b in val)
    mse, base_mse, fmse, base_fmse = (float(v) for v in sums / n)  # plain floats: checkpoints load weights_only
    return {"mse": mse, "fmse": fmse, "baseline_mse": base_mse, "baseline_fmse": base_fmse}


def run(args) -> dict:
    started = time.monotonic()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.out = args.out or args.run_dir / "best.pt"
    last_path = args.run_dir / "last.pt"

    # 1. Model and optimiser, rebuilt from the checkpoint's config when resuming
    config = ModelConfig(backbone=args.backbone, thumb=args.thumb, pieces=args.pieces, stages=args.stages,
                         semantic=args.semantic, norm=args.norm, color_stats=args.color_stats,
                         head_hidden=args.head_hidden, seam_stats=args.seam_stats)
    checkpoint = None
    if args.resume:
        if not last_path.exists():
            raise ValueError(f"--resume: no checkpoint at {last_path}")
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=True)
        config = ModelConfig.from_dict(checkpoint["model_args"])
    net = S2CRNet(config)
    if args.init is not None and checkpoint is None:
        load_initial_weights(net, args.init)
    net = net.to(device)
    # use_buffers averages BatchNorm statistics too; they don't fit the averaged weights, so validate() measures
    # fresh ones on a copy and leaves these for an exact --resume.
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    disc = d_optimizer = None
    if args.gan_weight > 0:
        disc = Discriminator().to(device)
        d_optimizer = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.999))
    step, best, earlier_seconds = 0, {"mse": float("inf")}, 0.0
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if disc is not None and "discriminator" in checkpoint:
            disc.load_state_dict(checkpoint["discriminator"])
            d_optimizer.load_state_dict(checkpoint["d_optimizer"])
        if ema is not None and "ema" in checkpoint:
            ema.load_state_dict(checkpoint["ema"])
        step, best = checkpoint["step"], checkpoint["best_val"]
        earlier_seconds = checkpoint.get("train_seconds", 0.0)  # wall time of the legs before this one
        torch.set_rng_state(checkpoint["torch_rng"])
        log.info("resumed from %s at step %d", last_path, step)
    log.info("model %s, %d parameters, device %s", config, count_parameters(net), device)

    # 2. Data: a deterministic stream of samples indexed by position, so resuming picks up the same order
    train_set = HarmonyPairs(training_sources(args), config.categories, config.thumb, args.size,
                             args.seed, args.steps * args.batch_size)
    val = validation_batches(args.photos, args.iharmony, config, args.size, args.val_samples)
    norm_thumbs = batch_norm_thumbnails(train_set.sources, config, args.size, args.seed + 1) if ema else []
    remaining = range(step * args.batch_size, len(train_set))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_set, remaining), batch_size=args.batch_size,
                                         num_workers=args.workers, prefetch_factor=4 if args.workers else None,
                                         persistent_workers=False, drop_last=True)

    def train_seconds() -> float:
        return earlier_seconds + time.monotonic() - started

    def save_checkpoint():
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "model_args": config.to_dict(),
                 "step": step, "best_val": best, "torch_rng": torch.get_rng_state(), "args": _plain(vars(args)),
                 "train_seconds": train_seconds()}
        if disc is not None:
            state |= {"discriminator": disc.state_dict(), "d_optimizer": d_optimizer.state_dict()}
        if ema is not None:
            state["ema"] = ema.state_dict()
        torch.save(state, last_path.with_suffix(".tmp"))
        last_path.with_suffix(".tmp").replace(last_path)

    def validate():
        nonlocal best
        scored = net
        if ema is not None:
            scored = copy.deepcopy(ema.module)
            recompute_batch_norm(scored, norm_thumbs)
        quality = estimate_quality(scored, val, device)
        line = (f"step {step}: val MSE {quality['mse']:.1f} (do nothing {quality['baseline_mse']:.1f}), "
                f"fMSE {quality['fmse']:.1f} (do nothing {quality['baseline_fmse']:.1f})")
        if quality["mse"] < best["mse"]:
            best = {**quality, "step": step}
            meta = {"trained_steps": step, "train_minutes": round(train_seconds() / 60, 1),
                    "validation": best, "command": " ".join(sys.argv),
                    "train_args": _plain(vars(args))}
            save_weights(args.out, scored, meta)
            line += f" — best, saved {args.out}"
        tqdm.write(line)
        with (args.run_dir / "log.txt").open("a") as f:
            f.write(line + "\n")

    # 3. The loop
    net.train()
    last_save = time.monotonic()
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, args)
        outputs = net(batch["thumbs"], batch["composite"], batch["mask"], batch["category"])
        weights = None
        if args.mismatch_scale:
            weights = mismatch_weights(batch["composite"], batch["real"], batch["mask"], args.mismatch_scale)
        loss = sum(masked_l1(out, batch["real"], batch["mask"], weights) for out in outputs)
        if disc is not None:
            fake_score = disc(outputs[-1], batch["mask"])
            loss = loss + args.gan_weight * ((fake_score - 1) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(net)
        if disc is not None:
            d_loss = ((disc(batch["real"], batch["mask"]) - 1) ** 2).mean() + \
                     (disc(outputs[-1].detach(), batch["mask"]) ** 2).mean()
            d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{get_lr(step, args):.1e}")
        if step % args.val_every == 0 or step == args.steps:
            validate()
        out_of_time = args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60
        if time.monotonic() - last_save > args.checkpoint_minutes * 60 or step == args.steps or out_of_time:
            save_checkpoint()
            last_save = time.monotonic()
        if out_of_time:
            tqdm.write(f"stopping after {args.max_minutes} minutes at step {step}; continue with --resume")
            break
    bar.close()
    return best


def _plain(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
            for k, v in d.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
