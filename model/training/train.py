"""Train S²CRNet on recoloured real photos (and/or iHarmony4 training lists), on a CPU or a GPU.

The shipped weights come from a named recipe (model/training/recipes.py; the model card gives its wall time):

    s2crnet train --recipe lite0-real --run-dir runs/lite0-real           # one leg (at most its --max-minutes)
    s2crnet train --recipe lite0-real --run-dir runs/lite0-real --resume  # the next leg continues exactly

Or spell the options out: `s2crnet train --photos ../shared/data/photos/manifest.csv --val-real
../shared/data/iharmony4_val --backbone efficientnet_lite0 --trainable-blocks 0 ...` (same as
`python -m model.training.train`). `--resume` continues from RUN_DIR/last.pt: model, optimizer, schedule and data
order. Validation scores the fixed held-out pairs and, with `--val-real`, real composites; the best checkpoint
(`selection_key`) is written to --out.
"""

import argparse
import copy
import logging
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..backbones import list_backbones
from ..config import ModelConfig
from ..harmonizer import DEVICES, resolve_device
from ..network import S2CRNet, count_parameters
from ..weights import load_initial_weights, save_weights
from .batch_norm import batch_norm_thumbnails, recompute_batch_norm
from .data import UNTOUCHED_SHARE, HarmonyPairs, IHarmonySource, PhotoSource, validation_batches
from .looks import FilmLooks
from .losses import PER_IMAGE_LOSSES, Discriminator, harm, masked_loss, mismatch_weights
from .pretrained import load_imagenet_weights
from .quality import RealTriples, estimate_quality, selection_key
from .recipes import RECIPES, recipe_defaults

__all__ = ["add_arguments", "main", "parse_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="start from a named recipe's options (model/training/recipes.py); flags given here win")
    g = p.add_argument_group("data")
    g.add_argument("--photos", type=Path, action="append", default=[],
                   help="photo manifest.csv (recoloured on the fly); repeatable")
    g.add_argument("--iharmony", type=Path, action="append", default=[],
                   help="iHarmony4-format folder, its *_train.txt split; repeatable")
    g.add_argument("--size", type=int, default=192, help="training image side: the loss is computed at size²")
    g.add_argument("--untouched-share", type=float, default=UNTOUCHED_SHARE,
                   help="share of training photos left as they are (validation always uses the default)")
    g.add_argument("--same-category-share", type=float, default=0.0,
                   help="share of pairs whose colour donor is an object of the same category (as HFlickr/HCOCO)")
    g.add_argument("--thing-share", type=float, default=0.0,
                   help="share of pairs whose recoloured photo is drawn from the thing classes (person, animal, "
                        "vehicle, other, unknown) rather than from all photos alike")
    g.add_argument("--similar-share", type=float, default=0.0,
                   help="share of pairs whose colour donor is an object of similar mean colour in another photo "
                        "(a stand-in for the same kind of object under other light, as iHarmony4's donors were)")
    g.add_argument("--histogram-share", type=float, default=0.0,
                   help="share of statistics transfers that match the donor's whole per-channel histogram "
                        "instead of its mean and spread")
    g.add_argument("--same-kind-share", type=float, default=0.0,
                   help="share of pairs whose colour donor is another object of the same kind (ImageNet synset from "
                        "the file name, else the ImageNet classifier's label of the object crop), as HFlickr/HCOCO")
    g.add_argument("--looks", type=Path, default=None,
                   help="film and camera 3D LUTs (../shared/data/luts/film_luts.npz) for --render-share")
    g.add_argument("--render-share", type=float, default=0.0,
                   help="share of pairs made as HAdobe5k/Hday2night were: the object pasted from another rendering "
                        "of the same photo (film look, exposure, white balance, time of day); needs --looks")
    g.add_argument("--source-weights", type=float, nargs="+", default=None,
                   help="how often each --photos source is drawn, in their order (default: alike)")
    g.add_argument("--val-real", type=Path, action="append", default=[],
                   help="iHarmony4-format folder of real triples to validate and choose checkpoints on "
                        "(never trained on); repeatable")
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
    g.add_argument("--trainable-blocks", type=int, default=None,
                   help="efficientnet_lite0: train only the last N ImageNet layers (0 = frozen; default: all)")
    g.add_argument("--backbone-lr-scale", type=float, default=1.0,
                   help="learning rate of the ImageNet layers relative to --lr")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="efficientnet_lite0 from random weights instead of ImageNet's")
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
    g.add_argument("--loss", default="l1", choices=sorted(PER_IMAGE_LOSSES),
                   help="per-image error over the mask: l1 (the paper's) or l2 (squared, as MSE and fMSE score)")
    g.add_argument("--harm-loss", default=None, choices=sorted(PER_IMAGE_LOSSES),
                   help="the per-image error the harm term compares (default: --loss's); l1 guards mild mismatches "
                        "more than l2, whose small errors square to almost nothing")
    g.add_argument("--harm-weight", type=float, default=0.0,
                   help="extra weight on each image's error beyond its composite's own (harm over missed gain)")
    g.add_argument("--gan-weight", type=float, default=0.0, help="the paper's LSGAN term (0.01 in the paper)")
    g.add_argument("--ema", type=float, default=0.999,
                   help="validate and save an exponential moving average of the weights with this decay (0 = off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", choices=DEVICES)
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
    g.add_argument("--stop-step", type=int, default=None,
                   help="stop (and save) after this step; the schedule still spans --steps")


