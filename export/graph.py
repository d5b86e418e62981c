"""A batch-dynamic, TensorRT-ready forward pass of a trained torchvision Faster R-CNN.

torchvision's detector cannot be exported as it is: its per-image Python
loops bake the batch size into the graph, its RoI level merge becomes a slow
``ScatterElements``, and it produces data-dependent shapes.  :class:`ExportableDetector`
re-expresses the same computation with fixed shapes everywhere except the
batch axis, using the trained modules unchanged:

1. normalise the ``[B, C, H, W]`` input with the model's mean/std;
2. backbone + FPN (5 levels, strides 4-64) and the RPN head;
3. anchors precomputed as constants for the fixed input size;
4. per level the top ``pre_nms_top_n`` objectness logits (static k), batched
   box decoding, clipping, and masking (not filtering) of tiny boxes;
5. RPN NMS as ONNX ``NonMaxSuppression`` (levels kept apart by a
   coordinate offset), turned into a fixed-size keep mask with ``ScatterND``,
   then the top ``post_nms_top_n`` proposals (static k) with a validity flag;
6. RoI Align on every FPN level and a per-RoI selection of the level the
   torchvision level mapper picks (no scatter);
7. the box head, softmax scores, class box decoding, clipping;
8. the detector's own IoU-NMS (as in torchvision's ``postprocess_detections``)
   again as a fixed-size mask, and the top K boxes.

Outputs follow the runtime's contract: ``boxes [B, K, 4]`` (pixels) and
``scores [B, K]``, entries without a detection have score 0.  The score
threshold, the area cap and the paper's IoM-NMS stay in the runtime's numpy
post-processing.
"""

from __future__ import annotations

import copy
import math

import torch
import torchvision
from torch import nn

from spinedet.training.backbones import relu6_consumers
from spinedet.training.model import context_boxes

BBOX_CLIP = math.log(1000.0 / 16)
INVALID = -1.0  # score of masked entries; every NMS below ignores scores under 0


