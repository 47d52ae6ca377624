"""Backbones of S²CRNet (Liang et al., arXiv 2109.05750): SqueezeNet-1.1 and VGG16 feature extractors.

Each maps a batch of thumbnails (N, 3, S, S) in [0, 1] to 512-channel feature maps; the network pools them.
Trained from scratch here: no pretrained weights are available or downloaded.
"""

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BACKBONE_CHANNELS", "create_backbone", "list_backbones", "register_backbone"]

BACKBONE_CHANNELS = 512

# VGG16 conv layers up to relu5_3 (the last max-pool is dropped, as in the official code).
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# SqueezeNet-1.1 after its stem: Fire(squeeze, expand1x1, expand3x3) blocks up to the 512-channel Fire block.
SQUEEZENET_CFG = [(16, 64, 64), (16, 64, 64), "M", (32, 128, 128), (32, 128, 128), "M",
                  (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]

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