def get_lr(step: int, args) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def param_groups(net: S2CRNet, backbone_lr_scale: float) -> list[dict]:
    """Trainable parameters; the ImageNet layers (if any) at their own share of the learning rate."""
    imagenet = {id(p) for p in getattr(net.backbone, "features", nn.Module()).parameters()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in imagenet], "lr_scale": 1.0},
              {"params": [p for p in trainable if id(p) in imagenet], "lr_scale": backbone_lr_scale}]
    return [g for g in groups if g["params"]]


def training_sources(args) -> list:
    if args.render_share > 0 and args.looks is None:
        raise ValueError("--render-share needs --looks PATH (../shared/data/luts/film_luts.npz)")
    looks = FilmLooks(args.looks) if args.render_share > 0 else None
    sources = [PhotoSource(m, "train", untouched_share=args.untouched_share,
                           same_category_share=args.same_category_share, thing_share=args.thing_share,
                           histogram_share=args.histogram_share, similar_share=args.similar_share,
                           same_kind_share=args.same_kind_share, looks=looks, render_share=args.render_share)
               for m in args.photos]
    sources += [IHarmonySource(root, "train") for root in args.iharmony]
    if not sources:
        raise ValueError("no training data: give --photos MANIFEST and/or --iharmony DIR")
    return sources


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
    elif checkpoint is None and hasattr(net.backbone, "features") and args.pretrained:
        load_imagenet_weights(net.backbone)
    if hasattr(net.backbone, "freeze"):
        net.backbone.freeze(args.trainable_blocks)
    net = net.to(device)
    # use_buffers averages BatchNorm statistics too; they don't fit the averaged weights, so validate() measures
    # fresh ones on a copy and leaves these for an exact --resume.
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    optimizer = torch.optim.AdamW(param_groups(net, args.backbone_lr_scale), lr=args.lr,
                                  weight_decay=args.weight_decay)
    disc = d_optimizer = None
    if args.gan_weight > 0:
        disc = Discriminator().to(device)
        d_optimizer = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.999))
    step, best, earlier_seconds = 0, {"mse": float("inf"), "real_ratio": float("inf")}, 0.0
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
    sources = training_sources(args)
    if args.source_weights is not None and len(args.source_weights) != len(sources):
        raise ValueError(f"--source-weights gives {len(args.source_weights)} numbers for {len(sources)} sources")
    train_set = HarmonyPairs(sources, config.categories, config.thumb, args.size,
                             args.seed, args.steps * args.batch_size, weights=args.source_weights)
    val = validation_batches(args.photos, args.iharmony, config, args.size, args.val_samples)
    real = RealTriples(args.val_real, config.thumb) if args.val_real else None
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
        if real is not None:
            quality |= real.score(scored, device)
            line += (f"; real MSE {quality['real_mse']:.1f} (do nothing {quality['real_baseline_mse']:.1f}, "
                     f"ratio {quality['real_ratio']:.3f}), {quality['real_worse']}/{quality['real_n']} worse")
        if real is None:
            quality.pop("real_ratio", None)
        if selection_key(quality) < selection_key(best):
            best = {**quality, "step": step}
            meta = {"recipe": args.recipe, "trained_steps": step, "train_minutes": round(train_seconds() / 60, 1),
                    "validation": best, "command": " ".join(sys.argv),
                    "train_args": _plain(vars(args))}
            save_weights(args.out, scored, meta)
            line += f" — best, saved {args.out}"
        tqdm.write(line)
        with (args.run_dir / "log.txt").open("a") as f:
            f.write(line + "\n")

    # 3. The loop
    per_image_loss, harm_loss = PER_IMAGE_LOSSES[args.loss], PER_IMAGE_LOSSES[args.harm_loss or args.loss]
    net.train()
    last_save = time.monotonic()
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, args) * group["lr_scale"]
        outputs = net(batch["thumbs"], batch["composite"], batch["mask"], batch["category"])
        weights = None
        if args.mismatch_scale:
            weights = mismatch_weights(batch["composite"], batch["real"], batch["mask"], args.mismatch_scale)
        loss = sum(masked_loss(out, batch["real"], batch["mask"], weights, per_image_loss) for out in outputs)
        if args.harm_weight:
            loss = loss + args.harm_weight * harm(outputs[-1], batch["composite"], batch["real"], batch["mask"],
                                                  harm_loss)
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
        at_stop = step == args.stop_step
        if time.monotonic() - last_save > args.checkpoint_minutes * 60 or step == args.steps or out_of_time or at_stop:
            save_checkpoint()
            last_save = time.monotonic()
        if out_of_time or at_stop:
            tqdm.write(f"stopping at step {step}; continue with --resume")
            break
    bar.close()
    return best


def _plain(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
            for k, v in d.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(parse_arguments(parser, argv))


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse with the --recipe's options as defaults under the command line. Repeatable options (data folders)
    take the recipe's list only when the command line gives none, rather than adding to it."""
    recipe = parser.parse_known_args(argv)[0].recipe
    defaults = recipe_defaults(recipe) if recipe else {}
    lists = {key: defaults.pop(key) for key in ("photos", "val_real", "iharmony") if key in defaults}
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for key, paths in lists.items():
        if not getattr(args, key):
            setattr(args, key, [Path(p) for p in paths])
    return args

if __name__ == "__main__":
    main()
