"""Ground truth: which spines are visible in which slice, and their boxes.

Each spine is rendered alone (head and neck separately, noise-free,
blurred like the image).  The spine counts as visible in slice ``k``
when the brightest pixel of its head in that slice

* reaches ``axial_fraction`` (1/4) of the head's in-focus peak (the
  slice is within the head's axial blur, not just in its faint tail),
* stands ``min_snr`` (3) noise standard deviations above the slice's
  background (``SynthStack.detection_floor`` is this level in dye
  units; the noise SD is sqrt(photons of the slice's median voxel +
  read noise²)), and
* is not hidden in its shaft: at that pixel the head alone is at least
  as bright as the dendrites alone.

In a visible slice the box is the minimal box around the pixels where
the head reaches ``edge_fraction`` (1/4) of its in-slice peak, together
with the pixels where the neck reaches 1/4 of the neck's in-slice peak
if the neck is itself within its axial blur (the neck needs no noise
test: annotators box a spine from the shaft to the head even where the
neck is faint).  Each part is outlined at the same fraction of its own
brightness, so the outline follows the physical shape whatever the
brightness; 1/4 rather than 1/2 because human boxes are generous: with
it the boxes are 1-7 µm², like the paper's (median about 2 µm² here, 3
µm² in the paper's test set), and a spine spans 2-8 slices at 0.5 µm
steps.  Boxes are in pixel edges (a box around columns 3..5 is x 3 to
6) and clipped to the image.  Axons, boutons, puncta and haze never get
boxes.

:func:`distractor_boxes` lists where the look-alikes are, for hard-negative
training crops; those are not labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from spinedet.runtime.tables import BoxTable

from .grid import Grid
from .params import SynthParams
from .render import blur_canvas, canvas_around, seen_alone
from .scene import Scene, Spine

if TYPE_CHECKING:
    from .stack import SynthStack


def detection_floor(noise_sd: np.ndarray, attenuation: np.ndarray, p: SynthParams) -> np.ndarray:
    """(Z,) float64: the dye level a head must reach in each slice to stand ``min_snr`` noise SDs out.

    ``noise_sd`` (Z,) photons (:func:`~.camera.slice_noise_sd`), ``attenuation``
    (Z,) (:func:`~.camera.depth_attenuation`); the floor is in dye units,
    like :func:`~.render.render_dye`.
    """
    return p.min_snr * noise_sd / (p.signal_photons * attenuation)


def ground_truth(grid: Grid, scene: Scene, floor: np.ndarray, p: SynthParams) -> BoxTable:
    """The ground-truth table: one row per spine per visible slice, boxes in pixels, score 1.

    Spines never visible get no rows.  Sets every spine's ``head_peak`` and ``neck_peak``.
    """
    ids, zs, boxes = [], [], []
    for spine in scene.spines:
        for k, box in _spine_boxes(grid, spine, scene.dendrites, floor, p):
            ids.append(spine.spine_id)
            zs.append(k)
            boxes.append(box)
    return BoxTable.from_rows(ids, zs, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.ones(len(ids)))


def _spine_boxes(grid: Grid, spine: Spine, dendrites, floor: np.ndarray, p: SynthParams):
    """Rows ``(z, box)`` of one spine under the visibility rule (module docstring).

    ``dendrites`` are the shafts (to tell when the head hides in one),
    ``floor`` (Z,) the detection floor; sets ``spine.head_peak`` and ``spine.neck_peak``.
    """
    z_slices, height, width = grid.shape
    canvas = canvas_around(grid, spine.objects())
    z_um = grid.slice_z_um()
    ks = np.flatnonzero((z_um >= canvas.m0 * grid.fine_step_um)
                        & (z_um <= (canvas.m0 + canvas.data.shape[0] - 1) * grid.fine_step_um))
    head, spine.head_peak = seen_alone(canvas, spine.head, z_um[ks])
    neck, spine.neck_peak = (None, 0.0) if spine.neck is None else seen_alone(canvas, spine.neck, z_um[ks])
    if len(ks) == 0:
        return []
    canvas.data[:] = 0
    for dendrite in dendrites:
        canvas.paint(dendrite)
    shaft = blur_canvas(canvas, z_um[ks])
    # the block's pixel [0, 0] is image pixel (row0, col0); keep only what lies in the image
    row0, col0 = canvas.r0 + grid.pad, canvas.c0 + grid.pad
    ny, nx = head.shape[1:]
    r_lo, r_hi = max(0, -row0), min(ny, height - row0)
    c_lo, c_hi = max(0, -col0), min(nx, width - col0)
    if r_lo >= r_hi or c_lo >= c_hi:
        return []
    out = []
    for n, k in enumerate(ks):
        footprint = _visible_part(head[n], spine.head_peak, floor[k], p)
        if footprint is None:
            continue
        # hidden in its shaft: the dendrite outshines the head at the head's brightest pixel
        i, j = np.unravel_index(np.argmax(head[n]), head[n].shape)
        if shaft[n, i, j] > head[n, i, j]:
            continue
        if neck is not None:
            neck_part = _visible_part(neck[n], spine.neck_peak, 0.0, p)
            if neck_part is not None:
                footprint |= neck_part
        r, c = np.nonzero(footprint[r_lo:r_hi, c_lo:c_hi])
        if len(r) == 0:
            continue
        out.append((int(k), (c.min() + c_lo + col0, r.min() + r_lo + row0,
                             c.max() + c_lo + col0 + 1, r.max() + r_lo + row0 + 1)))
    return out


def _visible_part(values: np.ndarray, focus_peak: float, floor: float, p: SynthParams):
    """Pixels (a mask like ``values``) of one spine part in one slice, or None if not visible there."""
    peak = float(values.max())
    if peak <= 0 or peak < p.axial_fraction * focus_peak or peak < floor:
        return None
    return values >= p.edge_fraction * peak


def distractor_boxes(stack: SynthStack) -> list:
    """Boxes around the spine look-alikes (boutons and puncta) in each slice, for hard-negative crops.

    Returns a list of ``Z`` arrays ``(N, 4)`` in pixels (x_min, y_min, x_max,
    y_max).  A ball is listed in slice ``k`` when the slice lies within its
    radius plus two axial PSF sigmas; its box is its centre ± (radius + 2
    lateral PSF sigmas), clipped to the image.  These are *not* labels: they
    only say where training crops can find something spine-like that is not
    a spine.
    """
    grid = stack.grid
    balls = list(stack.scene.boutons) + list(stack.scene.puncta)
    z_um = grid.slice_z_um()
    height, width = grid.shape[1:]
    if not balls:
        return [np.zeros((0, 4), np.float32) for _ in z_um]
    centre = np.array([b.centre for b in balls], dtype=np.float64)        # (N, 3) z, y, x µm
    radius = np.array([b.radius for b in balls], dtype=np.float64)
    half = (radius + 2.0 * grid.sigma_xy_um) / grid.pixel_um
    cy, cx = centre[:, 1] / grid.pixel_um, centre[:, 2] / grid.pixel_um
    boxes = np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    inside = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
    reach = radius + 2.0 * grid.sigma_z_um
    return [boxes[inside & (np.abs(centre[:, 0] - z) <= reach)].astype(np.float32) for z in z_um]