class BatchedNMS(torch.autograd.Function):
    """Keep mask ``[B, N]`` (float 0/1) of greedy IoU-NMS per image, at most ``max_keep`` per image.

    Eager: torchvision's nms per image.  ONNX: one ``NonMaxSuppression`` node
    over the whole batch and a ``ScatterND`` of its selected indices into a
    zero mask.  Boxes with score below 0 are ignored.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_keep: int, iou_threshold: float):
        mask = torch.zeros_like(scores)
        for b in range(boxes.shape[0]):
            valid = torch.nonzero(scores[b] >= 0).flatten()
            keep = torchvision.ops.nms(boxes[b, valid], scores[b, valid], iou_threshold)[:max_keep]
            mask[b, valid[keep]] = 1.0
        return mask

    @staticmethod
    def symbolic(g, boxes, scores, max_keep: int, iou_threshold: float):
        scores_bcn = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1], dtype=torch.long)))
        selected = g.op("NonMaxSuppression", boxes, scores_bcn,
                        g.op("Constant", value_t=torch.tensor([max_keep], dtype=torch.long)),
                        g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float)),
                        g.op("Constant", value_t=torch.tensor([-0.5], dtype=torch.float)))
        batch_and_box = g.op("Gather", selected, g.op("Constant", value_t=torch.tensor([0, 2], dtype=torch.long)),
                             axis_i=1)
        count = g.op("Gather", g.op("Shape", selected), g.op("Constant", value_t=torch.tensor([0], dtype=torch.long)),
                     axis_i=0)
        ones = g.op("ConstantOfShape", count, value_t=torch.tensor([1.0], dtype=torch.float))
        zeros = g.op("Mul", scores, g.op("Constant", value_t=torch.tensor(0.0, dtype=torch.float)))
        return g.op("ScatterND", zeros, batch_and_box, ones)


class UnitClip(torch.autograd.Function):
    """``clip(x / 6, 0, 1)``, i.e. ReLU6 / 6, exported as one ``HardSigmoid(alpha=1/6, beta=0)`` node.

    Why: a ``Clip`` takes its bounds as tensor inputs, and in a float16 graph
    onnxruntime's CPU provider (no float16 kernels there) reaches them through
    ``Cast`` nodes, which stops it fusing the activation into the convolution
    and costs a layout reorder before and after every activation (~25 % of the
    CPU time).  ``HardSigmoid`` has its constants as attributes and fuses.
    """

    @staticmethod
    def forward(ctx, x):
        return torch.clamp(x / 6, 0, 1)

    @staticmethod
    def symbolic(g, x):
        return g.op("HardSigmoid", x, alpha_f=1.0 / 6, beta_f=0.0)


class ReLU6AsUnitClip(nn.Module):
    """Stands in for an ``nn.ReLU6`` whose consumer convolution has its weights multiplied by 6."""

    def forward(self, x):
        return UnitClip.apply(x)


@torch.no_grad()
def with_unit_clips(backbone: nn.Module, channels: int):
    """A copy of ``backbone`` with every ReLU6 as :class:`ReLU6AsUnitClip` (its consumer's weights x 6).

    The same function; None when the rewrite does not reproduce the original
    outputs (an activation that feeds something else than the next convolution).
    """
    rewritten = copy.deepcopy(backbone).float().eval()
    pairs = relu6_consumers(rewritten)
    if not pairs:
        return None
    for conv in {id(c): c for _, _, c in pairs}.values():
        conv.weight.mul_(6.0)
    for parent, name, _ in pairs:
        setattr(parent, name, ReLU6AsUnitClip())
    probe = torch.rand(1, channels, 96, 96, generator=torch.Generator().manual_seed(0))
    original = copy.deepcopy(backbone).float().eval()

    def outputs(module):
        out = module(probe)
        return list(out.values()) if isinstance(out, dict) else [out]

    same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(outputs(original), outputs(rewritten)))
    return rewritten if same else None


def decode(deltas, reference, weights):
    """Boxes from regression ``deltas [..., 4]`` relative to ``reference [..., 4]`` (torchvision BoxCoder maths)."""
    wx, wy, ww, wh = weights
    widths = reference[..., 2] - reference[..., 0]
    heights = reference[..., 3] - reference[..., 1]
    ctr_x = reference[..., 0] + 0.5 * widths
    ctr_y = reference[..., 1] + 0.5 * heights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=BBOX_CLIP)
    dh = torch.clamp(deltas[..., 3] / wh, max=BBOX_CLIP)
    pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
    half_w, half_h = 0.5 * torch.exp(dw) * widths, 0.5 * torch.exp(dh) * heights
    return torch.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], dim=-1)


def clip_to_image(boxes, height: int, width: int):
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _gather_rows(values, index):
    """values ``[B, N, 4]`` or ``[B, N]`` at ``index [B, k]`` along N."""
    if values.dim() == 2:
        return torch.gather(values, 1, index)
    # one coordinate at a time: every shape stays static under ONNX shape inference
    return torch.stack([torch.gather(values[..., c], 1, index) for c in range(4)], dim=-1)


class ExportableDetector(nn.Module):
    """The trained ``FasterRCNN`` re-expressed with static shapes (see module docstring).

    model: a torchvision FasterRCNN in eval mode whose transform only
        normalises (no resizing), with a single foreground class.
    input_size: ``(H, W)`` the graph is built for.
    channels: input channels (2 for a model with depth context, see ``ModelConfig.depth_context_um``).
    half: run the convolutional and fully connected parts in float16; box
        decoding, NMS and RoI Align coordinates stay float32.
    The backbone's ReLU6 activations are exported as ``HardSigmoid`` (see
    :class:`UnitClip`) where that rewrite reproduces them; ``model`` itself is
    not changed.
    """

    def __init__(self, model, input_size, half: bool = False, channels: int = 1):
        super().__init__()
        self.channels = int(channels)
        model = copy.deepcopy(model.eval())  # ``model`` itself is never changed
        self.dtype = torch.float16 if half else torch.float32
        unit_clips = with_unit_clips(model.backbone, self.channels)
        if unit_clips is not None:
            model.backbone = unit_clips
        if half:
            for part in (model.backbone, model.rpn.head, model.roi_heads.box_head, model.roi_heads.box_predictor):
                part.half()
        self.height, self.width = (int(v) for v in input_size)
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        rpn, heads = model.rpn, model.roi_heads
        self.pre_nms_top_n = rpn._pre_nms_top_n["testing"]
        self.post_nms_top_n = rpn._post_nms_top_n["testing"]
        self.rpn_nms = float(rpn.nms_thresh)
        self.rpn_min_size = float(rpn.min_size)
        self.rpn_weights = tuple(float(w) for w in rpn.box_coder.weights)
        self.box_weights = tuple(float(w) for w in heads.box_coder.weights)
        self.score_thresh = float(heads.score_thresh)
        self.box_nms = float(heads.nms_thresh)
        self.detections = int(heads.detections_per_img)
        pool = heads.box_roi_pool
        self.roi_levels = list(pool.featmap_names)
        self.roi_output = tuple(pool.output_size) if isinstance(pool.output_size, (tuple, list)) else \
            (pool.output_size, pool.output_size)
        self.sampling_ratio = int(pool.sampling_ratio)
        self.roi_context_px = float(getattr(pool, "margin_px", 0.0))  # a ContextRoIPool also pools surroundings
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std, dtype=torch.float32).view(1, -1, 1, 1))
        self._prepare_constants(model)

    @torch.no_grad()
    def _prepare_constants(self, model):
        """Anchors per level and the RoI level scales, computed once for the fixed input size."""
        from torchvision.models.detection.image_list import ImageList

        dummy = torch.zeros(1, self.channels, self.height, self.width)
        features = [f.float() for f in self.backbone(dummy.to(self.dtype)).values()]
        anchors = model.rpn.anchor_generator(ImageList(dummy, [(self.height, self.width)]), features)[0]
        self.anchors_per_location = int(model.rpn.anchor_generator.num_anchors_per_location()[0])
        self.level_shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        counts = [h * w * self.anchors_per_location for h, w in self.level_shapes]
        self.level_sizes = counts
        self.register_buffer("anchors", anchors.unsqueeze(0))  # [1, N, 4]
        level_of_anchor = torch.cat([torch.full((n,), float(k)) for k, n in enumerate(counts)])
        self.register_buffer("level_offset", (level_of_anchor * (max(self.height, self.width) + 1)).unsqueeze(0))
        names = list(self.backbone(dummy.to(self.dtype)).keys())
        self.roi_feature_index = [names.index(n) for n in self.roi_levels]
        sizes = [features[i].shape[-2] for i in self.roi_feature_index]
        self.roi_scales = [2.0 ** round(math.log2(s / self.height)) for s in sizes]
        self.k_min = -math.log2(self.roi_scales[0])
        self.k_max = -math.log2(self.roi_scales[-1])

    def forward(self, images):
        batch = images.shape[0]
        features = list(self.backbone(((images - self.mean) / self.std).to(self.dtype)).values())
        proposals, valid = self._proposals(features, batch)
        boxes, scores = self._detections(features, proposals, valid, batch)
        return boxes, scores

    # --- region proposals -------------------------------------------------------------------------------------------

    def _proposals(self, features, batch):
        objectness, deltas = self.rpn_head(features)
        flat_obj, flat_deltas = [], []
        a = self.anchors_per_location
        # shapes from constants, not from the traced tensors, so that shape inference stays static
        for obj, d, (h, w), n in zip(objectness, deltas, self.level_shapes, self.level_sizes):
            obj, d = obj.float(), d.float()
            flat_obj.append(obj.permute(0, 2, 3, 1).reshape(-1, n))
            d = d.reshape(-1, a, 4, h, w).permute(0, 3, 4, 1, 2)
            flat_deltas.append(d.reshape(-1, n, 4))
        # per-level top-k with a static k, as torchvision's _get_top_n_idx
        picked_obj, picked_idx = [], []
        start = 0
        for obj, n in zip(flat_obj, self.level_sizes):
            k = min(self.pre_nms_top_n, n)
            top, idx = obj.topk(k, dim=1)
            picked_obj.append(top)
            picked_idx.append(idx + start)
            start += n
        obj = torch.cat(picked_obj, dim=1)
        idx = torch.cat(picked_idx, dim=1)
        deltas = _gather_rows(torch.cat(flat_deltas, dim=1), idx)
        anchors = self.anchors[0][idx]  # [B, k, 4] by indexing: no batch-sized expand in the graph
        offsets = self.level_offset[0][idx]
        boxes = clip_to_image(decode(deltas, anchors, self.rpn_weights), self.height, self.width)
        scores = torch.sigmoid(obj)
        big_enough = ((boxes[..., 2] - boxes[..., 0]) >= self.rpn_min_size) & \
                     ((boxes[..., 3] - boxes[..., 1]) >= self.rpn_min_size)
        scores = torch.where(big_enough, scores, torch.full_like(scores, INVALID))
        keep = BatchedNMS.apply(boxes + offsets.unsqueeze(-1), scores, self.post_nms_top_n, self.rpn_nms)
        ranked = torch.where(keep > 0, scores, torch.full_like(scores, INVALID - 1))
        k = min(self.post_nms_top_n, ranked.shape[1])
        top, order = ranked.topk(k, dim=1)
        return _gather_rows(boxes, order), top > INVALID - 0.5

    # --- box head ---------------------------------------------------------------------------------------------------

    def _roi_features(self, features, proposals, batch):
        rois = proposals.reshape(-1, 4)
        image_index = proposals[..., 0] * 0 + torch.arange(batch, dtype=rois.dtype).view(-1, 1)  # [B, n]
        image_index = image_index.reshape(-1)
        rois5 = torch.cat([image_index.unsqueeze(1), rois], dim=1)
        # torchvision's LevelMapper (canonical 224 px at level 4)
        area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
        level = torch.floor(4 + torch.log2(torch.sqrt(area) / 224) + torch.tensor(1e-6, dtype=rois.dtype))
        level = torch.clamp(level, min=self.k_min, max=self.k_max) - self.k_min
        pooled = None
        for k, (i, scale) in enumerate(zip(self.roi_feature_index, self.roi_scales)):
            out = torchvision.ops.roi_align(features[i].float(), rois5, self.roi_output, spatial_scale=scale,
                                            sampling_ratio=self.sampling_ratio, aligned=False)
            if len(self.roi_scales) == 1:
                return out
            chosen = (level == k).to(out.dtype).view(-1, 1, 1, 1)
            pooled = out * chosen if pooled is None else pooled + out * chosen
        return pooled

    def _detections(self, features, proposals, valid, batch):
        n = proposals.shape[1]
        pooled = self._roi_features(features, proposals, batch)
        if self.roi_context_px > 0:
            around = context_boxes(proposals, self.roi_context_px, self.height, self.width)
            pooled = torch.cat([pooled, self._roi_features(features, around, batch)], dim=1)
        head = self.box_head(pooled.to(self.dtype))
        logits, regression = (t.float() for t in self.box_predictor(head))
        scores = torch.softmax(logits, dim=-1)[:, 1].reshape(-1, n)
        deltas = regression.reshape(-1, n, logits.shape[-1], 4)[:, :, 1]
        boxes = clip_to_image(decode(deltas, proposals, self.box_weights), self.height, self.width)
        ok = valid & (scores > self.score_thresh) & \
            ((boxes[..., 2] - boxes[..., 0]) >= 1e-2) & ((boxes[..., 3] - boxes[..., 1]) >= 1e-2)
        scores = torch.where(ok, scores, torch.full_like(scores, INVALID))
        keep = BatchedNMS.apply(boxes, scores, self.detections, self.box_nms)
        ranked = torch.where(keep > 0, scores, torch.full_like(scores, INVALID))
        k = min(self.detections, n)
        top, order = ranked.topk(k, dim=1)
        present = top > 0
        out_boxes = _gather_rows(boxes, order) * present.unsqueeze(-1).to(boxes.dtype)
        out_scores = torch.where(present, top, torch.zeros_like(top))
        if k < self.detections:  # fewer proposals than K: pad
            pad = self.detections - k
            out_boxes = torch.cat([out_boxes, out_boxes.new_zeros(batch, pad, 4)], dim=1)
            out_scores = torch.cat([out_scores, out_scores.new_zeros(batch, pad)], dim=1)
        return out_boxes, out_scores
