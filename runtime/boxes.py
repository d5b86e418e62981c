"""Axis-aligned boxes and their overlap.

One box format everywhere in spinedet: ``(x_min, y_min, x_max, y_max)`` in
pixels of the image the box belongs to, as float arrays of shape ``(N, 4)``.
x is the column axis, y the row axis; a box spans ``x_max - x_min`` pixels.

The overlap measure of the paper is the intersection over the minimum area
(IoM, Vogel et al. Eq. 2), which, unlike IoU, stays high when a small box
lies inside a larger one.
"""

import numpy as np


def as_boxes(boxes, dtype=np.float64) -> np.ndarray:
    """``boxes`` as an array of shape ``(N, 4)`` (float64 unless ``dtype`` says; empty input gives ``(0, 4)``)."""
    array = np.asarray(boxes, dtype=dtype)
    if array.size == 0:
        return np.zeros((0, 4), dtype=dtype)
    return array.reshape(-1, 4)


def box_area(boxes) -> np.ndarray:
    """Area of each box in square pixels, shape ``(N,)``; inverted boxes have area 0."""
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def intersection_area(a, b) -> np.ndarray:
    """Pairwise intersection areas in square pixels, shape ``(len(a), len(b))``."""
    a, b = as_boxes(a), as_boxes(b)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def iom(a, b) -> np.ndarray:
    """Pairwise intersection over minimum area, shape ``(len(a), len(b))``, values in [0, 1].

    A pair where either box has zero area has IoM 0.
    """
    inter = intersection_area(a, b)
    smaller = np.minimum(box_area(a)[:, None], box_area(b)[None, :])
    out = np.zeros_like(inter)
    np.divide(inter, smaller, out=out, where=smaller > 0)
    return out


def iou(a, b) -> np.ndarray:
    """Pairwise intersection over union, shape ``(len(a), len(b))`` (used only to compare models)."""
    inter = intersection_area(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def iom_nms(boxes, scores, threshold: float = 0.5) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression on IoM.

    Boxes are visited from the highest score down; a box is dropped when its
    IoM with an already kept box is greater than ``threshold`` (the paper's
    rule: of duplicates with pairwise IoM > 0.5 only the most confident
    stays).  Returns indices into ``boxes`` in order of decreasing score.
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-s, kind="stable")
    overlapping = iom(b[order], b[order]) > threshold
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if keep[i]:
            # everything of lower score that overlaps a kept box goes
            keep[i + 1:] &= ~overlapping[i, i + 1:]
    return order[keep]


def greedy_pairs(similarity: np.ndarray, threshold: float):
    """Greedy one-to-one matching on a similarity matrix, best pairs first.

    Returns ``(rows, cols)`` index arrays of the pairs whose similarity is at
    least ``threshold``; each row and each column is used at most once.
    Ties are broken by row, then column order, so the result is deterministic.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    candidates = np.flatnonzero(sim.reshape(-1) >= threshold)
    candidates = candidates[np.argsort(-sim.reshape(-1)[candidates], kind="stable")]
    rows, cols = np.divmod(candidates, sim.shape[1])
    used_rows = np.zeros(sim.shape[0], dtype=bool)
    used_cols = np.zeros(sim.shape[1], dtype=bool)
    keep = []
    for k, (r, c) in enumerate(zip(rows, cols)):
        if not used_rows[r] and not used_cols[c]:
            used_rows[r] = used_cols[c] = True
            keep.append(k)
    keep = np.asarray(keep, dtype=np.int64)
    return rows[keep], cols[keep]
