"""3D spines: what a finished track tells a biologist.

A :class:`Spine` is built from a closed track: its slice range, its
per-slice boxes, the z-averaged box, confidences, centroid, and the
integrated fluorescence inside its 3D box minus the local background (the
paper's proxy for synaptic strength).

The 3D box (as in the paper) is, for every slice from the first to the last
where the spine was detected, that slice's box.  Fluorescence is measured
per slice by :func:`box_fluorescence` on the raw intensities; a slice inside
the range where the detector missed the spine (the tracker allows one)
counts as the mean of its two neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tracking import Track


@dataclass(frozen=True)
class Spine:
    """One detected 3D spine.

    spine_id: 1-based, in the order spines are confirmed from the top slice down
        (the first slice where a box passes the score threshold).
    z: slice numbers where the spine was detected (increasing).
    boxes: ``(len(z), 4)`` (x_min, y_min, x_max, y_max) in pixels, per detected slice.
    scores: detector confidence per detected slice.
    z_first, z_last: inclusive slice range.
    mean_box: z-averaged box ``(4,)`` in pixels; mean_score: mean confidence.
    centroid_px: ``(x, y, z)``, x and y in pixels (centre of the mean box), z in slices.
    centroid_um: ``(x, y, z)`` in µm, None where the voxel size is unknown.
    fluorescence: integrated intensity inside the 3D box minus the local
        background, in raw intensity units x voxels (the file's grey values
        summed over the box's voxels).
    background: mean local background per voxel, raw intensity units.
    """

    spine_id: int
    z: tuple
    boxes: np.ndarray
    scores: np.ndarray
    z_first: int
    z_last: int
    mean_box: np.ndarray
    mean_score: float
    centroid_px: tuple
    centroid_um: tuple | None
    fluorescence: float
    background: float

    @property
    def n_slices(self) -> int:
        return self.z_last - self.z_first + 1


def box_fluorescence(image: np.ndarray, boxes) -> np.ndarray:
    """Integrated intensity and local background of each box on one slice.

    image: ``(Y, X)`` raw intensities.  boxes: ``(N, 4)`` pixels.  The box
    covers the pixels whose centres lie inside it.  Background comes from a
    frame around the box, as wide as half the box's larger side (at least 2
    pixels), cut into its four sides (the strips above, below, left and right
    of the box, corners left out): it is the median of the darkest side.  A spine sits beside its bright
    shaft, which fills one or more sides of the frame (between two shafts,
    most of it), so the median of the whole frame would count the shaft as
    background; the side away from the shaft is the background around it.
    Returns ``(N, 2)``: column 0
    the sum inside minus background times the pixel count (raw intensity
    units x pixels), column 1 the background per pixel (raw intensity units).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.zeros((len(boxes), 2))
    ny, nx = image.shape
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        c0, r0 = int(np.clip(np.ceil(x0 - 0.5), 0, nx)), int(np.clip(np.ceil(y0 - 0.5), 0, ny))
        c1, r1 = int(np.clip(np.ceil(x1 - 0.5), 0, nx)), int(np.clip(np.ceil(y1 - 0.5), 0, ny))
        c1, r1 = max(c1, min(c0 + 1, nx)), max(r1, min(r0 + 1, ny))
        inside = image[r0:r1, c0:c1].astype(np.float64)
        pad = max(2, int(round(0.5 * max(c1 - c0, r1 - r0))))
        R0, R1, C0, C1 = max(r0 - pad, 0), min(r1 + pad, ny), max(c0 - pad, 0), min(c1 + pad, nx)
        sides = (image[R0:r0, c0:c1], image[r1:R1, c0:c1], image[r0:r1, C0:c0], image[r0:r1, c1:C1])
        medians = [float(np.median(side)) for side in sides if side.size]
        background = min(medians) if medians else 0.0
        out[k] = inside.sum() - background * inside.size, background
    return out


def spine_from_track(track: Track, z_step_um: float | None, pixel_size_um: float | None) -> Spine:
    """The :class:`Spine` of a closed track whose ``values`` are ``(fluorescence, background)`` pairs per slice."""
    z = np.asarray(track.z)
    boxes = np.asarray(track.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(track.scores, dtype=np.float64)
    values = np.asarray(track.values, dtype=np.float64).reshape(len(z), -1)
    # slices in the range where the detector missed: mean of the neighbours
    gaps = np.setdiff1d(np.arange(z[0], z[-1] + 1), z)
    filled = [values[:, 0]]
    for g in gaps:
        before, after = values[z < g][-1, 0], values[z > g][0, 0]
        filled.append([(before + after) / 2])
    fluorescence = float(np.sum(np.concatenate(filled)))
    background = float(np.mean(values[:, 1])) if values.shape[1] > 1 else float("nan")
    mean_box = boxes.mean(axis=0)
    cx, cy = (mean_box[0] + mean_box[2]) / 2, (mean_box[1] + mean_box[3]) / 2
    cz = float((z[0] + z[-1]) / 2)
    centroid_um = None
    if pixel_size_um:
        centroid_um = (cx * pixel_size_um, cy * pixel_size_um, cz * z_step_um if z_step_um else None)
    return Spine(track.spine_id, tuple(int(v) for v in z), boxes, scores, int(z[0]), int(z[-1]), mean_box,
                 float(scores.mean()), (float(cx), float(cy), cz), centroid_um, fluorescence, background)
