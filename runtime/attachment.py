"""Shaft attachment: a spine grows from a dendrite; a lone blob does not.

The detector's confident false spines on real in-vivo slices are mostly
things that look like a spine head but are attached to no dendrite: an
isolated punctum several µm from any shaft, a patch of a large
out-of-focus cloud, a bouton on a faint axon.  This check keeps a box only
if it lies within ``max_distance_um`` of a *large* bright structure of the
image around it (the slice's depth context for a stack, the image itself
for a 2D image; :meth:`SpineDetector.shaft_reach
<spinedet.runtime.detector.SpineDetector.shaft_reach>` says which slices):

1. bin the image to pixels of about 0.2 µm and smooth it with a Gaussian of
   ``smooth_um`` (µm; shot noise);
2. bright = above Otsu's threshold of the smoothed image (scikit-image),
   but never above halfway from the background (the median) to the boxes'
   median peak (a soma far brighter than the dendrites must not hide them);
3. large = a connected bright region of at least ``min_area_um2`` (µm²) or
   of ``relative_area`` x the area of the image's largest bright region,
   whichever is less (a field that shows one short stretch of dendrite),
   or one cut by the image border (a dendrite crossing a crop continues
   outside it, however little of it the crop shows);
4. a box is attached when its nearest pixel is within ``max_distance_um``
   of a large region (a spine's head, neck and shaft are one bright region
   when the neck is visible; the distance allows for a neck too faint to be).

No length, width or fixed intensity is asked of a shaft, so the rule does
not depend on the field of view or on how bright the labelling is: what it
asks is that a box touch (or nearly touch) something much larger than a
spine head.  Distances and areas are in µm at the image's pixel size.
A fixed length rule (components longer than 5-8 µm) was tried first and
dropped a quarter of the true spines on small real fields; this one keeps
all 1,378 labelled spines of real2d-mdg (see models/README.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from .boxes import as_boxes

#: Gaussian smoothing before the threshold, µm
SMOOTH_UM = 0.2
#: a bright region at least this large (µm²) is a shaft, not a head or punctum
MIN_AREA_UM2 = 10.0
#: ... or at least this share of the image's largest bright region, whichever is less
RELATIVE_AREA = 0.2
#: a box within this distance (µm) of a shaft is attached to it
MAX_DISTANCE_UM = 1.0
#: the regions are found on the image binned to pixels of at most this size (µm): a quarter of the work at
#: 0.1 µm/px, distances in steps of 0.2 µm against the 1 µm allowed
WORK_PIXEL_UM = 0.2


def binned(image: np.ndarray, pixel_size_um: float) -> tuple[np.ndarray, int]:
    """``(image, factor)``: ``image`` (raw ``(Y, X)``) averaged over ``factor`` x ``factor`` pixel blocks, the
    factor the largest integer that keeps the binned pixels within :data:`WORK_PIXEL_UM` (µm); edges are
    padded with their last row or column.  Binned pixel ``(i, j)`` covers pixels ``[i f, (i + 1) f)``."""
    image = np.asarray(image, dtype=np.float32)
    factor = max(1, int(WORK_PIXEL_UM / pixel_size_um + 1e-9))
    if factor == 1:
        return image, 1
    h, w = image.shape
    padded = np.pad(image, ((0, -h % factor), (0, -w % factor)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.mean(axis=(1, 3)), factor


def large_regions(image: np.ndarray, pixel_size_um: float, smooth_um: float = SMOOTH_UM,
                  min_area_um2: float = MIN_AREA_UM2, relative_area: float = RELATIVE_AREA,
                  boxes=None) -> tuple[np.ndarray | None, int]:
    """``(mask, factor)``: the large bright regions of ``image`` (raw ``(Y, X)``; pixel size in µm) as a
    boolean mask of the image binned by ``factor`` (:func:`binned`).

    boxes: the detections ``(N, 4)`` (pixels) the mask will judge.  Bright
    is above Otsu's threshold, but never above the midpoint between the
    background (the median) and the typical box's peak: a soma or a vessel
    far brighter than the dendrites would otherwise lift Otsu's threshold
    above the dendrites, and every spine would seem detached.
    The mask is None when the image has no contrast at all (nothing can be said).
    """
    image, factor = binned(image, pixel_size_um)
    pixel = pixel_size_um * factor
    smoothed = ndi.gaussian_filter(image, max(smooth_um / pixel, 0.5))
    if not np.ptp(smoothed) > 0:
        return None, factor
    threshold = threshold_otsu(smoothed)
    if boxes is not None and len(boxes):
        background = float(np.median(smoothed))
        cells = _cells(boxes, factor, smoothed.shape)
        peak = float(np.median([smoothed[a:c + 1, l:r + 1].max() for l, a, r, c in cells]))
        threshold = min(threshold, background + 0.5 * (peak - background))
    bright = smoothed > threshold
    labels, n = ndi.label(bright, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return bright, factor
    area = np.bincount(labels.ravel(), minlength=n + 1) * pixel ** 2
    large = area >= min(min_area_um2, relative_area * area[1:].max())
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    large[border] = True
    large[0] = False
    return large[labels], factor


def _cells(boxes, factor: int, shape) -> np.ndarray:
    """``(N, 4)`` int: the binned pixels ``(x0, y0, x1, y1)``, inclusive, that boxes ``(N, 4)`` (pixels) cover."""
    b = as_boxes(boxes) / factor
    h, w = shape
    x0 = np.clip(np.floor(b[:, 0]).astype(int), 0, w - 1)
    y0 = np.clip(np.floor(b[:, 1]).astype(int), 0, h - 1)
    x1 = np.clip(np.ceil(b[:, 2]).astype(int), x0, w - 1)
    y1 = np.clip(np.ceil(b[:, 3]).astype(int), y0, h - 1)
    return np.stack([x0, y0, x1, y1], axis=1)


def shaft_distance(image: np.ndarray, boxes, pixel_size_um: float, smooth_um: float = SMOOTH_UM,
                   min_area_um2: float = MIN_AREA_UM2, within_um: float = 10.0) -> np.ndarray:
    """Distance in µm from each box ``(N, 4)`` (pixels of ``image``) to the nearest large bright region.

    0 for a box that touches one; inf when there is none within ``within_um``
    (µm) of the box; nan for every box when the image has no contrast.
    Measured on the binned image (:func:`binned`: steps of up to
    :data:`WORK_PIXEL_UM`), and only in a window around each box, so the
    cost grows with the boxes, not with the image.
    """
    b = as_boxes(boxes)
    if len(b) == 0:
        return np.zeros(0)
    mask, factor = large_regions(image, pixel_size_um, smooth_um, min_area_um2, boxes=b)
    if mask is None:
        return np.full(len(b), np.nan)
    pixel = pixel_size_um * factor
    reach = int(np.ceil(within_um / pixel))
    x0, y0, x1, y1 = _cells(b, factor, mask.shape).T
    out = np.full(len(b), np.inf)
    for k in range(len(b)):
        top, left = max(y0[k] - reach, 0), max(x0[k] - reach, 0)
        ys, xs = np.nonzero(mask[top:y1[k] + reach + 1, left:x1[k] + reach + 1])
        if len(ys):
            dx = np.maximum(np.maximum(x0[k] - (xs + left), (xs + left) - x1[k]), 0)
            dy = np.maximum(np.maximum(y0[k] - (ys + top), (ys + top) - y1[k]), 0)
            nearest = float(np.sqrt((dx * dx + dy * dy).min())) * pixel
            out[k] = nearest if nearest <= within_um else np.inf
    return out


def attached(image: np.ndarray, boxes, pixel_size_um: float, max_distance_um: float = MAX_DISTANCE_UM,
             smooth_um: float = SMOOTH_UM, min_area_um2: float = MIN_AREA_UM2) -> np.ndarray:
    """Boolean ``(N,)``: which boxes lie within ``max_distance_um`` (µm) of a large bright region of ``image``.

    An image without contrast keeps every box.
    """
    distance = shaft_distance(image, boxes, pixel_size_um, smooth_um, min_area_um2, within_um=max_distance_um)
    return np.isnan(distance) | (distance <= max_distance_um)
