"""model.network, model.backbones and model.config, parametrised over every registered backbone and variants
that between them take every option value: cascaded stages 1/2/3, Semantic-CRM on/off, normalisation
batch/none, colour statistics on/off, CRM hidden layer off/on, seam statistics off/on. Thumbnails are 64²
(VGG16 at 256² would be slow on two CPU cores).
"""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import real_pair

from model import PAPER_CONFIG, ModelConfig, S2CRNet, count_parameters
from model.backbones import BACKBONE_CHANNELS, create_backbone, list_backbones
from model.network import QUANTILES, STATS_PER_CHANNEL, color_statistics, seam_statistics
from model.thumbnails import make_thumbnails
from model.training.batch_norm import recompute_batch_norm

OPTIONS = [
    {"stages": 1, "semantic": False, "norm": "none", "color_stats": False, "head_hidden": 0, "seam_stats": False},
    {"stages": 2, "semantic": True, "norm": "batch", "color_stats": True},
    {"stages": 3, "semantic": True, "norm": "none", "color_stats": True, "head_hidden": 16},
]
VARIANTS = [ModelConfig(backbone=name, thumb=64, **opts) for name in list_backbones() for opts in OPTIONS]


def variant_id(config: ModelConfig) -> str:
    return (f"{config.backbone}-s{config.stages}-{'sem' if config.semantic else 'nosem'}-{config.norm}"
            f"-{'stats' if config.color_stats else 'nostats'}-h{config.head_hidden}"
            f"-{'seam' if config.seam_stats else 'noseam'}")


def real_batch(config: ModelConfig, sizes=((48, 40), (31, 57))):
    """Thumbnails, images (B, 3, H, W) and masks (B, 1, H, W) of real crops; images share the first size."""
    pairs = [real_pair(w, h, index=i) for i, (w, h) in enumerate(sizes)]
    thumbs = torch.stack([make_thumbnails(image, mask, config.thumb) for image, mask in pairs])
    w, h = sizes[0]
    resized = [(image.resize((w, h)), mask.resize((w, h))) for image, mask in pairs]
    images = torch.stack([torch.tensor(np.asarray(im)).permute(2, 0, 1) for im, _ in resized])  # B, 3, H, W
    masks = torch.stack([torch.tensor(np.asarray(mask))[None] for _, mask in resized])  # B, 1, H, W
    return thumbs, images.float() / 255, masks.float() / 255


@pytest.mark.parametrize("name", list_backbones())
def test_backbones_give_512_channels(name):
    for norm_layer in (None, torch.nn.BatchNorm2d):
        features = create_backbone(name, norm_layer).eval()(torch.rand(2, 3, 64, 64))
        assert features.shape[:2] == (2, BACKBONE_CHANNELS) and torch.isfinite(features).all()


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet50")
    with pytest.raises(ValueError, match="unknown backbone"):
        S2CRNet(ModelConfig(backbone="resnet50"))


@pytest.mark.parametrize("config", VARIANTS, ids=variant_id)
def test_forward_gives_one_valid_output_per_stage(config):
    torch.manual_seed(0)
    net = S2CRNet(config).eval()
    thumbs, images, masks = real_batch(config)
    categories = torch.tensor([config.categories.index("person"), config.categories.index("unknown")])
    with torch.no_grad():
        f_fg, f_bg = net.forward_features(thumbs)
        knots = net.forward_head(f_fg, f_bg, categories)
        outputs = net(thumbs, images, masks, categories)
    assert knots.shape == (2, config.stages, 3, config.pieces + 1)
    assert f_fg.shape[0] == f_bg.shape[0] == 2
    assert len(outputs) == config.stages
    for out in outputs:
        assert out.shape == images.shape
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        # Outside the mask the composite passes through.
        outside = (masks == 0).expand_as(images)
        assert torch.equal(out[outside], images[outside])


