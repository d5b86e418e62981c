"""Fitting slices of any size and pixel size to a model's fixed input.

* Pixel size: a slice whose pixel size differs from the model's by more
  than the card's tolerance is resampled to the model's pixel size
  (:func:`resize`), and boxes are scaled back.
* Size: a slice smaller than the input is zero-padded (after normalisation,
  so padding reads as background); a larger one is cut into overlapping
  tiles (:func:`tile_origins`).  Boxes that touch an inner tile edge are
  dropped, since the overlap is wider than a spine and the neighbouring tile
  sees that spine whole; duplicates in the overlap are then removed by the
  runtime's IoM-NMS.  This is also the paper's answer to more than K spines
  in one image.
"""

from __future__ import annotations

import numpy as np

from .boxes import as_boxes


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (pixels) of tiles of size ``tile`` covering ``length`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = int(np.ceil((length - tile) / step)) + 1
    return [int(round(v)) for v in np.linspace(0, length - tile, n)]


def plan_tiles(shape, tile_shape, overlap: int) -> list[tuple[int, int]]:
    """``(y0, x0)`` of every tile for an image of ``shape`` (Y, X)."""
    return [(y0, x0) for y0 in tile_origins(shape[0], tile_shape[0], overlap)
            for x0 in tile_origins(shape[1], tile_shape[1], overlap)]


def cut_tile(image: np.ndarray, origin, tile_shape) -> np.ndarray:
    """The ``tile_shape`` window at ``origin`` (y0, x0), zero-padded where the image ends."""
    y0, x0 = origin
    window = image[y0:y0 + tile_shape[0], x0:x0 + tile_shape[1]]
    if window.shape == tuple(tile_shape):
        return window
    out = np.zeros(tile_shape, dtype=image.dtype)
    out[:window.shape[0], :window.shape[1]] = window
    return out


def inner_edge_mask(boxes, origin, tile_shape, image_shape, margin: float = 2.0) -> np.ndarray:
    """True for tile boxes (tile pixels) that do NOT touch a tile edge lying inside the image."""
    b = as_boxes(boxes)
    y0, x0 = origin
    keep = np.ones(len(b), dtype=bool)
    if x0 > 0:
        keep &= b[:, 0] > margin
    if y0 > 0:
        keep &= b[:, 1] > margin
    if x0 + tile_shape[1] < image_shape[1]:
        keep &= b[:, 2] < tile_shape[1] - margin
    if y0 + tile_shape[0] < image_shape[0]:
        keep &= b[:, 3] < tile_shape[0] - margin
    return keep


def scaled_shape(shape, factor: float) -> tuple[int, int]:
    """Image shape after scaling by ``factor`` (at least 1 pixel)."""
    return max(1, int(round(shape[0] * factor))), max(1, int(round(shape[1] * factor)))


def resize(image: np.ndarray, out_shape) -> np.ndarray:
    """Resample a 2D float image to ``out_shape`` (Y, X) by area-weighted linear interpolation.

    Pixel centres are aligned (pixel i covers [i, i+1)).  When shrinking by
    more than 2x the image is first averaged over whole-pixel blocks so that
    small bright structures are not aliased away.
    """
    image = np.asarray(image, dtype=np.float32)
    for axis in (0, 1):
        factor = image.shape[axis] / out_shape[axis]
        block = int(factor // 2) * 2 if factor >= 2 else 1
        if block > 1:
            n = image.shape[axis] // block * block
            image = np.take(image, np.arange(n), axis=axis)
            new_shape = list(image.shape)
            new_shape[axis:axis + 1] = [n // block, block]
            image = image.reshape(new_shape).mean(axis=axis + 1)
        image = _interp_axis(image, out_shape[axis], axis)
    return image


def _interp_axis(image: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = image.shape[axis]
    if n_in == n_out:
        return image
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    centres = np.clip(centres, 0, n_in - 1)
    lo = np.floor(centres).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (centres - lo).astype(np.float32)
    shape = [1, 1]
    shape[axis] = n_out
    w = w.reshape(shape)
    return np.take(image, lo, axis=axis) * (1 - w) + np.take(image, hi, axis=axis) * w
