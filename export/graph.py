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

Two flavours (``target``):

``"onnxruntime"`` (default) as above, with ONNX ``NonMaxSuppression`` and
    ``RoiAlign`` nodes;
``"tensorrt"`` the same detector in plain tensor ops only, for TensorRT
    builders without CUDA plugins (TensorRT-RTX turns ``RoiAlign`` into a
    CUDA plugin and implements no ``NonMaxSuppression``): RoI Align becomes
    :func:`roi_align_grid` (``GridSample`` on a grid of sample points, then
    ``AveragePool``) and both NMS steps become :func:`cluster_nms` (a
    pairwise IoU matrix and :data:`CLUSTER_NMS_ITERATIONS` matrix-vector
    products), the RPN's over its best-scored candidates only
    (:data:`RPN_CANDIDATES_PER_PROPOSAL`).  No ``NonZero``, no ``ScatterND``,
    no ``TopK`` beyond TensorRT's k <= 3840.  Eager, it computes what the
    torch model computes (greedy NMS exactly, RoI Align to ~1e-5), so the
    export's parity check applies unchanged.
"""

from __future__ import annotations

import copy
import math

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from spinedet.training.backbones import relu6_consumers
from spinedet.training.model import context_boxes

from .hygiene import TARGETS, TENSORRT_MAX_TOPK

BBOX_CLIP = math.log(1000.0 / 16)
INVALID = -1.0  # score of masked entries; every NMS below ignores scores under 0

#: Iterations of :func:`cluster_nms` in the tensorrt flavour: 10.  Measured with the shipped model
#: (bench/trt_graph_measure.py, fp32 eager: 15 real2d-mdg val images, 96 built-in slices of 12 seeds, 42 dense
#: synthetic slices): greedy NMS was reached after at most 6 iterations in the RPN (IoU 0.7, best 900
#: candidates; median 4) and 7 in the box head (IoU 0.5, 300 proposals; median 3).  Three more for denser
#: scenes than measured; an iteration is one [N, N] x [N] product: on onnxruntime CPU (2 threads, batch 8,
#: 900 candidates) the RPN NMS takes 16 ms with 1 iteration, 20 ms with 10.
CLUSTER_NMS_ITERATIONS = 10

#: RPN candidates per proposal: the tensorrt flavour runs the RPN NMS over the best
#: ``RPN_CANDIDATES_PER_PROPOSAL x post_nms_top_n`` candidates (all levels together; 900 of 4384 for the
#: shipped model) instead of all of them: the IoU matrix costs the square of the count (onnxruntime CPU,
#: 2 threads, batch 8: 20 ms for 900, 480 ms for all 4384).  Exact whenever they
#: hold ``post_nms_top_n`` survivors of the full NMS; on the slices above the last of the shipped model's 300
#: proposals was at most candidate 636 (2.12 x, median 531), so 3 leaves a 40 % margin.
RPN_CANDIDATES_PER_PROPOSAL = 3


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


# --- plain-op rewrites for the tensorrt flavour -------------------------------------------------------------------


def pairwise_iou(boxes):
    """IoU ``[B, N, N]`` of ``boxes [B, N, 4]`` (x_min, y_min, x_max, y_max, pixels) with each other.

    The same arithmetic as torchvision's ``nms`` (``inter / (area_i + area_j - inter)``), so that a
    threshold comparison decides as it does; two empty boxes give NaN, which overlaps nothing.
    """
    x0, y0, x1, y1 = (boxes[..., c] for c in range(4))  # each [B, N]
    area = (x1 - x0) * (y1 - y0)
    w = (torch.minimum(x1.unsqueeze(2), x1.unsqueeze(1)) - torch.maximum(x0.unsqueeze(2), x0.unsqueeze(1))).clamp(min=0)
    h = (torch.minimum(y1.unsqueeze(2), y1.unsqueeze(1)) - torch.maximum(y0.unsqueeze(2), y0.unsqueeze(1))).clamp(min=0)
    inter = w * h
    return inter / (area.unsqueeze(2) + area.unsqueeze(1) - inter)


def cluster_nms(boxes, valid, iou_threshold: float, iterations: int = CLUSTER_NMS_ITERATIONS, groups=None):
    """Keep mask ``[B, N]`` (float 0/1) of greedy IoU-NMS per image, as a fixed number of dense steps.

    boxes: ``[B, N, 4]`` pixels, sorted best first (entry j outranks entry i when j < i, so ties go to
        the earlier entry, as a sorted ``TopK`` leaves them);
    valid: ``[B, N]`` bool, the entries that take part (the others are neither kept nor suppress);
    iou_threshold: a box is suppressed by a kept, better box whose IoU with it is above this;
    groups: optional ``[B, N]`` values; boxes only suppress boxes of an equal value (FPN levels).

    With ``S[i, j] = 1`` where j outranks and overlaps i, one step is
    ``keep = valid * (S @ keep == 0)``, starting from ``keep = valid`` ("Cluster-NMS").  Greedy NMS is the
    unique fixed point of that step (by induction over the ranks), and after t steps every box whose
    longest chain of better, overlapping valid boxes (i overlapped by j, j by k, ...) has at most t links
    has its greedy decision: enough iterations give exactly greedy NMS, and a mask that one more step
    leaves unchanged is greedy NMS's.  One step (Fast NMS) is not enough: it also lets suppressed boxes
    suppress.  0/1 inputs keep the product a count (zero or not) in any float precision.  ONNX: ``MatMul``
    and element-wise ops on ``[B, N, N]``; no data-dependent shapes.
    """
    n = int(boxes.shape[1])  # a constant under tracing: static shapes
    index = torch.arange(n)
    outranks = index.unsqueeze(0) < index.unsqueeze(1)  # [N, N] constant: [i, j] is j < i
    suppresses = (pairwise_iou(boxes) > iou_threshold) & outranks
    if groups is not None:
        suppresses = suppresses & (groups.unsqueeze(2) == groups.unsqueeze(1))
    suppresses = suppresses.to(torch.float32)
    valid = valid.to(torch.float32)
    keep = valid
    for _ in range(int(iterations)):
        hits = torch.matmul(suppresses, keep.unsqueeze(-1)).squeeze(-1)  # kept boxes that suppress each box
        keep = valid * (hits < 0.5).to(torch.float32)
    return keep


#: normalised GridSample coordinate of samples RoI Align counts as 0: far enough outside the feature map
#: that all four bilinear corners are padding (zeros)
OUTSIDE = -4.0


def roi_align_grid(features, boxes, output_size, spatial_scale: float, sampling_ratio: int):
    """torchvision's ``roi_align(aligned=False)`` with a fixed ``sampling_ratio``, as ``GridSample``.

    features: ``[B, C, Hf, Wf]`` float32 feature map.
    boxes: ``[B, n, 4]`` RoIs (x_min, y_min, x_max, y_max) in image pixels; ``spatial_scale`` (feature
        pixels per image pixel) maps them onto the feature map.
    output_size: ``(oh, ow)`` bins; sampling_ratio s >= 1: s x s bilinear samples per bin, averaged.
    Returns ``[B * n, C, oh, ow]``, the RoIs image-major (the order of torchvision's ``[K, 5]`` rois with
    image index b for the b-th row of ``boxes``).

    RoI Align semantics reproduced: the RoI spans at least one feature pixel; sample (i, j) of a bin sits
    at ``bin_start + (i + 0.5) * bin_size / s`` (feature pixels); a sample outside ``[-1, Hf] x [-1, Wf]``
    counts as 0, one inside is first clamped to ``[0, Hf - 1] x [0, Wf - 1]`` and then interpolated
    between the pixel centres around it.  ``GridSample(bilinear, align_corners=0)`` puts pixel k's centre
    at normalised ``(2k + 1) / size - 1``; the samples that count as 0 are moved to :data:`OUTSIDE`, where
    ``padding_mode="zeros"`` reads 0 (per axis: a sample is outside when its x or its y is).  Zero padding
    rather than border padding: the clamped coordinates never need it, and onnxruntime's CPU kernel is
    about 6x faster with it.  The s x s average is an ``AveragePool`` over the sample grid.  Agreement
    with torchvision: about 1e-5 x the feature magnitude (float32 rounding of the normalised coordinates).
    """
    if sampling_ratio < 1:
        raise ValueError(f"the tensorrt flavour needs a fixed RoI sampling ratio, got {sampling_ratio}")
    oh, ow = (int(v) for v in output_size)
    s = int(sampling_ratio)
    height, width = int(features.shape[-2]), int(features.shape[-1])
    n = int(boxes.shape[1])
    scaled = boxes * spatial_scale

    def axis(start, end, bins, size):
        """Normalised sample positions ``[B, n, bins * s]`` along one axis (OUTSIDE where RoI Align reads 0)."""
        extent = (end - start).clamp(min=1.0)
        steps = (torch.arange(bins * s, dtype=torch.float32) + 0.5) / s  # in bins
        at = start.unsqueeze(-1) + steps * (extent / bins).unsqueeze(-1)  # feature pixels
        inside = (at >= -1.0) & (at <= float(size))
        normalised = (2.0 * at.clamp(0.0, float(size - 1)) + 1.0) / size - 1.0
        return torch.where(inside, normalised, torch.full_like(normalised, OUTSIDE))

    gx = axis(scaled[..., 0], scaled[..., 2], ow, width)  # [B, n, ow * s]
    gy = axis(scaled[..., 1], scaled[..., 3], oh, height)  # [B, n, oh * s]
    # grid [B, n * oh * s, ow * s, 2]: (x, y) of every sample, the RoIs stacked along the grid's height
    grid_x = gx.unsqueeze(2) + torch.zeros_like(gy).unsqueeze(3)
    grid_y = gy.unsqueeze(3) + torch.zeros_like(gx).unsqueeze(2)
    grid = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, n * oh * s, ow * s, 2)
    samples = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # s x s windows never straddle two RoIs (each RoI owns oh * s grid rows)
    pooled = F.avg_pool2d(samples, kernel_size=s, stride=s)  # [B, C, n * oh, ow]
    channels = int(features.shape[1])
    return pooled.reshape(-1, channels, n, oh, ow).transpose(1, 2).reshape(-1, channels, oh, ow)


class ExportableDetector(nn.Module):
    """The trained ``FasterRCNN`` re-expressed with static shapes (see module docstring).

    model: a torchvision FasterRCNN in eval mode whose transform only
        normalises (no resizing), with a single foreground class.
    input_size: ``(H, W)`` the graph is built for.
    channels: input channels (2 for a model with depth context, see ``ModelConfig.depth_context_um``).
    half: run the convolutional and fully connected parts in float16; box
        decoding, NMS and RoI Align coordinates stay float32.
    target: ``"onnxruntime"`` (ONNX ``NonMaxSuppression`` and ``RoiAlign``) or ``"tensorrt"`` (plain ops:
        :func:`cluster_nms`, :func:`roi_align_grid`); see the module docstring.
    rpn_candidates: tensorrt flavour only, the RPN candidates (best first, all levels) its NMS looks at;
        default :data:`RPN_CANDIDATES_PER_PROPOSAL` x the proposals kept, at most all candidates and
        TensorRT's TopK limit.
    unit_clips: export the backbone's ReLU6 activations as ``HardSigmoid`` (see :class:`UnitClip`) where
        that rewrite reproduces them (default); False keeps them as plain ``Clip(0, 6)``, the form
        onnxruntime's int8 quantiser understands (it quantises ``Clip`` and ``Relu``, not ``HardSigmoid``).
        ``model`` itself is never changed.
    """

    def __init__(self, model, input_size, half: bool = False, channels: int = 1, target: str = "onnxruntime",
                 rpn_candidates: int | None = None, unit_clips: bool = True):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
        self.target = target
        self.channels = int(channels)
        model = copy.deepcopy(model.eval())  # ``model`` itself is never changed
        self.dtype = torch.float16 if half else torch.float32
        rewritten = with_unit_clips(model.backbone, self.channels) if unit_clips else None
        if rewritten is not None:
            model.backbone = rewritten
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
        if target == "tensorrt" and self.sampling_ratio < 1:
            raise ValueError(f"the tensorrt flavour needs a fixed RoI sampling ratio, got {self.sampling_ratio}")
        total = sum(min(self.pre_nms_top_n, n) for n in self.level_sizes)
        wanted = rpn_candidates or RPN_CANDIDATES_PER_PROPOSAL * self.post_nms_top_n
        self.rpn_candidates = int(min(max(wanted, self.post_nms_top_n), total, TENSORRT_MAX_TOPK))

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
        if self.target == "tensorrt":
            return self._proposals_dense_nms(boxes, scores, offsets)
        keep = BatchedNMS.apply(boxes + offsets.unsqueeze(-1), scores, self.post_nms_top_n, self.rpn_nms)
        ranked = torch.where(keep > 0, scores, torch.full_like(scores, INVALID - 1))
        k = min(self.post_nms_top_n, ranked.shape[1])
        top, order = ranked.topk(k, dim=1)
        return _gather_rows(boxes, order), top > INVALID - 0.5

    def _proposals_dense_nms(self, boxes, scores, offsets):
        """Tensorrt flavour of the RPN NMS: :func:`cluster_nms` over the best ``rpn_candidates`` only.

        boxes ``[B, N, 4]`` pixels, scores ``[B, N]`` (INVALID: masked), offsets ``[B, N]`` (the level).
        A box is only ever suppressed by better boxes, so the NMS decisions for the best M candidates
        need nothing outside them: the result equals the full NMS whenever they hold ``post_nms_top_n``
        survivors.  Levels do not suppress each other (torchvision's batched NMS).
        """
        top, order = scores.topk(self.rpn_candidates, dim=1)  # best first
        candidates = _gather_rows(boxes, order)
        keep = cluster_nms(candidates, top >= 0, self.rpn_nms, groups=torch.gather(offsets, 1, order))
        ranked = torch.where(keep > 0, top, torch.full_like(top, INVALID - 1))
        k = min(self.post_nms_top_n, self.rpn_candidates)
        best, chosen = ranked.topk(k, dim=1)
        return _gather_rows(candidates, chosen), best > INVALID - 0.5

    # --- box head ---------------------------------------------------------------------------------------------------

    def _roi_features(self, features, proposals, batch):
        rois = proposals.reshape(-1, 4)
        if self.target == "onnxruntime":  # RoiAlign's [K, 5] rois: image index, box
            image_index = proposals[..., 0] * 0 + torch.arange(batch, dtype=rois.dtype).view(-1, 1)  # [B, n]
            image_index = image_index.reshape(-1)
            rois5 = torch.cat([image_index.unsqueeze(1), rois], dim=1)
        # torchvision's LevelMapper (canonical 224 px at level 4)
        area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
        level = torch.floor(4 + torch.log2(torch.sqrt(area) / 224) + torch.tensor(1e-6, dtype=rois.dtype))
        level = torch.clamp(level, min=self.k_min, max=self.k_max) - self.k_min
        pooled = None
        for k, (i, scale) in enumerate(zip(self.roi_feature_index, self.roi_scales)):
            if self.target == "tensorrt":
                out = roi_align_grid(features[i].float(), proposals, self.roi_output, scale, self.sampling_ratio)
            else:
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
        if self.target == "tensorrt":  # sorted best first, then the dense NMS
            scores, order = scores.topk(int(n), dim=1)  # int: a constant k under tracing
            boxes = _gather_rows(boxes, order)
            keep = cluster_nms(boxes, scores >= 0, self.box_nms)
        else:
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