@pytest.mark.parametrize("config", VARIANTS, ids=variant_id)
def test_backward_reaches_the_backbone_and_every_crm(config):
    torch.manual_seed(0)
    net = S2CRNet(config).train()
    thumbs, images, masks = real_batch(config)
    target = torch.rand_like(images)
    outputs = net(thumbs, images, masks)  # no categories: the semantic variants fall back to "unknown"
    loss = sum(((out - target) ** 2).mean() for out in outputs)
    loss.backward()

    def reached(module: torch.nn.Module) -> bool:
        return all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters()) and any(
            p.grad.abs().sum() > 0 for p in module.parameters())

    first_conv = next(m for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert reached(net.backbone) and first_conv.weight.grad.abs().sum() > 0
    assert len(net.crms) == config.stages
    for crm in net.crms:
        assert crm.bg_proj.weight.grad.abs().sum() > 0 and crm.fg_proj.weight.grad.abs().sum() > 0
    if config.semantic:
        assert reached(net.category_embed)
    else:
        assert net.category_embed is None


def test_semantic_category_changes_the_curves_and_unknown_is_the_default():
    torch.manual_seed(0)
    config = ModelConfig(thumb=64, semantic=True)
    net = S2CRNet(config).eval()
    for crm in net.crms:  # make the head's response visible (the init is almost the identity)
        torch.nn.init.normal_(crm.fg_proj.weight, std=0.05)
    thumbs, _, _ = real_batch(config)
    index = {name: torch.full((2,), config.categories.index(name)) for name in ("person", "unknown")}
    with torch.no_grad():
        f_fg, f_bg = net.forward_features(thumbs)
        default = net.forward_head(f_fg, f_bg)
        unknown = net.forward_head(f_fg, f_bg, index["unknown"])
        person = net.forward_head(f_fg, f_bg, index["person"])
    assert torch.equal(default, unknown)
    assert not torch.allclose(person, unknown)
    assert net.category_index(None) == net.category_index("unknown")
    with pytest.raises(ValueError, match="unknown category 'dragon'"):
        net.category_index("dragon")


@pytest.mark.parametrize(("config", "expected"), [
    (ModelConfig(), 1.78e6),                    # 2-stage SqueezeNet, with the extensions (hidden CRM layer)
    (PAPER_CONFIG, 1.15e6),                     # 2-stage SqueezeNet exactly as in the paper
    (ModelConfig(semantic=True, head_hidden=0), 1.15e6),
    (ModelConfig(backbone="vgg16", thumb=64), 15.3e6),
    (dataclasses.replace(PAPER_CONFIG, backbone="vgg16"), 15.3e6),
])
def test_parameter_counts_match_the_paper(config, expected):
    count = count_parameters(S2CRNet(config))
    assert abs(count - expected) / expected < 0.10, f"{count} parameters, expected about {expected:.3g}"


def test_hidden_head_starts_as_the_linear_crm_it_extends():
    torch.manual_seed(0)
    linear = S2CRNet(ModelConfig(thumb=64, head_hidden=0)).eval()
    for crm in linear.crms:  # curves far from the identity, so that an unchanged output means something
        torch.nn.init.normal_(crm.fg_proj.weight, std=0.05)
    extended = S2CRNet(ModelConfig(thumb=64, head_hidden=32)).eval()
    missing, unexpected = extended.load_state_dict(linear.state_dict(), strict=False)
    assert not unexpected and missing and all(".mlp." in key for key in missing)
    assert count_parameters(extended) > count_parameters(linear)
    thumbs, images, masks = real_batch(linear.config)
    with torch.no_grad():
        before, after = linear(thumbs, images, masks)[-1], extended(thumbs, images, masks)[-1]
    assert (before - images).abs().max() > 0.02
    assert torch.equal(before, after)


def test_color_statistics_are_weighted():
    rgb = torch.rand(2, 3, 16, 16)
    ones = torch.ones(2, 1, 16, 16)
    stats = color_statistics(rgb, ones).view(2, 3, -1)  # B, 3, mean + std + quantiles
    assert stats.shape[-1] == 2 + len(QUANTILES)
    assert torch.allclose(stats[..., 0], rgb.flatten(2).mean(-1), atol=1e-5)
    assert torch.allclose(stats[..., 1], rgb.flatten(2).std(-1, unbiased=False), atol=1e-4)
    # A weight that selects the left half gives the statistics of that half alone.
    half = torch.zeros(2, 1, 16, 16)
    half[..., :8] = 1
    left = color_statistics(rgb, half).view(2, 3, -1)
    assert torch.allclose(left[..., 0], rgb[..., :8].flatten(2).mean(-1), atol=1e-4)
    assert (left[..., 2:].diff(dim=-1) >= 0).all()  # quantiles in order


def test_seam_statistics_measure_the_jump_across_the_mask_edge():
    inside, outside = torch.tensor([0.6, 0.4, 0.2]), torch.tensor([0.3, 0.4, 0.5])
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, 8:20] = 1
    rgb = torch.where(mask > 0, inside.view(1, 3, 1, 1), outside.view(1, 3, 1, 1))
    stats = seam_statistics(rgb, mask).view(1, 3, STATS_PER_CHANNEL)
    assert torch.allclose(stats[0, :, 0], inside - outside, atol=1e-4)  # mean jump along the edge
    assert stats[0, :, 1].abs().max() < 1e-3  # the same jump all along it
    assert torch.allclose(stats[0, :, 2:], (inside - outside)[:, None].expand(3, len(QUANTILES)), atol=1e-4)
    # Along a real photo's edge, brightening its object by 0.2 raises the measured jump by just that.
    image, mask_image = real_pair(96, 96)
    thumbs = make_thumbnails(image, mask_image, 64)[None]
    rgb, mask = thumbs[:, 0:3], (thumbs[:, 3:4] > 0.5).float()
    natural = seam_statistics(rgb, mask).view(3, STATS_PER_CHANNEL)[:, 0]
    brighter = seam_statistics(rgb + 0.2 * mask, mask).view(3, STATS_PER_CHANNEL)[:, 0]
    assert torch.allclose(brighter - natural, torch.full((3,), 0.2), atol=0.02)


