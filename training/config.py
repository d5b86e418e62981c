"""What defines a trained spine detector: :class:`ModelConfig`, saved in every checkpoint and read by the exporter.

Everything the export stage and the runtime need (input size, normalisation,
pixel size, anchors, backbone, FPN width, head size, K) is here; the card the
runtime reads (:class:`~spinedet.runtime.contract.ModelCard`) is derived from
it by :meth:`ModelConfig.to_card`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .backbones import get_backbone

#: the version of the checkpoint and config layout
CHECKPOINT_FORMAT = 1


@dataclass
class ModelConfig:
    """Everything that defines the detector; saved with each checkpoint and read by the exporter.

    backbone: a name in :data:`~spinedet.training.backbones.BACKBONES`.
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
        get_backbone(self.backbone)  # a ValueError naming the choices
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
        return get_backbone(self.backbone).grey_stats[0]

    @property
    def image_std(self) -> float:
        """Gray std the model divides by (in 0..1 units)."""
        return get_backbone(self.backbone).grey_stats[1]

    def to_card(self, **fields_):
        """The runtime's :class:`~spinedet.runtime.contract.ModelCard` for this model (extra fields: name, metrics...)."""
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
