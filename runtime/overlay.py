"""The overlay picture: a stack's maximum projection with each spine's box and id, readable at a glance.

* contrast from the projection's own percentiles (:data:`CONTRAST_PERCENTILES`),
  so neither a bright soma nor a dim stack washes it out;
* small images are enlarged (nearest neighbour, a whole factor) to about
  :data:`TARGET_SIDE_PX` pixels on the longer side, so boxes and numbers stay legible;
* each label sits on a dark plate beside its box, at the first of several
  places (above, below, right, left) where it overlaps no other label;
* optionally each spine's best box score after its id (``12 .93``);
* the confident boxes the shaft check removed (:mod:`~spinedet.runtime.attachment`),
  merged across slices, as thin magenta boxes without a label, so what was
  dropped can be judged beside what was kept.

Boxes are ``(x_min, y_min, x_max, y_max)`` in pixels of the projection.
"""

from __future__ import annotations

import numpy as np

from .boxes import iom_nms

CONTRAST_PERCENTILES = (0.5, 99.7)
TARGET_SIDE_PX = 1024
BOX_COLOUR = np.array([255, 220, 0], dtype=np.uint8)
DETACHED_COLOUR = np.array([255, 0, 255], dtype=np.uint8)
PLATE_COLOUR = np.array([0, 0, 0], dtype=np.uint8)

_GLYPHS = {  # 3x5 pixel font
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", " ": "000000000000000",
}


def overlay_png(projection: np.ndarray, spines, scores: bool = False, detached=()) -> bytes:
    """PNG bytes of the grey ``(Y, X)`` projection with each spine's mean box and id (and best score) drawn,
    and the ``detached`` ``(z, box, score)`` of a run (:attr:`DetectionResult.detached
    <spinedet.runtime.detector.DetectionResult.detached>`) in magenta."""
    import imagecodecs

    return imagecodecs.png_encode(overlay_rgb(projection, spines, scores, detached))


def display_scale(shape) -> int:
    """The whole factor that enlarges an image of ``shape`` (Y, X) to about TARGET_SIDE_PX on its longer side."""
    return max(1, int(round(TARGET_SIDE_PX / max(shape))))


def grey_8bit(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8, its CONTRAST_PERCENTILES mapped to 0 and 255."""
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, CONTRAST_PERCENTILES)
    if high <= low:
        low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return (np.clip((image - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def detached_boxes(detached) -> np.ndarray:
    """``(M, 4)`` pixel boxes: the ``(z, box, score)`` the shaft check removed, one box per place (the most
    confident of those overlapping at IoM > 0.5, as the paper's NMS)."""
    if not len(detached):
        return np.zeros((0, 4))
    boxes = np.array([box for _, box, _ in detached], dtype=np.float64)
    scores = np.array([score for _, _, score in detached], dtype=np.float64)
    return boxes[iom_nms(boxes, scores, 0.5)]


def overlay_rgb(projection: np.ndarray, spines, scores: bool = False, detached=()) -> np.ndarray:
    """The overlay as an ``(sY, sX, 3)`` uint8 array, s = :func:`display_scale`."""
    grey = grey_8bit(projection)
    scale = display_scale(grey.shape)
    grey = np.repeat(np.repeat(grey, scale, axis=0), scale, axis=1)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    font = max(1, scale // 2 + (1 if max(projection.shape) >= 256 else 0))
    line = 2 if scale >= 4 else 1
    boxes = [tuple((np.asarray(s.mean_box, dtype=np.float64) * scale).round().astype(int)) for s in spines]
    texts = [str(s.spine_id) + (" " + f"{float(np.max(s.scores)):.2f}".lstrip("0") if scores else "") for s in spines]
    for x0, y0, x1, y1 in (detached_boxes(detached) * scale).round().astype(int):
        _rectangle(rgb, x0, y0, x1 - 1, y1 - 1, 1, DETACHED_COLOUR)
    for x0, y0, x1, y1 in boxes:
        _rectangle(rgb, x0, y0, x1 - 1, y1 - 1, line)
    for text, spot in zip(texts, label_spots(boxes, texts, font, rgb.shape)):
        rgb[spot[1]:spot[3], spot[0]:spot[2]] = PLATE_COLOUR
        _text(rgb, text, spot[0] + font, spot[1] + font, font)
    return rgb


def label_spots(boxes, texts, font: int, shape) -> list:
    """Where each label's plate goes: ``(x0, y0, x1, y1)`` pixels beside its box, overlapping no earlier label
    where one of the candidate places allows it.  boxes: ``(x0, y0, x1, y1)`` in overlay pixels."""
    placed = []
    for box, text in zip(boxes, texts):
        w, h = _text_size(text, font)
        placed.append(_free_spot(placed, box, w, h, shape))
    return placed


def _text_size(text: str, font: int) -> tuple[int, int]:
    """Width and height in pixels of ``text`` on its plate (one font pixel of margin around it)."""
    return (4 * len(text) - 1) * font + 2 * font, 5 * font + 2 * font


def _free_spot(placed, box, w, h, shape):
    """``(x0, y0, x1, y1)`` of a w x h label next to ``box``, overlapping no placed label where possible."""
    x0, y0, x1, y1 = box
    ny, nx = shape[:2]
    candidates = [(x0, y0 - h - 1), (x0, y1 + 1), (x1 + 1, y0), (x0 - w - 1, y0), (x1 - w, y0 - h - 1),
                  (x1 - w, y1 + 1)]
    spots = []
    for cx, cy in candidates:
        cx, cy = int(np.clip(cx, 0, max(nx - w, 0))), int(np.clip(cy, 0, max(ny - h, 0)))
        spots.append((cx, cy, min(cx + w, nx), min(cy + h, ny)))
    for spot in spots:
        if not any(_overlap(spot, other) for other in placed):
            return spot
    return spots[0]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _rectangle(rgb, x0, y0, x1, y1, line: int, colour=BOX_COLOUR):
    ny, nx = rgb.shape[:2]
    xs, ys = np.clip([x0, x1], 0, nx - 1), np.clip([y0, y1], 0, ny - 1)
    for k in range(line):
        rgb[ys[0]:ys[1] + 1, np.clip(xs + [k, -k], 0, nx - 1)] = colour
        rgb[np.clip(ys + [k, -k], 0, ny - 1), xs[0]:xs[1] + 1] = colour


def _text(rgb, text, x, y, font):
    ny, nx = rgb.shape[:2]
    for k, char in enumerate(text):
        glyph = np.array([int(b) for b in _GLYPHS[char]], dtype=bool).reshape(5, 3)
        glyph = np.kron(glyph, np.ones((font, font), dtype=bool))
        gx = x + k * 4 * font
        if gx >= nx or y >= ny or gx < 0 or y < 0:
            continue
        h, w = min(glyph.shape[0], ny - y), min(glyph.shape[1], nx - gx)
        rgb[y:y + h, gx:gx + w][glyph[:h, :w]] = BOX_COLOUR