def test_seam_statistics_extend_the_background_embedding():
    thumbs, _, _ = real_batch(ModelConfig(thumb=64))
    sizes = {}
    for seam in (False, True):
        net = S2CRNet(ModelConfig(thumb=64, seam_stats=seam)).eval()
        with torch.no_grad():
            f_fg, f_bg = net.forward_features(thumbs)
        sizes[seam] = (f_fg.shape[1], f_bg.shape[1])
    assert sizes[True] == (sizes[False][0], sizes[False][1] + 3 * STATS_PER_CHANNEL)


def test_recomputed_batch_norm_statistics_are_those_of_the_batches():
    torch.manual_seed(0)
    net = S2CRNet(ModelConfig(thumb=96))
    thumbs = torch.rand(32, 8, 96, 96)  # enough values per channel that biased and unbiased variances agree
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics that match nothing, as an average of them may
            m.running_mean.fill_(0.5)
            m.running_var.fill_(0.05)

    def eval_error() -> float:
        """How far eval mode (running statistics) is from train mode (the batch's own statistics)."""
        with torch.no_grad():
            measured = net.eval().forward_features(thumbs)[0]
            own = net.train().forward_features(thumbs)[0]
        return float((measured - own).abs().max() / own.abs().max())

    before = eval_error()
    recompute_batch_norm(net, [thumbs])
    assert net.training  # left in the mode it was in
    after = eval_error()
    assert after < 0.02 and before > 10 * after, (before, after)
    momenta = {m.momentum for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}  # restored for training


def test_config_round_trip_and_validation():
    config = ModelConfig(backbone="vgg16", thumb=96, pieces=32, stages=3, semantic=True, norm="none",
                         color_stats=False, head_hidden=64, categories=("cat", "dog", "unknown"))
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert PAPER_CONFIG.thumb == 256 and PAPER_CONFIG.norm == "none" and not PAPER_CONFIG.color_stats
    assert PAPER_CONFIG.head_hidden == 0 and not PAPER_CONFIG.seam_stats
    # Weights files written before seam statistics existed describe networks without them.
    older = {k: v for k, v in ModelConfig().to_dict().items() if k != "seam_stats"}
    assert ModelConfig.from_dict(older) == dataclasses.replace(ModelConfig(), seam_stats=False)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "dropout": 0.1})
    for bad in ({"thumb": 16}, {"pieces": 1}, {"stages": 0}, {"norm": "layer"}, {"categories": ("cat",)},
                {"head_hidden": -1}):
        with pytest.raises(ValueError):
            ModelConfig(**bad)
