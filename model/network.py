"""S²CRNet: Spatial-Separated Curve Rendering Network (Liang, Cun, Pun, Wang; arXiv 2109.05750).

thumbnails → forward_features (shared backbone on foreground and background, pooled to 512-d each,
optionally with colour and seam statistics) → forward_head (Cascaded-CRM, optionally Semantic-CRM) → curve knots,
which model.curves applies at any resolution.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .backbones import BACKBONE_CHANNELS, create_backbone
from .config import ModelConfig
from .curves import apply_curves, curve_knots

__all__ = ["S2CRNet", "CurveRenderingModule", "color_statistics", "seam_statistics", "count_parameters",
           "inference_copy"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
STATS_PER_CHANNEL = 2 + len(QUANTILES)  # mean, std, quantiles
CATEGORY_EMBED = 64
SEAM_WINDOW = 7  # pixels of the foreground thumbnail: the neighbourhood whose inside and outside are compared
NORM_LAYERS = {"batch": nn.BatchNorm2d, "none": None}
THUMB_LEVELS = 256  # thumbnails are 8-bit images scaled to [0, 1] (model.thumbnails)


@torch.no_grad()
def color_statistics(rgb: torch.Tensor, weight: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """Weighted per-channel mean, std and quantiles. rgb: (B, 3, S, S); weight: (B, 1, S, S) → (B, 21).

    With `levels`, every value is a multiple of 1 / (levels − 1) (thumbnails come from 8-bit images), and the
    quantiles come from a weighted histogram of those levels instead of a sort: the same values, a fraction of
    the time."""
    x = rgb.flatten(2)  # B, 3, N
    w = weight.flatten(2).expand_as(x) + 1e-6
    total = w.sum(-1, keepdim=True)
    mean = (x * w).sum(-1, keepdim=True) / total
    std = (((x - mean) ** 2 * w).sum(-1, keepdim=True) / total).sqrt()
    if levels is None:
        ordered, order = x.sort(-1)
        cdf = w.gather(-1, order).cumsum(-1) / total  # B, 3, N
    else:
        index = (x * (levels - 1)).round().long().clamp(0, levels - 1)
        histogram = x.new_zeros(*x.shape[:2], levels).scatter_add_(-1, index, w)  # B, 3, levels
        cdf = histogram.cumsum(-1) / total
        ordered = torch.linspace(0, 1, levels, device=x.device).expand_as(cdf)
    targets = torch.tensor(QUANTILES, device=x.device, dtype=cdf.dtype)
    # searchsorted(cdf, targets) (side left) on a non-decreasing cdf is the count of entries below each target;
    # written as that count because ONNX has no searchsorted, so the exported graph computes the same indices.
    index = (cdf.unsqueeze(-2) < targets[:, None]).sum(-1).clamp(max=cdf.shape[-1] - 1)  # B, 3, Q
    quantiles = ordered.gather(-1, index)  # B, 3, Q
    return torch.cat([mean, std, quantiles], -1).flatten(1)


@torch.no_grad()
def seam_statistics(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How colours jump across the mask's edge. rgb: (B, 3, S, S); mask: (B, 1, S, S) → (B, 21).

    Around each pixel whose window straddles the edge, the mean colour inside the mask minus the mean outside;
    then the per-channel statistics of that jump along the edge. The backbone sees foreground and background
    apart, so without this it never sees the seam, the strongest cue of how far a pasted object is off.
    """
    def local_mean(x):
        return F.avg_pool2d(x, SEAM_WINDOW, stride=1, padding=SEAM_WINDOW // 2, count_include_pad=False)

    inside = local_mean(mask)
    mean_in = local_mean(rgb * mask) / inside.clamp_min(1e-3)
    mean_out = local_mean(rgb * (1 - mask)) / (1 - inside).clamp_min(1e-3)
    jump = mean_in - mean_out
    straddles = ((inside > 0.15) & (inside < 0.85)).to(rgb.dtype)
    return color_statistics(jump, straddles)


class CurveRenderingModule(nn.Module):
    """One CRM: p = Linear_b(f_b) + Linear_f(f_f) [+ MLP(f_f, f_b)] → 3 × L curve log-weights.

    The paper's CRM is the two linear maps. The optional MLP lets the curve depend on interactions between the
    foreground and background features (say, the ratio of their spreads), which no sum of linear maps can.
    """

    def __init__(self, bg_dim: int, fg_dim: int, pieces: int, hidden: int = 0):
        super().__init__()
        self.pieces = pieces
        self.bg_proj = nn.Linear(bg_dim, 3 * pieces)
        self.fg_proj = nn.Linear(fg_dim, 3 * pieces)
        # Start at (almost) the identity curve: equal weights everywhere.
        for proj in (self.bg_proj, self.fg_proj):
            nn.init.normal_(proj.weight, std=1e-3)
            nn.init.zeros_(proj.bias)
        self.mlp = None
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(fg_dim + bg_dim, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, 3 * pieces))
            # A zero output layer adds nothing at first, so linear-CRM weights can be extended without a jump.
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, f_bg: torch.Tensor, f_fg: torch.Tensor) -> torch.Tensor:
        p = self.bg_proj(f_bg) + self.fg_proj(f_fg)
        if self.mlp is not None:
            p = p + self.mlp(torch.cat([f_fg, f_bg], 1))
        return p.view(-1, 3, self.pieces)


