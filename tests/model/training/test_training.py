"""Training data, the iHarmony4 reader, the training loop (loss goes down, resume is exact) and evaluation."""

import argparse
import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import (
    DATA,
    PHOTOS,
    REAL_VAL,
    SAMPLES,
    make_iharmony_fixture,
    photo_and_mask,
    real_pair,
    tiny_manifest,
    write_manifest,
)
from PIL import Image

from model import CATEGORIES, Harmonizer, ModelConfig, S2CRNet
from model.harmonizer import save_weights
from model.iharmony import read_iharmony_split
from model.training.average import add_arguments as add_average_arguments
from model.training.average import average_weights
from model.training.average import run as run_average
from model.training.calibrate import add_arguments as add_calibrate_arguments
from model.training.calibrate import fit_strength
from model.training.calibrate import run as run_calibrate
from model.training.data import (
    THING_CATEGORIES,
    VAL_SEED,
    HarmonyPairs,
    PhotoSource,
    colour_neighbours,
    is_validation,
    recolour,
)
from model.training.evaluate import add_arguments as add_eval_arguments
from model.training.evaluate import evaluate, find_items, format_table, lab_transfer, score, summarise
from model.training.evaluate import run as run_eval
from model.training.losses import PER_IMAGE_LOSSES, masked_loss, mismatch_weights
from model.training.renorm import add_arguments as add_renorm_arguments
from model.training.renorm import run as run_renorm
from model.training.train import add_arguments, run
from model.weights import load_initial_weights


def test_recolour_changes_only_the_masked_region_and_never_the_ground_truth():
    changed = 0
    for seed in range(40):
        rng, real, mask = photo_and_mask(seed)
        before = real.copy()
        donor = (np.random.default_rng(seed + 100).random((64, 64, 3), dtype=np.float32), np.full((64, 64), 255))
        composite = recolour(rng, real, mask, donor)
        assert np.array_equal(real, before), "the ground truth was modified"
        assert composite.dtype == np.uint8 and composite.shape == real.shape
        assert np.array_equal(composite[mask == 0], real[mask == 0])
        changed += int(np.abs(composite.astype(int) - real).max() > 3)
    # Most pairs are recoloured, a share stays untouched so the model learns to leave harmony alone.
    assert 25 <= changed <= 39


def test_untouched_share_sets_how_many_pairs_stay_as_they_are():
    def untouched(share: float) -> int:
        count = 0
        for seed in range(30):
            rng, real, mask = photo_and_mask(seed)
            count += int(np.array_equal(recolour(rng, real, mask, None, untouched_share=share), real))
        return count

    assert untouched(1.0) == 30
    assert untouched(0.0) <= 2  # a retouch can, rarely, round back to the same 8-bit values
    assert untouched(0.0) < untouched(0.5) < 30


def test_histogram_transfer_gives_the_object_the_donors_per_channel_distribution():
    rng = np.random.default_rng(0)
    real = np.zeros((64, 64, 3), np.uint8)
    real[..., 0] = rng.integers(40, 80, (64, 64))  # a dark, narrow red channel
    real[..., 1:] = 128
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    donor_pixels = np.random.default_rng(1).beta(0.5, 0.5, (64, 64, 3)).astype(np.float32)  # U-shaped, unlike a
    donor = (donor_pixels, np.full((64, 64), 255))                                          # mean/std shift
    matched = 0
    for seed in range(40):
        composite = recolour(np.random.default_rng(seed), real, mask, donor, untouched_share=0.0,
                             histogram_share=1.0)
        inside = composite[mask > 0][:, 0] / 255.0
        # At full strength the red channel takes the donor's U shape: many values near both ends.
        matched += int((inside < 0.15).mean() > 0.2 and (inside > 0.85).mean() > 0.2)
        assert np.array_equal(composite[mask == 0], real[mask == 0])
    assert matched >= 3


def test_thing_share_draws_the_recoloured_photo_from_objects_rather_than_stuff(tmp_path):
    manifest = tiny_manifest(tmp_path, 60)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[::4]:
        row["category"] = "person"
    for row in rows[1::4] + rows[2::4] + rows[3::4]:
        row["category"] = "sky"  # stuff: three photos in four
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    source = PhotoSource(manifest, "train", thing_share=1.0)
    everything = PhotoSource(manifest, "train")
    assert source.things and len(source.things) < len(source)
    drawn = [source.sample(np.random.default_rng(seed), 32).category for seed in range(40)]
    assert all(category in THING_CATEGORIES for category in drawn)
    alike = [everything.sample(np.random.default_rng(seed), 32).category for seed in range(40)]
    assert any(category not in THING_CATEGORIES for category in alike)


