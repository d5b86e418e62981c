"""The spine detector: torchvision Faster R-CNN on a small ImageNet backbone with a stride-4 FPN.

:func:`build_model` makes the network a :class:`~spinedet.training.config.ModelConfig`
describes (backbones: :mod:`spinedet.training.backbones`); :func:`predict`
is the one step from a torch model to numpy boxes, used by training,
validation and the export's parity check.

The network takes grey ``[B, C, H, W]`` float32 in 0..1, normalised by
:func:`spinedet.runtime.contract.normalise` (the runtime's contract); its
transform subtracts the backbone's grey mean, divides by its grey std and
never resizes the image (boxes come back in input pixels).
``ModelConfig.pretrained=False`` builds the same network from random weights
(the control that shows whether pretraining pays).  Nothing is ever
downloaded: a missing weights package raises
:class:`~spinedet.training.backbones.MissingWeights`.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .backbones import build_backbone
from .config import ModelConfig


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


def image_tensor(image) -> torch.Tensor:
    """A ``(H, W)`` or ``(C, H, W)`` image (numpy or torch, 0..1) as the ``(C, H, W)`` float32 tensor the model takes."""
    tensor = torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32))
    return tensor[None] if tensor.ndim == 2 else tensor


def predict(model, images, batch: int = 4) -> list:
    """Raw detections ``[(boxes (K, 4) pixels, scores (K,)), ...]`` (float64 numpy) of ``model``, one per image.

    images: a sequence of ``(H, W)`` or ``(C, H, W)`` arrays (numpy or torch)
    normalised to 0..1.  The model runs in eval mode, ``batch`` images at a
    time; its training/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                for o in model([image_tensor(image) for image in images[start:start + batch]]):
                    out.append((o["boxes"].numpy().astype(np.float64), o["scores"].numpy().astype(np.float64)))
    finally:
        model.train(was_training)
    return out
