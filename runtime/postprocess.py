"""From a model's raw K boxes per slice to the detections that count.

The paper's rule (section *Integration across imaging depth*): keep boxes
with confidence > 0.5, drop boxes larger than the area cap (2000 px = 20 µm²
at 0.1 µm/px), and of duplicates whose pairwise IoM exceeds 0.5 keep only the
most confident.
"""

from __future__ import annotations

import numpy as np

from .boxes import as_boxes, box_area, iom_nms

SCORE_THRESHOLD = 0.5
#: boxes above this build tracks; a track needs one box above the model's score threshold (see tracking)
LINK_THRESHOLD = SCORE_THRESHOLD
MAX_AREA_UM2 = 20.0
NMS_IOM = 0.5


def filter_detections(boxes, scores, score_threshold: float = SCORE_THRESHOLD,
                      max_area_px: float | None = 2000.0, nms_iom: float = NMS_IOM):
    """Apply score threshold, area cap and IoM-NMS to one slice's boxes.

    boxes: ``(K, 4)`` pixels; scores: ``(K,)``.  ``max_area_px`` is the area
    cap in square pixels (None for no cap).  Returns ``(boxes (M, 4),
    scores (M,))`` sorted by decreasing score.
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = s > score_threshold
    keep &= box_area(b) > 0
    if max_area_px is not None:
        keep &= box_area(b) <= max_area_px
    b, s = b[keep], s[keep]
    kept = iom_nms(b, s, nms_iom)
    return b[kept], s[kept]


def above(detections, threshold: float) -> list:
    """Filtered slice detections ``[(boxes (N, 4), scores (N,)), ...]``, only the boxes scoring above ``threshold``.

    Greedy NMS keeps the same boxes, in the same order, whether weaker boxes
    are removed before or after it, so this equals :func:`filter_detections`
    run at ``threshold`` (if the detections were filtered at or below it).
    """
    return [(boxes[scores > threshold], scores[scores > threshold]) for boxes, scores in detections]


def link_threshold_for(score_threshold: float, link_threshold: float | None) -> float:
    """The confidence above which boxes are tracked: ``link_threshold``, never above ``score_threshold``.

    None means the score threshold itself (every box must pass it, no hysteresis).
    """
    return float(score_threshold if link_threshold is None else min(link_threshold, score_threshold))


def max_area_pixels(max_area_um2: float, pixel_size_um: float) -> float:
    """The area cap in square pixels for a cap in µm² at the given pixel size (µm)."""
    return float(max_area_um2) / float(pixel_size_um) ** 2
