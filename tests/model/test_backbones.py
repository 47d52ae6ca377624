"""EfficientNet-Lite0: the ImageNet weights land where they belong, training with it runs end to end, and the
pieces it brings (frozen layers, the real-triple validation, the harm term) do what they say."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PHOTOS, make_iharmony_fixture, tiny_manifest
from PIL import Image

from model import Harmonizer, ModelConfig, S2CRNet
from model.backbones import create_backbone
from model.training.batch_norm import recompute_batch_norm
from model.training.losses import harm
from model.training.pretrained import imagenet_checkpoint, lite0_state_dict, load_imagenet_weights
from model.training.train import _plain, add_arguments, run

reference = pytest.importorskip("efficientnet_lite_pytorch")  # the reference implementation: a test dependency

BROWN_BEAR = 294  # ImageNet class index


def imagenet_batch(*names: str) -> torch.Tensor:
    """Real photos, centre-cropped to 224², in [0, 1]."""
    images = []
    for name in names:
        with Image.open(PHOTOS / "bsds" / "images" / name) as im:
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            crop = im.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC,
                                            box=(left, top, left + side, top + side))
        images.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(images)


@torch.no_grad()
def test_our_lite0_with_the_package_weights_gives_the_reference_imagenet_logits():
    checkpoint = imagenet_checkpoint()
    ref = reference.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(checkpoint)
    ref.eval()
    ours = create_backbone("efficientnet_lite0")
    load_imagenet_weights(ours)
    ours.eval()
    _, classifier = lite0_state_dict(checkpoint)

    x = imagenet_batch("100075.jpg", "100080.jpg", "100098.jpg")
    expected = ref((x - ours.mean) / ours.std)
    logits = torch.nn.functional.linear(ours.forward_imagenet(x).mean((2, 3)), classifier["weight"],
                                        classifier["bias"])
    assert (logits - expected).abs().max() < 1e-4
    assert logits[0].argmax() == BROWN_BEAR  # BSDS 100075: bears


def test_a_checkpoint_with_a_missing_layer_is_refused():
    features, _ = lite0_state_dict(imagenet_checkpoint())
    features.pop(next(k for k in features if k.endswith("depthwise.0.weight")))
    with pytest.raises(RuntimeError, match="Missing key"):
        create_backbone("efficientnet_lite0").features.load_state_dict(features, strict=True)


def test_frozen_layers_keep_their_weights_and_imagenet_statistics_through_training_and_renormalising():
    torch.manual_seed(0)
    net = S2CRNet(ModelConfig(backbone="efficientnet_lite0", thumb=64))
    load_imagenet_weights(net.backbone)
    net.backbone.freeze(2)  # the head and the last block train
    frozen_before = {k: v.clone() for k, v in net.backbone.features[:-2].state_dict().items()}
    trained_before = {k: v.clone() for k, v in net.backbone.features[-1].state_dict().items()}
    net.train()
    assert not net.backbone.features[0].training and net.backbone.features[-1].training
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    thumbs, images, masks = torch.rand(2, 8, 64, 64), torch.rand(2, 3, 32, 32), torch.ones(2, 1, 32, 32)
    thumbs[:, 3], thumbs[:, 7] = 1, 0.3
    for _ in range(2):
        loss = sum(o.sub(images * 0.5).abs().mean() for o in net(thumbs, images, masks))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recompute_batch_norm(net, [thumbs])
    for key, value in net.backbone.features[:-2].state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert any(not torch.equal(v, trained_before[k]) for k, v in net.backbone.features[-1].state_dict().items())


def test_harm_counts_only_the_error_beyond_the_composites_own():
    real = torch.full((2, 3, 4, 4), 0.5)
    composite = real + 0.2
    mask = torch.ones(2, 1, 4, 4)
    assert harm(real + 0.1, composite, real, mask) == 0  # better than the composite: no harm
    assert torch.isclose(harm(real + 0.3, composite, real, mask), torch.tensor(0.1))
    assert torch.isclose(harm(real - 0.3, real, real, mask), torch.tensor(0.3))  # any change to an untouched pair


def test_a_lite0_training_run_validates_on_real_triples_and_writes_loadable_weights(tmp_path, capsys):
    manifest = tiny_manifest(tmp_path, 40)
    make_iharmony_fixture(tmp_path / "real")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--photos", str(manifest), "--backbone", "efficientnet_lite0", "--trainable-blocks", "1",
        "--val-real", str(tmp_path / "real"), "--harm-weight", "1", "--same-category-share", "0.5",
        "--thumb", "64", "--size", "48", "--batch-size", "4", "--steps", "4", "--warmup", "1", "--val-every", "2",
        "--val-samples", "4", "--workers", "0", "--threads", "1", "--device", "cpu",
        "--run-dir", str(tmp_path / "run")])
    best = run(args)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("real MSE") == 2 and "/3 worse" in log
    assert best["real_n"] == 3 and best["real_baseline_mse"] > 0
    assert best["real_ratio"] == pytest.approx(best["real_mse"] / best["real_baseline_mse"])
    h = Harmonizer.load(tmp_path / "run" / "best.pt", device="cpu")
    assert h.config.backbone == "efficientnet_lite0"
    # The ImageNet layers came from the package: the frozen stem is exactly its weights.
    features, _ = lite0_state_dict(imagenet_checkpoint())
    assert torch.equal(h.net.backbone.features[0][0].weight, features["0.0.weight"])


def test_a_recipe_sets_defaults_that_the_command_line_overrides():
    from model.training.recipes import RECIPES
    from model.training.train import parse_arguments

    def parse(*argv):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return parse_arguments(parser, list(argv))

    recipe = RECIPES["lite0-real"]
    args = parse("--recipe", "lite0-real")
    assert args.backbone == recipe["backbone"] and args.steps == recipe["steps"]
    assert [str(p) for p in args.val_real] == recipe["val_real"]
    args = parse("--recipe", "lite0-real", "--steps", "7", "--photos", "mine.csv")
    assert args.steps == 7 and [str(p) for p in args.photos] == ["mine.csv"]  # replaced, not appended
    assert parse("--photos", "mine.csv").backbone == "squeezenet"  # no recipe: the plain defaults
    with pytest.raises(SystemExit):
        parse("--recipe", "no-such-recipe")


def test_the_shipped_weights_recipe_gives_the_options_they_were_trained_with():
    """`s2crnet train --recipe NAME` reproduces the shipped weights: the recipe named in their metadata sets every
    training option they record (where the run wrote its files aside)."""
    from model import DEFAULT_WEIGHTS
    from model.training.train import parse_arguments

    meta = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)["meta"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parse_arguments(parser, ["--recipe", meta["recipe"]])
    trained = {k: v for k, v in meta["train_args"].items() if k not in ("recipe", "run_dir", "out")}
    recipe = {k: v for k, v in _plain(vars(args)).items() if k in trained}
    assert recipe == trained


def test_stop_step_ends_a_leg_that_resume_continues_on_the_same_schedule(tmp_path):
    manifest = tiny_manifest(tmp_path, 40)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["--photos", str(manifest), "--thumb", "32", "--size", "48", "--batch-size", "4", "--steps", "6",
              "--warmup", "2", "--val-every", "3", "--val-samples", "4", "--workers", "0", "--threads", "1",
              "--device", "cpu", "--ema", "0", "--run-dir", str(tmp_path / "run")]
    run(parser.parse_args([*common, "--stop-step", "2"]))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 2
    run(parser.parse_args([*common, "--resume"]))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 6


def test_the_cli_trains_from_a_recipe_and_names_it_in_the_weights(tmp_path):
    import subprocess
    import sys

    manifest = tiny_manifest(tmp_path, 40)
    make_iharmony_fixture(tmp_path / "real")
    script = Path(sys.executable).with_name("s2crnet")
    result = subprocess.run(
        [str(script), "train", "--recipe", "lite0-real", "--photos", str(manifest), "--val-real",
         str(tmp_path / "real"), "--thumb", "64", "--size", "48", "--batch-size", "4", "--steps", "2",
         "--stop-step", "2", "--warmup", "1", "--val-every", "2", "--val-samples", "4", "--workers", "0",
         "--device", "cpu", "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    h = Harmonizer.load(tmp_path / "run" / "best.pt", device="cpu")
    assert h.config.backbone == "efficientnet_lite0" and h.meta["recipe"] == "lite0-real"
    assert h.meta["train_args"]["trainable_blocks"] == 3 and h.meta["train_args"]["harm_weight"] == 1.0