def test_validation_split_is_stable_and_about_ten_percent():
    with (PHOTOS / "manifest.csv").open(newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    val = [i for i in ids if is_validation(i)]
    assert 0.07 < len(val) / len(ids) < 0.13
    assert val == [i for i in ids if is_validation(i)]


def test_photo_source_splits_are_disjoint(tmp_path):
    manifest = tiny_manifest(tmp_path, 60)
    train, val = PhotoSource(manifest, "train"), PhotoSource(manifest, "val")
    assert len(train) + len(val) == 60 and not set(train.ids) & set(val.ids)
    assert all(not is_validation(i) for i in train.ids)


def test_samples_are_a_pure_function_of_seed_and_index(tmp_path):
    source = PhotoSource(tiny_manifest(tmp_path), "train")
    pairs = HarmonyPairs([source], CATEGORIES, 32, 48, seed=3, length=10)
    a, b = pairs[4], pairs[4]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["thumbs"].shape == (8, 32, 32) and a["composite"].shape == (3, 48, 48) and a["mask"].shape == (1, 48, 48)
    assert not torch.equal(pairs[5]["real"], a["real"])


def test_iharmony_reader_pairs_composites_masks_and_reals(tmp_path):
    names = make_iharmony_fixture(tmp_path)
    items = read_iharmony_split(tmp_path, "test")
    assert [i[0] for i in items] == names
    name, composite, mask, real = items[1]
    assert composite.name == "a0001_1_2.jpg" and mask.name == "a0001_1.png" and real.name == "a0001.jpg"
    found = find_items(tmp_path)
    assert found[0]["category"] == "person" and found[1]["category"] is None


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    net = S2CRNet(ModelConfig(thumb=32))
    images = torch.rand(4, 3, 32, 32)
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    composite = images.clone()
    composite[:, 0] = images[:, 0] + masks[:, 0] * (images[:, 0] ** 0.5 - images[:, 0])  # brighten red inside
    thumbs = torch.cat([composite, masks, composite, masks], 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)  # a from-scratch rate
    losses = []
    for _ in range(80):
        loss = sum(masked_loss(o, images, masks) for o in net(thumbs, composite, masks))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.4 * losses[0]


def test_mismatch_weights_favour_mild_mismatches_and_average_one():
    real = torch.full((3, 3, 8, 8), 0.5)
    mask = torch.zeros(3, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    composite = real + mask * torch.tensor([0.0, 0.05, 0.2]).view(3, 1, 1, 1)  # untouched, mild, strong
    composite[:, :, 0, 0] = 0.9  # outside the mask: must not count
    weights = mismatch_weights(composite, real, mask, scale=0.05)
    assert weights.mean().item() == pytest.approx(1.0)
    inverse = 1 / torch.tensor([0.05, 0.10, 0.25])  # 1 / (the composite's relative L1 + scale)
    assert torch.allclose(weights, inverse / inverse.mean())
    # Per-image L1 0, 0.05 and 0.2 against weights 20 : 10 : 4, scaled to average 1.
    assert masked_loss(composite, real, mask, weights).item() == pytest.approx((0.05 * 10 + 0.2 * 4) / 34)


def test_the_squared_loss_scores_each_image_by_its_foreground_mse():
    real = torch.zeros(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    pred = real.clone()
    pred[0, :, :4] = 0.1  # error 0.1 over the whole mask
    pred[1, 0, :4] = 0.3  # error 0.3 in one channel of three
    pred[:, :, 6:] = 0.9  # outside the mask: must not count
    assert torch.allclose(PER_IMAGE_LOSSES["l2"](pred, real, mask), torch.tensor([0.01, 0.03]))
    assert torch.allclose(PER_IMAGE_LOSSES["l1"](pred, real, mask), torch.tensor([0.1, 0.1]))
    # The same mean L1, but the concentrated error weighs three times more squared: what MSE scores.
    assert masked_loss(pred, real, mask, per_image_loss=PER_IMAGE_LOSSES["l2"]).item() == pytest.approx(0.02)


def test_similar_donors_are_the_photos_whose_objects_are_nearest_in_colour():
    colours = {"red": (200, 30, 30), "dark red": (150, 20, 25), "blue": (30, 40, 200), "pale blue": (120, 140, 230),
               "grey": (128, 128, 128)}
    images, masks = [], []
    for rgb in colours.values():
        image = np.full((16, 16, 3), 255, np.uint8)  # white backgrounds: only the object may count
        image[4:12, 4:12] = rgb
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        images.append(image)
        masks.append(mask)
    neighbours = colour_neighbours(images, masks, count=2)
    names = list(colours)
    assert [names[j] for j in neighbours[0]][0] == "dark red"
    assert [names[j] for j in neighbours[2]][0] == "pale blue"
    assert all(i not in row and len(row) == 2 for i, row in enumerate(neighbours))


def train_args(tmp_path, manifest, *extra):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([
        "--photos", str(manifest), "--thumb", "32", "--size", "48", "--batch-size", "4", "--steps", "6",
        "--warmup", "2", "--val-every", "3", "--val-samples", "4", "--workers", "0", "--threads", "1",
        "--device", "cpu",
        "--out", str(tmp_path / "best.pt"), "--run-dir", str(tmp_path / "run"), *extra])


def test_training_run_writes_loadable_weights_and_resume_is_exact(tmp_path):
    manifest = tiny_manifest(tmp_path, 40)
    run(train_args(tmp_path / "straight", manifest, "--ema", "0.5", "--val-every", "6"))  # validated once, at 6
    straight = torch.load(tmp_path / "straight" / "run" / "last.pt", weights_only=True)

    # The same run, stopped after 1 step (a 0-minute budget stops at the first step boundary) and resumed.
    interrupted = train_args(tmp_path / "resumed", manifest, "--ema", "0.5", "--max-minutes", "0")
    run(interrupted)
    first_leg = torch.load(tmp_path / "resumed" / "run" / "last.pt", weights_only=True)
    assert first_leg["step"] == 1
    run(train_args(tmp_path / "resumed", manifest, "--ema", "0.5", "--resume"))
    resumed = torch.load(tmp_path / "resumed" / "run" / "last.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == 6
    assert resumed["train_seconds"] > first_leg["train_seconds"] > 0  # wall time adds up over the legs
    for part in ("model", "ema"):
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key}"
    # The average differs from the last step's weights, and it is what gets validated and saved.
    average = {k.removeprefix("module."): v for k, v in straight["ema"].items() if k.startswith("module.")}
    assert any(not torch.equal(average[key], value) for key, value in straight["model"].items())
    best = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)
    assert best["meta"]["trained_steps"] == 6 and best["meta"]["train_minutes"] >= 0
    for key, value in best["model"].items():
        if key.endswith(("running_mean", "running_var")):  # measured anew for the averaged weights
            assert not torch.equal(average[key], value), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(average[key], value), key

    h = Harmonizer.load(tmp_path / "straight" / "best.pt", device="cpu")
    assert h.config.thumb == 32 and h.meta["trained_steps"] > 0


def test_mismatch_scale_changes_what_a_training_run_learns(tmp_path):
    manifest = tiny_manifest(tmp_path, 40)
    run(train_args(tmp_path / "equal", manifest, "--steps", "3"))
    run(train_args(tmp_path / "weighted", manifest, "--steps", "3", "--mismatch-scale", "0.05"))
    equal, weighted = (torch.load(tmp_path / name / "run" / "last.pt", weights_only=True)["model"]
                       for name in ("equal", "weighted"))
    assert weighted["crms.0.bg_proj.weight"].shape == equal["crms.0.bg_proj.weight"].shape
    assert not torch.equal(weighted["crms.0.bg_proj.weight"], equal["crms.0.bg_proj.weight"])


def test_init_extends_trained_weights_with_a_hidden_head_and_seam_statistics(tmp_path):
    manifest = tiny_manifest(tmp_path, 40)
    run(train_args(tmp_path / "plain", manifest, "--steps", "3", "--head-hidden", "0", "--no-seam-stats"))
    plain = tmp_path / "plain" / "best.pt"
    run(train_args(tmp_path / "extended", manifest, "--steps", "3", "--init", str(plain), "--head-hidden", "8"))
    extended = Harmonizer.load(tmp_path / "extended" / "best.pt", device="cpu")
    assert extended.config.head_hidden == 8 and extended.config.seam_stats
    # Weights with parameters the new model lacks are refused, not silently dropped.
    with pytest.raises(ValueError, match="lacks"):
        run(train_args(tmp_path / "back", manifest, "--head-hidden", "0",
                       "--init", str(tmp_path / "extended" / "best.pt")))


def test_init_widens_a_trained_embedding_without_changing_the_output(tmp_path):
    torch.manual_seed(0)
    trained = S2CRNet(ModelConfig(thumb=32, seam_stats=False)).eval()
    for crm in trained.crms:  # curves far from the identity, so that an unchanged output means something
        torch.nn.init.normal_(crm.bg_proj.weight, std=0.2)
    save_weights(tmp_path / "trained.pt", trained)
    widened = S2CRNet(ModelConfig(thumb=32, seam_stats=True)).eval()
    load_initial_weights(widened, tmp_path / "trained.pt")
    dataset = HarmonyPairs([PhotoSource(tiny_manifest(tmp_path, 20))], CATEGORIES, 32, 48, 0, 4)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    with torch.no_grad():
        before = trained(batch["thumbs"], batch["composite"], batch["mask"])[-1]
        after = widened(batch["thumbs"], batch["composite"], batch["mask"])[-1]
    assert (before - batch["composite"]).abs().max() > 0.02
    assert torch.equal(before, after)
    # Only added input columns are bridged: any other change of shape is refused.
    with pytest.raises(ValueError, match="there"):
        load_initial_weights(S2CRNet(ModelConfig(thumb=32, pieces=32, seam_stats=False)), tmp_path / "trained.pt")


def test_average_lies_between_the_weights_before_and_after_fine_tuning(tmp_path):
    torch.manual_seed(0)
    before = S2CRNet(ModelConfig(thumb=32, seam_stats=False)).eval()
    save_weights(tmp_path / "before.pt", before)
    after = S2CRNet(ModelConfig(thumb=32, seam_stats=True)).eval()  # a wider embedding, as --init made it
    save_weights(tmp_path / "after.pt", after)
    parser = argparse.ArgumentParser()
    add_average_arguments(parser)
    run_average(parser.parse_args([str(tmp_path / "before.pt"), str(tmp_path / "after.pt"),
                                   "--out", str(tmp_path / "mixed.pt"), "--weight", "0.25"]))
    mixed = Harmonizer.load(tmp_path / "mixed.pt", device="cpu")
    assert mixed.config == after.config and mixed.meta["average"]["weight_of_after"] == 0.25
    start, end, middle = before.state_dict(), after.state_dict(), mixed.net.state_dict()
    weight = "crms.0.fg_proj.weight"
    assert torch.allclose(middle[weight], 0.75 * start[weight] + 0.25 * end[weight], atol=1e-6)
    # The columns `before` lacks count as zero: a quarter of `after`'s.
    widened = "crms.0.bg_proj.weight"
    width = start[widened].shape[1]
    assert torch.allclose(middle[widened][:, width:], 0.25 * end[widened][:, width:], atol=1e-6)
    for share, expected in ((0.0, before), (1.0, after)):
        net = average_weights(tmp_path / "before.pt", after, share)
        assert torch.equal(net.state_dict()["crms.1.fg_proj.bias"], expected.state_dict()["crms.1.fg_proj.bias"])
    with pytest.raises(SystemExit):
        parser.parse_args(["a.pt", "b.pt", "--out", "c.pt", "--weight", "1.5"])
    # --photos measures the average's BatchNorm statistics on training pairs; the weights stay the same.
    run_average(parser.parse_args([str(tmp_path / "before.pt"), str(tmp_path / "after.pt"), "--weight", "0.25",
                                   "--out", str(tmp_path / "measured.pt"), "--photos", str(tiny_manifest(tmp_path, 40)),
                                   "--size", "48"]))
    measured = Harmonizer.load(tmp_path / "measured.pt", device="cpu").net.state_dict()
    assert torch.equal(measured[weight], middle[weight])
    statistic = "backbone.0.1.running_mean"
    assert not torch.allclose(measured[statistic], middle[statistic], atol=1e-3)


def test_renorm_measures_batch_norm_statistics_and_keeps_every_weight(tmp_path):
    torch.manual_seed(0)
    net = S2CRNet(ModelConfig(thumb=32)).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics an average of two networks' statistics may give
            m.running_var.fill_(25.0)
    save_weights(tmp_path / "averaged.pt", net, meta={"note": "kept"})
    parser = argparse.ArgumentParser()
    add_renorm_arguments(parser)
    run_renorm(parser.parse_args([str(tmp_path / "averaged.pt"), "--photos", str(tiny_manifest(tmp_path, 40)),
                                  "--size", "48", "--out", str(tmp_path / "mended.pt")]))
    mended = Harmonizer.load(tmp_path / "mended.pt", device="cpu")
    before, after = net.state_dict(), mended.net.state_dict()
    for key, value in before.items():
        if key.endswith(("running_mean", "running_var")):
            assert not torch.allclose(value, after[key]), key
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(value, after[key]), key
    assert mended.meta["note"] == "kept" and mended.meta["batch_norm_remeasured"]["size"] == 48


def curving_net() -> S2CRNet:
    """A network whose curves are far from the identity, so that a share of their change is measurable."""
    torch.manual_seed(0)
    net = S2CRNet(ModelConfig(thumb=32)).eval()
    for crm in net.crms:
        torch.nn.init.normal_(crm.bg_proj.weight, std=0.2)
    return net


@pytest.mark.parametrize("share, fitted", [(0.4, 0.4), (1.7, 1.0)])  # beyond full strength it is capped
def test_calibration_recovers_the_share_of_the_change_that_was_needed(tmp_path, share, fitted):
    net = curving_net()
    pairs = HarmonyPairs([PhotoSource(tiny_manifest(tmp_path, 40), "val")], CATEGORIES, 32, 48, VAL_SEED, 8)
    (batch,) = torch.utils.data.DataLoader(pairs, batch_size=8)
    with torch.no_grad():
        change = net(batch["thumbs"], batch["composite"], batch["mask"], batch["category"])[-1] - batch["composite"]
    assert change.abs().max() > 0.05
    batch["real"] = batch["composite"] + share * change  # what a network that moves colours too far would face
    net.train()  # fitting scores in eval mode (stored BatchNorm statistics), then hands the mode back
    fit = fit_strength(net, [batch])
    assert fit["strength"] == pytest.approx(fitted, abs=1e-4)
    assert fit["mse_fitted"] <= fit["mse_full"] and fit["mse_fitted"] < fit["mse_do_nothing"]
    if share < 1:
        assert fit["mse_fitted"] == pytest.approx(0, abs=1e-6)
    assert net.config.strength == 1.0 and net.training  # left as it was


def test_calibrate_writes_the_strength_fitted_on_the_held_out_pairs_and_keeps_every_weight(tmp_path):
    net = curving_net()
    save_weights(tmp_path / "trained.pt", net, meta={"note": "kept"})
    manifest = tiny_manifest(tmp_path, 40)
    parser = argparse.ArgumentParser()
    add_calibrate_arguments(parser)
    run_calibrate(parser.parse_args([str(tmp_path / "trained.pt"), "--photos", str(manifest), "--pairs", "8",
                                     "--size", "48", "--out", str(tmp_path / "calibrated.pt")]))
    calibrated = Harmonizer.load(tmp_path / "calibrated.pt", device="cpu")
    pairs = HarmonyPairs([PhotoSource(manifest, "val")], CATEGORIES, 32, 48, VAL_SEED, 8)
    expected = fit_strength(net, list(torch.utils.data.DataLoader(pairs, batch_size=32)))["strength"]
    assert calibrated.config.strength == pytest.approx(expected)
    assert calibrated.config.strength < 1.0  # random curves: damped hard
    assert calibrated.meta["calibration"]["strength"] == calibrated.config.strength
    assert calibrated.meta["note"] == "kept"
    for key, value in net.state_dict().items():
        assert torch.equal(value, calibrated.net.state_dict()[key]), key  # only the config changes


def test_weights_with_a_strength_apply_that_share_of_the_change(tmp_path):
    net = curving_net()
    save_weights(tmp_path / "full.pt", net)
    net.config = replace(net.config, strength=0.5)
    save_weights(tmp_path / "half.pt", net)
    composite, mask = real_pair(96, 64)
    before = np.asarray(composite, np.float64)
    full, half = (np.asarray(Harmonizer.load(tmp_path / name, device="cpu").harmonize(composite, mask),
                             np.float64) - before for name in ("full.pt", "half.pt"))
    assert np.abs(full).max() >= 10
    assert np.abs(half - 0.5 * full).max() <= 1.0  # the 8-bit LUT rounds each once


def test_strength_outside_0_to_1_is_refused_and_old_files_apply_the_full_change():
    with pytest.raises(ValueError, match="strength"):
        ModelConfig(strength=0.0)
    with pytest.raises(ValueError, match="strength"):
        ModelConfig(strength=1.2)
    written_before_strength = {k: v for k, v in ModelConfig().to_dict().items() if k != "strength"}
    assert ModelConfig.from_dict(written_before_strength).strength == 1.0


def test_best_weights_go_to_the_run_dir_unless_out_is_given(tmp_path):
    manifest = tiny_manifest(tmp_path, 40)
    args = train_args(tmp_path, manifest, "--steps", "1")
    args.out = None  # what the parser gives without --out
    run(args)
    assert Harmonizer.load(tmp_path / "run" / "best.pt", device="cpu").meta["trained_steps"] == 1
    assert not (tmp_path / "best.pt").exists()


def test_metrics_match_hand_computed_values():
    real = np.full((16, 16, 3), 100, np.uint8)
    pred = real.copy()
    fg = np.zeros((16, 16), bool)
    fg[:4] = True  # a quarter of the image
    pred[fg] += 10
    m = score(pred, real, fg)
    assert m["mse"] == pytest.approx(100 / 4)
    assert m["fmse"] == pytest.approx(100)
    assert m["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 25))
    assert m["fpsnr"] == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert score(real, real, fg)["ssim"] == pytest.approx(1.0)


def test_summary_counts_the_images_a_method_makes_more_than_20_percent_worse():
    def row(name, composite, ours, composite_full, ours_full):
        metrics = {k: 0.0 for k in ("fmse", "psnr", "fpsnr", "ssim")}
        return {"name": name, "do nothing": {**metrics, "mse": composite}, "S2CRNet": {**metrics, "mse": ours},
                "do nothing full-res": {**metrics, "mse": composite_full},
                "S2CRNet full-res": {**metrics, "mse": ours_full}}
    rows = [row("a1_1_1.jpg", 100, 121, 100, 50),  # worse at 256² only
            row("a2_1_1.jpg", 100, 120, 10, 13),   # exactly 20% worse is not worse; full-res +30% is
            row("f3_1_1.jpg", 0, 1, 0, 0),         # an untouched composite: any change spoils it
            row("f4_1_1.jpg", 200, 20, 200, 20)]
    summary = summarise(rows)
    assert summary["All"]["S2CRNet"]["worse"] == pytest.approx(2 / 4)
    assert summary["All"]["S2CRNet full-res"]["worse"] == pytest.approx(1 / 4)  # against the full-res composite
    assert summary["All"]["do nothing"]["worse"] == 0
    assert summary["HAdobe5k"]["S2CRNet"]["worse"] == pytest.approx(1 / 2)
    assert summary["HFlickr"]["S2CRNet"]["worse"] == pytest.approx(1 / 2)
    assert "worse" in format_table(summary).splitlines()[0] and format_table(summary).splitlines()[2].endswith(" 50%")


def test_eval_of_a_manifest_scores_the_held_out_training_pairs(tmp_path, capsys):
    manifest = tiny_manifest(tmp_path, 40)
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    report = run_eval(parser.parse_args([str(manifest), "--pairs", "5", "--json"]))
    assert json.loads(capsys.readouterr().out)["images"] == 5  # strict JSON: no Infinity for untouched pairs
    # The very pairs training validates on (same seed, same generator), scored beside doing nothing.
    pairs = HarmonyPairs([PhotoSource(manifest, "val")], (), 0, 256, VAL_SEED, 5)
    errors = [((p.composite.astype(float) - p.real) ** 2).mean() for p in map(pairs.pair, range(5))]
    summary = report["summary"]["All"]
    assert summary["n"] == 5
    assert summary["do nothing"]["mse"] == pytest.approx(np.mean(errors))
    assert 0 < summary["S2CRNet"]["mse"] and summary["S2CRNet"]["psnr"] <= 100


def test_lab_transfer_moves_foreground_statistics_to_the_background():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, (32, 32, 3)).astype(np.uint8)
    fg = np.zeros((32, 32), bool)
    fg[8:24, 8:24] = True
    image[fg] = np.clip(image[fg].astype(int) + 80, 0, 255)
    out = lab_transfer(image, fg)
    assert np.array_equal(out[~fg].astype(int), image[~fg].astype(int)) or np.abs(
        out[~fg].astype(int) - image[~fg]).max() <= 1
    assert abs(out[fg].mean() - image[~fg].mean()) < abs(image[fg].mean() - image[~fg].mean()) / 4


def test_shipped_weights_beat_doing_nothing_on_the_shared_samples():
    rows, _ = evaluate(Harmonizer.load(device="cpu"), find_items(SAMPLES))
    summary = summarise(rows)["All"]
    assert summary["n"] == 10
    # Hard, strong mismatches: the weights chosen on real composites correct them part of the way (model card).
    assert summary["S2CRNet"]["mse"] < 0.7 * summary["do nothing"]["mse"]
    assert summary["S2CRNet"]["fmse"] < 0.7 * summary["do nothing"]["fmse"]
    worse = {row["name"]: row["S2CRNet"]["mse"] / row["do nothing"]["mse"] for row in rows
             if row["S2CRNet"]["mse"] > 1.2 * row["do nothing"]["mse"]}
    assert not worse, f"samples made more than 20% worse than their composite: {worse}"


def test_shipped_weights_beat_doing_nothing_on_real_composites():
    rows, _ = evaluate(Harmonizer.load(device="cpu"), find_items(REAL_VAL))
    summary = summarise(rows)["All"]
    assert summary["n"] == 18
    assert summary["S2CRNet"]["mse"] < 0.9 * summary["do nothing"]["mse"]
    assert summary["S2CRNet"]["fmse"] < summary["do nothing"]["fmse"]
    worse = [row["name"] for row in rows if row["S2CRNet"]["mse"] > 1.2 * row["do nothing"]["mse"]]
    assert len(worse) <= 2, f"real composites made more than 20% worse than doing nothing: {worse}"


# ----------------------------------------------------------------------------------------------------------------
# The object corpus and the iHarmony4-like levers (issue 29)
LUTS = DATA / "luts" / "film_luts.npz"


def _synset_manifest(tmp_path, kinds: dict[str, tuple[int, int, int]], per_kind: int = 4):
    """An objects-format manifest: per synset, `per_kind` photos of a grey scene with an object of that colour."""
    (tmp_path / "duts" / "images").mkdir(parents=True)
    (tmp_path / "duts" / "masks").mkdir(parents=True)
    rows = []
    for synset, rgb in kinds.items():
        for k in range(per_kind):
            stem = f"{synset}_{k}"
            image = np.full((48, 64, 3), 128, np.uint8)
            image[12:36, 16:48] = rgb
            mask = np.zeros((48, 64), np.uint8)
            mask[12:36, 16:48] = 255
            Image.fromarray(image).save(tmp_path / "duts" / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(mask).save(tmp_path / "duts" / "masks" / f"{stem}.png")
            rows.append({"id": f"duts/{stem}", "source": "DUTS-TR", "image": f"duts/images/{stem}.jpg",
                         "mask": f"duts/masks/{stem}.png", "width": 64, "height": 48, "object": "salient object",
                         "category": "unknown", "mask_fraction": 0.25})
    return write_manifest(tmp_path / "manifest.csv", rows)


def test_the_object_corpus_reads_as_a_photo_manifest_and_a_missing_one_says_how_to_build_it(tmp_path):
    manifest = _synset_manifest(tmp_path, {"n01440764": (200, 40, 40), "n02085620": (40, 40, 200)}, per_kind=6)
    train = PhotoSource(manifest, "train")
    held_out = [f"duts/{s}_{k}" for s in ("n01440764", "n02085620") for k in range(6) if is_validation(f"duts/{s}_{k}")]
    assert len(train) == 12 - len(held_out) and not set(held_out) & set(train.ids)
    assert all(im.shape == (48, 64, 3) and m.shape == (48, 64) for im, m in zip(train.images, train.masks,
                                                                               strict=True))
    pair = train.sample(np.random.default_rng(0), 32)
    assert pair.composite.shape == (32, 32, 3) and pair.mask.shape == (32, 32)
    with pytest.raises(ValueError, match="build.py --out ../objects"):
        PhotoSource(tmp_path / "missing" / "manifest.csv")


def test_same_kind_donors_are_other_objects_of_the_photos_synset(tmp_path):
    from model.training.kinds import object_kinds, synset_of

    assert synset_of("duts/n01440764_10029") == "n01440764" and synset_of("ecssd/0001") is None
    manifest = _synset_manifest(tmp_path, {"n01440764": (200, 40, 40), "n02085620": (40, 40, 200),
                                           "n07747607": (230, 150, 20)})
    source = PhotoSource(manifest, "train", same_kind_share=1.0)
    assert source.kinds == object_kinds(source.ids, source.images, source.masks)
    assert set(source.kinds) <= {"n01440764", "n02085620", "n07747607"}
    rng = np.random.default_rng(0)
    for i in range(len(source)):
        for _ in range(5):
            j, peer = source.donor(rng, i)
            assert peer
            if len(source.by_kind[source.kinds[i]]) > 1:
                assert source.kinds[j] == source.kinds[i]
    # Without the lever, donors come from any photo.
    anyone = PhotoSource(manifest, "train")
    drawn = {anyone.ids[anyone.donor(rng, 0)[0]].split("_")[0] for _ in range(60)}
    assert len(drawn) == 3


def test_objects_without_a_synset_are_labelled_by_the_imagenet_classifier(tmp_path, monkeypatch):
    from model.training import kinds

    monkeypatch.setattr(kinds, "CACHE_DIR", tmp_path / "cache")
    _, real, mask = photo_and_mask(0, 96)
    ids = ["ecssd/0001", "ecssd/0002", "duts/n01440764_1"]
    labels = kinds.object_kinds(ids, [real, real[:, ::-1].copy(), real], [mask, mask[:, ::-1].copy(), mask])
    assert labels[2] == "n01440764"
    assert all(label.startswith("imagenet-") and 0 <= int(label.split("-")[1]) < 1000 for label in labels[:2])
    assert list((tmp_path / "cache").glob("kinds-*.json")), "labels are cached"
    assert kinds.object_kinds(ids, [real, real[:, ::-1].copy(), real], [mask, mask[:, ::-1].copy(), mask]) == labels


def test_film_looks_apply_trilinearly_and_the_identity_lut_changes_nothing(tmp_path):
    from model.training.looks import FilmLooks

    grid = np.linspace(0, 255, 33)
    b, g, r = np.meshgrid(grid, grid, grid, indexing="ij")
    identity = np.stack([r, g, b], -1)
    swap = np.stack([b, g, r], -1)  # red and blue exchanged
    np.savez(tmp_path / "luts.npz", luts=np.rint(np.stack([identity, swap])).astype(np.uint8),
             names=np.array(["identity", "swap"]))
    looks = FilmLooks(tmp_path / "luts.npz")
    x = np.random.default_rng(0).random((20, 20, 3), dtype=np.float32)
    assert np.abs(looks.apply(0, x) - x).max() < 1 / 255 + 1e-6
    assert np.abs(looks.apply(1, x) - x[..., ::-1]).max() < 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="film looks not found"):
        FilmLooks(tmp_path / "none.npz")


def test_rendered_pairs_paste_the_object_from_another_rendering_of_the_same_photo():
    from model.training.looks import FilmLooks, render_pair

    looks = FilmLooks(LUTS)
    changed_inside, changed_real = 0, 0
    for seed in range(30):
        rng, photo, mask = photo_and_mask(seed, 64)
        composite, real = render_pair(rng, photo, mask, looks)
        assert composite.dtype == real.dtype == np.uint8 and composite.shape == real.shape == photo.shape
        assert np.array_equal(composite[mask == 0], real[mask == 0]), "the background is the real image's"
        changed_inside += int(np.abs(composite[mask == 255].astype(int) - real[mask == 255]).mean() > 2)
        changed_real += int(not np.array_equal(real, photo))
    assert changed_inside >= 25  # nearly every pair needs correcting
    assert 5 <= changed_real <= 25  # the real image is itself another rendering about half the time


def test_render_share_sets_how_many_training_pairs_are_rendered(tmp_path):
    from model.training.looks import FilmLooks

    manifest = tiny_manifest(tmp_path)
    looks = FilmLooks(LUTS)

    def rendered(share: float) -> int:
        source = PhotoSource(manifest, "train", looks=looks, render_share=share, untouched_share=1.0)
        return sum(not np.array_equal(p.composite, p.real)
                   for p in (source.sample(np.random.default_rng(s), 32) for s in range(30)))

    # untouched_share=1 leaves every recoloured pair alone, so what changes is what was rendered.
    assert rendered(0.0) == 0
    assert 20 <= rendered(1.0) <= 30
    assert 0 < rendered(0.5) < rendered(1.0)


def test_source_weights_set_how_often_each_manifest_is_drawn(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sources = [PhotoSource(tiny_manifest(tmp_path / "a"), "train"), PhotoSource(tiny_manifest(tmp_path / "b"), "train")]
    pairs = HarmonyPairs(sources, CATEGORIES, 32, 32, seed=0, length=400, weights=[3, 1])
    firsts = sum(pairs.draw_source(np.random.default_rng((0, i))) == 0 for i in range(400))
    assert 260 <= firsts <= 340  # about three in four
    alike = HarmonyPairs(sources, CATEGORIES, 32, 32, seed=0, length=400)
    assert 160 <= sum(alike.draw_source(np.random.default_rng((0, i))) == 0 for i in range(400)) <= 240