class S2CRNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config.backbone, NORM_LAYERS[config.norm])
        embed = BACKBONE_CHANNELS + (3 * STATS_PER_CHANNEL if config.color_stats else 0)
        fg_embed = embed + (CATEGORY_EMBED if config.semantic else 0)
        bg_embed = embed + (3 * STATS_PER_CHANNEL if config.seam_stats else 0)
        self.category_embed = None
        if config.semantic:
            n = len(config.categories)
            self.category_embed = nn.Sequential(nn.Linear(n, 32), nn.ReLU(inplace=True),
                                                nn.Linear(32, CATEGORY_EMBED))
        self.crms = nn.ModuleList(CurveRenderingModule(bg_embed, fg_embed, config.pieces, config.head_hidden)
                                  for _ in range(config.stages))

    def category_index(self, category: str | None) -> int:
        return self.config.category_index(category)

    def forward_features(self, thumbs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """thumbs: (B, 8, S, S) from model.thumbnails → foreground and background embeddings (B, D) each."""
        B = thumbs.shape[0]
        fg, fg_mask, bg, bg_mask = thumbs[:, 0:3], thumbs[:, 3:4], thumbs[:, 4:7], thumbs[:, 7:8]
        bg_weight = 1.0 - bg_mask
        x = torch.cat([fg * fg_mask, bg * bg_weight])  # 2B, 3, S, S: one backbone pass for both
        f = self.backbone(x).mean((2, 3))  # 2B, 512
        f_fg, f_bg = f[:B], f[B:]
        if self.config.color_stats:
            f_fg = torch.cat([f_fg, color_statistics(fg, fg_mask, THUMB_LEVELS)], 1)
            f_bg = torch.cat([f_bg, color_statistics(bg, bg_weight, THUMB_LEVELS)], 1)
        if self.config.seam_stats:
            # Last in the background embedding (the context), so trained weights widen by zero columns (--init).
            f_bg = torch.cat([f_bg, seam_statistics(fg, fg_mask)], 1)
        return f_fg, f_bg

    def forward_head(self, f_fg: torch.Tensor, f_bg: torch.Tensor, categories: torch.Tensor | None = None):
        """Embeddings (+ category indices (B,)) → knots (B, stages, 3, L + 1)."""
        if self.category_embed is not None:
            if categories is None:
                categories = torch.full((f_fg.shape[0],), self.category_index(None), device=f_fg.device)
            onehot = nn.functional.one_hot(categories, len(self.config.categories)).to(f_fg.dtype)
            f_fg = torch.cat([f_fg, self.category_embed(onehot)], 1)
        log_slopes = torch.stack([crm(f_bg, f_fg) for crm in self.crms], 1)  # B, stages, 3, L
        return curve_knots(log_slopes)

    def forward(self, thumbs, images, masks, categories=None) -> list[torch.Tensor]:
        """Training path: curves on images (B, 3, H, W) under masks (B, 1, H, W); one output per stage."""
        knots = self.forward_head(*self.forward_features(thumbs), categories)
        return apply_curves(images, masks, knots, self.config.strength)


@torch.no_grad()
def inference_copy(net: S2CRNet) -> S2CRNet:
    """An evaluation-only copy that computes the same curves faster: every batch norm folded into the
    convolution before it (exact up to float rounding) and channels-last memory, which CPU convolutions (the
    depthwise ones above all) run faster in. Not for training: it has no batch norm left to update."""
    fast = copy.deepcopy(net).eval()
    for seq in fast.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                    seq[i + 1] = nn.Identity()
    return fast.to(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
