"""Spines over days: one identity per spine across imaging sessions of the same field.

Chronic imaging images the same dendrites again and again; this module
follows every spine through such a series, session by session:

1. **register** each session's stack to the first session (or to its
   predecessor, chained): an in-plane rotation about the field's centre,
   searched within ``±max_rotation_deg`` on the maximum projections, then a
   3D translation with sub-voxel precision from the cross-correlation of the
   volumes (:func:`register`; scikit-image's ``phase_cross_correlation``
   does the work), judged by how well the registered projections agree;
   a session that shares too little with its reference is refused;
2. **link** its spines to the tracks so far: their centroids are mapped into
   the first session's frame (µm) and assigned one to one to the tracks'
   last known positions, minimising the total distance (the Hungarian
   method, :func:`scipy.optimize.linear_sum_assignment`), never farther
   apart than ``max_distance_um`` (:func:`link`); the distance is
   ``sqrt(dx² + dy² + (z_weight dz)²)``, depth counting half by default
   (:data:`Z_WEIGHT`: centroids are less certain in z);
3. a track that finds no spine in a session **misses** it; after more than
   ``max_gap`` misses in a row it is closed, and a spine found there later
   starts a new track.  Sessions where the track's place lies outside the
   stack (a shift moved it out of the field) are not misses.

Every spine then has a **state** (:func:`track_states`):

``stable``     seen in the first and the last session
``gained``     first seen after the first session, seen in the last
``lost``       seen in the first session, not seen from some session on
``transient``  gained and lost within the series
``partial``    its place lies outside some session's stack (within
               :data:`EDGE_XY_UM` of the field's side or :data:`EDGE_Z_UM` of
               its top or bottom slice), so whether it was there cannot be
               told; partial spines are listed but not counted in the
               per-session summary (the common field of all sessions)

Units: positions and shifts are µm, in ``(z, y, x)`` order like
``voxel_size``; x to the right and y down from the image's top-left corner,
as in the per-session tables (a box edge at pixel ``c`` lies at ``c *
pixel_size`` µm, slice ``k`` at ``k * z_step`` µm).  Sessions are numbered
from 0 (session 0 is the first, the frame everything is reported in).
Rotations are in degrees, positive from x towards y (clockwise as the image
is displayed).

Adding a session never redoes the earlier ones: :func:`start_series` takes
the first session, :func:`add_session` the next one (registration, linking,
states); :func:`track_sessions` is the two in a loop.

>>> series = track_sessions(results, stacks)      # DetectionResults and their (Z, Y, X) stacks
>>> series = add_session(series, result, stack)   # one more session later
>>> series.summary(), series.states(), series.registrations
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import SpineDetError

#: µm: spines farther apart than this (after registration) are never the same spine
MAX_DISTANCE_UM = 1.5
#: how much a difference in depth counts in the linking distance (1: plain 3D distance).  A spine's centroid is
#: less certain in z (the middle of its 2-8 slice range, under a PSF 3-6 times longer than wide): on synthetic
#: series the two centroids of a true pair differed by up to 0.9 µm in x and y but 1.8 µm in z
Z_WEIGHT = 0.5
#: sessions in a row a spine may be missed and keep its identity
MAX_GAP = 1
#: degrees: in-plane rotations searched between two sessions (0: translation only)
MAX_ROTATION_DEG = 2.0
#: degrees between the rotations tried (the best is refined between its neighbours)
ROTATION_STEP_DEG = 0.5
#: what sessions are registered to: the first one, or each to its predecessor (chained)
REFERENCES = ("first", "previous")
#: sub-voxel precision of the translation: 1 / this voxel
UPSAMPLE_FACTOR = 20
#: µm: the sizes (SDs of a difference of Gaussians) of the projections' detail compared by ``quality``
QUALITY_BAND_UM = (0.2, 1.0)
#: two sessions whose registered projections' detail correlates less than this (Pearson, on the overlap) share
#: too little.  On synthetic series, sessions of one field scored 0.57-0.98 (0.57: one dendrite in an empty
#: noisy field), pairs of different fields 0.04-0.33.
MIN_QUALITY = 0.4
#: ... or whose registered fields overlap less than this fraction of the reference's field (xy area x z extent)
MIN_OVERLAP = 0.3
#: µm: the detail compared when searching the rotation
ROTATION_BAND_UM = (0.1, 0.4)
#: µm: a spine this close to the side of a session's field is out of its view (see module docstring)
EDGE_XY_UM = 1.0
#: µm: ... or this close to its top or bottom slice
EDGE_Z_UM = 0.5
#: µm: the smooth background taken off every slice before registering (a Gaussian of this SD in x and y)
BACKGROUND_SIGMA_UM = 1.0
#: the volume is binned in x and y for registration until it has at most this many voxels
MAX_REGISTRATION_VOXELS = 1 << 24
STATES = ("stable", "gained", "lost", "transient", "partial")


# --- registration -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Registration:
    """A rigid map from one session's frame into another's (the first session's, for a series).

    A point ``p`` (z, y, x µm) of the moving session lies in the reference
    frame at ``z + shift_um[0]`` and, in the plane, at ``R (p_yx - c) + c +
    shift_um[1:]``, where ``c`` = :attr:`centre_um` and ``R`` turns by
    ``rotation_deg`` (x towards y).

    quality: Pearson correlation of the two maximum projections' detail (a
    band-pass, :data:`QUALITY_BAND_UM`) over their overlap after registration
    (1: identical; unrelated fields give about 0).
    overlap: fraction of the reference stack the moving one covers after
    registration (xy area times z extent).  reference: the
    session registered to (for a series: 0 with ``reference="first"``, the
    previous one when chained; None for the first session itself).
    """

    shift_um: tuple = (0.0, 0.0, 0.0)
    rotation_deg: float = 0.0
    centre_um: tuple = (0.0, 0.0)
    quality: float = 1.0
    overlap: float = 1.0
    reference: int | None = None

    def apply(self, points_zyx) -> np.ndarray:
        """Points ``(N, 3)`` (z, y, x µm) of the moving frame in the reference frame."""
        points = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
        c = np.asarray(self.centre_um, dtype=np.float64)
        out = points + np.asarray(self.shift_um, dtype=np.float64)
        out[:, 1:] = (points[:, 1:] - c) @ _rotation(self.rotation_deg).T + c + self.shift_um[1:]
        return out

    def invert(self, points_zyx) -> np.ndarray:
        """Points ``(N, 3)`` of the reference frame in the moving frame (the inverse of :meth:`apply`)."""
        points = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
        c = np.asarray(self.centre_um, dtype=np.float64)
        out = points - np.asarray(self.shift_um, dtype=np.float64)
        out[:, 1:] = (out[:, 1:] - c) @ _rotation(self.rotation_deg) + c
        return out

    def then(self, outer: "Registration") -> "Registration":
        """This map followed by ``outer`` (moving -> this reference -> ``outer``'s reference), as one map."""
        c1, c2 = np.asarray(self.centre_um, dtype=np.float64), np.asarray(outer.centre_um, dtype=np.float64)
        # R2 (R1 (p - c1) + c1 + s1 - c2) + c2 + s2  =  R2 R1 (p - c1) + c1 + s
        shift_yx = (_rotation(outer.rotation_deg) @ (c1 + np.asarray(self.shift_um[1:]) - c2) + c2
                    + np.asarray(outer.shift_um[1:]) - c1)
        shift = (self.shift_um[0] + outer.shift_um[0], float(shift_yx[0]), float(shift_yx[1]))
        return replace(self, shift_um=shift, rotation_deg=self.rotation_deg + outer.rotation_deg,
                       reference=outer.reference)


def _rotation(deg: float) -> np.ndarray:
    """2x2 matrix turning (y, x) column vectors by ``deg`` degrees, x towards y."""
    a = math.radians(deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def registration_image(stack) -> np.ndarray:
    """A stack (``(Z, Y, X)`` array, a :class:`~spinedet.runtime.stacks.Stack` or a ``(Y, X)`` image) as float32
    ``(Z, Y, X)`` for :func:`register`: intensities mapped by their 1st and 99.5th percentiles to 0..1 (so a
    brighter session and a saturated shaft weigh alike), read slice by slice."""
    slices = [np.asarray(stack[k], dtype=np.float32) for k in range(len(stack))] if not isinstance(
        stack, np.ndarray) else None
    volume = np.stack(slices) if slices is not None else np.asarray(stack, dtype=np.float32)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3 or volume.size == 0:
        raise SpineDetError(f"expected a (Z, Y, X) stack or a (Y, X) image, got shape {volume.shape}")
    low, high = np.percentile(volume[:: max(1, len(volume) // 16)], (1.0, 99.5))
    if high <= low:
        high = low + 1.0
    return np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32)


def register(reference, moving, voxel_size, max_rotation_deg: float = MAX_ROTATION_DEG,
             upsample_factor: int = UPSAMPLE_FACTOR) -> Registration:
    """The rigid map from ``moving``'s frame into ``reference``'s (µm; see :class:`Registration`).

    reference, moving: ``(Z, Y, X)`` volumes (or ``(Y, X)`` images) of the
    same field, as :func:`registration_image` gives them; they may differ in
    size (the smaller is padded).  voxel_size: ``(z, y, x)`` µm, the same for
    both.  The in-plane rotation is searched in steps of
    :data:`ROTATION_STEP_DEG` within ``±max_rotation_deg`` (0: none) on the
    maximum projections: each candidate rotation of the moving projection
    (``skimage.transform.rotate``) is translated into place by
    cross-correlation and scored by the correlation of the overlap; the best
    is refined between its neighbours.  The 3D translation is then the peak
    of the cross-correlation of the two volumes, the moving one turned by
    that angle, both without their smooth background
    (:data:`BACKGROUND_SIGMA_UM`) and tapered towards their top and bottom
    slices, found to ``1 / upsample_factor`` voxel by
    ``skimage.registration.phase_cross_correlation`` (with
    ``normalization=None``: the phase-normalised form whitens the noise too
    and failed on a sparse, noisy synthetic field, 20 µm off, where plain
    cross-correlation was within 0.5 µm).  Volumes above
    :data:`MAX_REGISTRATION_VOXELS` are binned in x and y first.  Precision
    measured on synthetic data: 0.1 pixel and 0.1 slice for a pure shift;
    0.02-0.2 µm in x and y and 0.01-0.5 µm in z between sessions of a
    synthetic series (other spines, sizes, noise and background).

    Nothing is refused here; the caller judges ``quality`` and ``overlap``.
    """
    from skimage.registration import phase_cross_correlation

    ref, mov = _as_volume(reference), _as_volume(moving)
    dz, dy, dx = (float(v) for v in voxel_size)
    if abs(dy - dx) > 1e-6 * dx:
        raise SpineDetError(f"registration needs square pixels, got {dy} x {dx} µm")
    ref, mov = _common_shape(ref, mov)
    ref, mov, binning = _binned(ref, mov)
    px = dx * binning
    centre_px = (np.array(ref.shape[1:]) - 1) / 2.0          # the field's centre in pixel-centre coordinates
    centre_um = tuple(float(v) for v in (np.array(ref.shape[1:]) * px / 2))
    ref_mip, mov_mip = ref.max(axis=0), mov.max(axis=0)
    angle = _best_rotation(ref_mip, mov_mip, max_rotation_deg, px) if max_rotation_deg > 0 else 0.0
    ref, mov = _flattened(ref, px), _flattened(mov, px)
    turned = _rotated(mov, angle)
    taper = _z_taper(ref.shape[0])
    shift, _, _ = phase_cross_correlation(ref * taper, turned * taper, upsample_factor=upsample_factor,
                                        normalization=None)
    shift = np.asarray(shift, dtype=np.float64)
    if ref.shape[0] == 1:
        shift[0] = 0.0
    # skimage turns the picture by `angle` counter-clockwise as displayed: x towards -y, our -angle
    registration = Registration((float(shift[0] * dz), float(shift[1] * px), float(shift[2] * px)), -angle,
                                centre_um)
    quality, overlap = _judge(ref_mip, mov_mip, ref.shape[0], registration, centre_px, px, dz)
    return replace(registration, quality=quality, overlap=overlap)


def _flattened(volume: np.ndarray, px: float) -> np.ndarray:
    """Each slice less its smooth background (a Gaussian blur of :data:`BACKGROUND_SIGMA_UM` in x and y), so that
    uneven background and haze, which differ between sessions, do not pull the correlation (on synthetic series it
    cut the z error from 0.32 to 0.20 µm RMS)."""
    from scipy import ndimage

    sigma = BACKGROUND_SIGMA_UM / px
    return volume - ndimage.gaussian_filter(volume, (0, sigma, sigma), mode="nearest")


def _z_taper(depth: int) -> np.ndarray:
    """A Tukey window along z (``(Z, 1, 1)``): the top and bottom slices fade out, so the correlation does not
    wrap the stack's top onto its bottom (on synthetic 20-slice series it halves the z error); none below 8 slices."""
    if depth < 8:
        return np.ones((depth, 1, 1), np.float32)
    from scipy.signal.windows import tukey

    return tukey(depth, 0.5).astype(np.float32)[:, None, None]


def _as_volume(image) -> np.ndarray:
    volume = np.asarray(image, dtype=np.float32)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3 or min(volume.shape) == 0:
        raise SpineDetError(f"expected a (Z, Y, X) stack or a (Y, X) image, got shape {volume.shape}")
    return volume


def _common_shape(a: np.ndarray, b: np.ndarray):
    """Both volumes padded with zeros (after their ends) to the larger size in each axis."""
    shape = np.maximum(a.shape, b.shape)

    def pad(v):
        return np.pad(v, [(0, int(n - m)) for n, m in zip(shape, v.shape)]) if tuple(shape) != v.shape else v

    return pad(a), pad(b)


def _binned(a: np.ndarray, b: np.ndarray):
    """Both volumes binned in x and y by the smallest whole factor that keeps them under the voxel cap."""
    factor = max(1, math.ceil(math.sqrt(a.size / MAX_REGISTRATION_VOXELS)))
    if factor == 1:
        return a, b, 1
    from skimage.transform import downscale_local_mean

    return (downscale_local_mean(a, (1, factor, factor)).astype(np.float32),
            downscale_local_mean(b, (1, factor, factor)).astype(np.float32), factor)


def _rotated(volume: np.ndarray, angle: float) -> np.ndarray:
    """Every slice of ``volume`` turned by ``angle`` degrees about its centre (skimage's sense), zeros outside."""
    if angle == 0.0:
        return volume
    from skimage.transform import rotate

    return np.moveaxis(rotate(np.moveaxis(volume, 0, -1), angle, order=1, mode="constant", cval=0.0,
                              preserve_range=True), -1, 0).astype(np.float32)


def _detail(mip: np.ndarray, band_um, px: float) -> np.ndarray:
    """The detail of a projection within a band of sizes: a difference of Gaussians of SDs ``band_um`` µm."""
    from skimage.filters import difference_of_gaussians

    return difference_of_gaussians(mip, band_um[0] / px, band_um[1] / px).astype(np.float32)


def _best_rotation(ref_mip: np.ndarray, mov_mip: np.ndarray, max_deg: float, px: float) -> float:
    """The rotation (skimage's sense, degrees) within ±max_deg that best matches the projections.

    Compared is the projections' fine detail (:data:`ROTATION_BAND_UM`): the broad shafts hardly change as
    they turn, their edges and the spines do (on synthetic series this cut the error from 0.4 to 0.1°).
    """
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    ref_mip, mov_mip = _detail(ref_mip, ROTATION_BAND_UM, px), _detail(mov_mip, ROTATION_BAND_UM, px)

    def score(angle):
        turned = _rotated(mov_mip[None], float(angle))[0]
        shift, _, _ = phase_cross_correlation(ref_mip, turned, upsample_factor=10, normalization=None)
        inside = _rotated(np.ones_like(mov_mip)[None], float(angle))[0] > 0.5
        moved = ndimage.shift(turned, shift, order=1)
        mask = ndimage.shift(inside.astype(np.float32), shift, order=0) > 0.5
        return _pearson(ref_mip, moved, mask)

    steps = max(1, int(math.ceil(max_deg / ROTATION_STEP_DEG)))
    angles = np.linspace(-max_deg, max_deg, 2 * steps + 1)
    scores = np.array([score(a) for a in angles])
    best = int(np.argmax(scores))
    step = float(angles[1] - angles[0])
    # a finer look around the best: its neighbours at a quarter step, then the parabola through the three best
    fine = np.array([angles[best] - step / 4, angles[best], angles[best] + step / 4])
    fine_scores = np.array([score(fine[0]), scores[best], score(fine[2])])
    y0, y1, y2 = fine_scores
    curvature = y0 - 2 * y1 + y2
    if curvature < 0 and y1 >= max(y0, y2):
        return float(fine[1] + 0.5 * (y0 - y2) / curvature * (step / 4))
    return float(fine[int(np.argmax(fine_scores))])


def _pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if mask.sum() < 16:
        return 0.0
    a, b = a[mask].astype(np.float64), b[mask].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _judge(ref_mip, mov_mip, depth: int, registration: Registration, centre_px, px, dz):
    """``(quality, overlap)`` of a registration: the correlation of the projections' detail
    (:data:`QUALITY_BAND_UM`) on their overlap, and the fraction of the reference stack covered."""
    from skimage.transform import EuclideanTransform, warp

    # output (reference) pixel u0 -> input (moving) pixel: u = R^-1 (u0 - s - c) + c, as (x, y) for skimage
    angle = math.radians(registration.rotation_deg)
    s = np.array(registration.shift_um[1:]) / px                   # (y, x) pixels
    cy, cx = centre_px
    cos, sin = math.cos(angle), math.sin(angle)
    # R^-1 in (x, y): x' = x cos + y sin, y' = -x sin + y cos
    linear = np.array([[cos, sin], [-sin, cos]])
    offset = np.array([cx, cy]) - linear @ (np.array([cx, cy]) + s[::-1])
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = linear, offset
    transform = EuclideanTransform(matrix=matrix)
    moved = warp(_detail(mov_mip, QUALITY_BAND_UM, px), transform, order=1, mode="constant", cval=0.0,
                 preserve_range=True)
    inside = warp(np.ones(mov_mip.shape, np.float32), transform, order=0, mode="constant", cval=0.0) > 0.5
    quality = _pearson(_detail(ref_mip, QUALITY_BAND_UM, px), moved, inside)
    z_overlap = 1.0 if depth == 1 else max(0.0, 1.0 - abs(registration.shift_um[0]) / (depth * dz))
    return quality, float(inside.mean() * z_overlap)


# --- one session's spines -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionSpines:
    """The spines of one session as linking sees them; arrays of length S.

    spine_id: the spine's id in that session's own tables.  position_um:
    ``(S, 3)`` centroid (z, y, x) µm in the session's own frame.
    fluorescence: integrated fluorescence (raw units x voxels).  boxes:
    ``(S, 4)`` mean box (x_min, y_min, x_max, y_max) px, for overlays.
    shape: the session's stack ``(Z, Y, X)``; voxel_size ``(z, y, x)`` µm.
    spines: the :class:`~spinedet.runtime.spines.Spine` records, if known.
    """

    spine_id: np.ndarray
    position_um: np.ndarray
    fluorescence: np.ndarray
    boxes: np.ndarray
    shape: tuple
    voxel_size: tuple
    spines: tuple = ()

    def __len__(self) -> int:
        return len(self.spine_id)


def session_spines(result, voxel_size=None) -> SessionSpines:
    """A :class:`~spinedet.runtime.detector.DetectionResult` as :class:`SessionSpines`.

    voxel_size: ``(z, y, x)`` µm where the result's own is unknown (the
    detector then assumed one: pass the same).  Centroids: the centre of the
    spine's mean box in x and y, the middle of its slice range in z.
    """
    known = result.voxel_size
    given = (None, None, None) if voxel_size is None else tuple(voxel_size)
    dz = known.z_um or given[0]
    px = known.x_um or given[2]
    if not px or not dz:
        raise SpineDetError("the session's voxel size is unknown: pass voxel_size=(z, y, x) in µm")
    spines = list(result.spines)
    position = np.array([(s.centroid_px[2] * dz, s.centroid_px[1] * px, s.centroid_px[0] * px) for s in spines],
                        dtype=np.float64).reshape(-1, 3)
    return SessionSpines(np.array([s.spine_id for s in spines], dtype=np.int64), position,
                         np.array([s.fluorescence for s in spines], dtype=np.float64),
                         np.array([s.mean_box for s in spines], dtype=np.float64).reshape(-1, 4),
                         tuple(result.shape), (float(dz), float(px), float(px)), tuple(spines))


# --- linking ------------------------------------------------------------------------------------------------------

def link(track_positions, positions, max_distance_um: float = MAX_DISTANCE_UM, z_weight: float = Z_WEIGHT):
    """One-to-one pairs of tracks and spines minimising their total distance, each pair within ``max_distance_um``.

    track_positions ``(T, 3)``, positions ``(S, 3)``: (z, y, x) µm, one
    frame.  Distance: ``sqrt(dx² + dy² + (z_weight dz)²)`` µm.  Returns
    ``(rows, cols)``: index arrays into tracks and spines, by row.  Pairs
    farther apart are never made; among the pairings that make as many
    pairs as possible within the limit, the one with the least total
    distance wins (scipy's ``linear_sum_assignment``).
    """
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(track_positions, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    empty = np.zeros(0, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return empty, empty
    scale = np.array([z_weight, 1.0, 1.0])
    distance = np.linalg.norm((a[:, None, :] - b[None, :, :]) * scale, axis=2)
    allowed = distance <= max_distance_um
    if not allowed.any():
        return empty, empty
    # a pair beyond the limit costs more than any set of allowed pairs could save
    cost = np.where(allowed, distance, (min(len(a), len(b)) + 1) * max_distance_um + 1.0)
    rows, cols = linear_sum_assignment(cost)
    keep = allowed[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def in_view(positions_first, registration: Registration, shape, voxel_size, edge_xy_um: float = EDGE_XY_UM,
            edge_z_um: float = EDGE_Z_UM) -> np.ndarray:
    """Which points ``(N, 3)`` (µm, first session's frame) lie inside a session's stack, clear of its edges.

    registration: the session's map into the first frame; shape ``(Z, Y, X)``
    and voxel_size ``(z, y, x)`` µm of its stack.  A point within
    ``edge_xy_um`` of the field's side, or within ``edge_z_um`` beyond the top
    or bottom slice's depth... is out of view (a single image: z is not checked).
    """
    local = registration.invert(positions_first)
    depth = (shape[0] - 1) * voxel_size[0]
    height, width = shape[1] * voxel_size[1], shape[2] * voxel_size[2]
    inside = ((local[:, 1] >= edge_xy_um) & (local[:, 1] <= height - edge_xy_um)
              & (local[:, 2] >= edge_xy_um) & (local[:, 2] <= width - edge_xy_um))
    if shape[0] > 1:
        inside &= (local[:, 0] >= edge_z_um) & (local[:, 0] <= depth - edge_z_um)
    return inside


def track_states(present, visible=None) -> list[str]:
    """The state of each track (see the module docstring) from ``present`` ``(T, N)`` bool: track t seen in
    session k.  visible ``(T, N)`` bool: track t's place lies in session k's view (default: everywhere)."""
    present = np.asarray(present, dtype=bool)
    if present.ndim != 2:
        raise ValueError("present must be (tracks, sessions)")
    visible = np.ones_like(present) if visible is None else np.asarray(visible, dtype=bool)
    n = present.shape[1]
    states = []
    for seen, shown in zip(present, visible):
        if not shown.all():
            states.append("partial")
            continue
        hits = np.flatnonzero(seen)
        if len(hits) == 0:
            states.append("partial")   # never seen: cannot be, but say nothing about it
            continue
        first, last = hits[0], hits[-1]
        states.append(("stable" if last == n - 1 else "lost") if first == 0 else
                      ("gained" if last == n - 1 else "transient"))
    return states


def session_summary(present, visible=None) -> list[dict]:
    """Per session, over the tracks in every session's view (not ``partial``):

    ``count``: spines there (first seen at or before, last seen at or after:
    a spine missed within its gap counts); ``detected``: seen in it;
    ``gained``: first seen in it; ``lost``: last seen in the session before;
    ``survival``: of the first session's spines, the fraction still there;
    ``turnover``: (gained + lost) / (2 x total), total the mean count of this
    and the previous session (Holtmaat et al. 2005); the first session has
    gained, lost and turnover None.
    """
    present = np.asarray(present, dtype=bool)
    states = track_states(present, visible)
    keep = np.array([s != "partial" for s in states], dtype=bool)
    seen = present[keep]
    n = present.shape[1]
    first = np.array([np.flatnonzero(r)[0] for r in seen], dtype=np.int64)
    last = np.array([np.flatnonzero(r)[-1] for r in seen], dtype=np.int64)
    founders = first == 0
    rows = []
    for k in range(n):
        count = int(np.sum((first <= k) & (last >= k)))
        row = {"session": k, "count": count, "detected": int(seen[:, k].sum()), "gained": None, "lost": None,
               "survival": float(np.sum(founders & (last >= k)) / founders.sum()) if founders.any() else None,
               "turnover": None}
        if k > 0:
            gained, lost = int(np.sum(first == k)), int(np.sum(last == k - 1))
            total = rows[-1]["count"] + count
            row.update(gained=gained, lost=lost, turnover=(gained + lost) / total if total else None)
        rows.append(row)
    return rows


# --- the series ---------------------------------------------------------------------------------------------------

@dataclass
class SessionSeries:
    """Spines followed through the sessions so far (build it with :func:`start_series` / :func:`add_session`).

    sessions: one :class:`SessionSpines` per session.  registrations: each
    session's map into the first session's frame (:class:`Registration`;
    the first is the identity).  tracks: per session, ``(S_k,)`` the track
    id (1-based) of each of its spines.  positions: per session, ``(S_k, 3)``
    µm, its spines in the first frame.  settings: max_distance_um, max_gap,
    reference, max_rotation_deg, z_weight.  names: a label per session (a file name).
    """

    sessions: list
    registrations: list
    tracks: list
    positions: list
    settings: dict
    names: list = field(default_factory=list)
    n_tracks: int = 0
    _reference_volume: np.ndarray | None = field(default=None, repr=False)
    _previous_volume: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.sessions)

    def presence(self) -> np.ndarray:
        """``(T, N)`` bool: track t (row t - 1) seen in session k."""
        out = np.zeros((self.n_tracks, len(self.sessions)), dtype=bool)
        for k, ids in enumerate(self.tracks):
            out[ids - 1, k] = True
        return out

    def observation_index(self) -> np.ndarray:
        """``(T, N)`` int: the index of track t's spine in session k's arrays, -1 where it was not seen."""
        out = np.full((self.n_tracks, len(self.sessions)), -1, dtype=np.int64)
        for k, ids in enumerate(self.tracks):
            out[ids - 1, k] = np.arange(len(ids))
        return out

    def track_positions(self) -> np.ndarray:
        """``(T, 3)`` µm, first frame: each track's position where it was last seen."""
        out = np.zeros((self.n_tracks, 3))
        for ids, positions in zip(self.tracks, self.positions):
            out[ids - 1] = positions
        return out

    def visibility(self) -> np.ndarray:
        """``(T, N)`` bool: track t's place (where last seen) lies in session k's view (:func:`in_view`)."""
        where = self.track_positions()
        return np.stack([in_view(where, reg, s.shape, s.voxel_size) for reg, s in
                         zip(self.registrations, self.sessions)], axis=1) if self.n_tracks else \
            np.zeros((0, len(self.sessions)), dtype=bool)

    def states(self) -> list[str]:
        """Each track's state (:func:`track_states`), track id t at index t - 1."""
        return track_states(self.presence(), self.visibility())

    def summary(self) -> list[dict]:
        """Per-session counts, gains, losses, survival and turnover (:func:`session_summary`)."""
        return session_summary(self.presence(), self.visibility())


def _check_settings(max_distance_um, max_gap, reference, max_rotation_deg, z_weight):
    if not max_distance_um > 0:
        raise SpineDetError(f"--max-distance must be a positive number of µm, got {max_distance_um}")
    if not z_weight >= 0:
        raise SpineDetError(f"z_weight must be 0 or more, got {z_weight}")
    if max_gap < 0:
        raise SpineDetError(f"--max-gap must be 0 or more sessions, got {max_gap}")
    if reference not in REFERENCES:
        raise SpineDetError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if not 0 <= max_rotation_deg <= 45:
        raise SpineDetError(f"--max-rotation must be 0-45 degrees, got {max_rotation_deg}")


def start_series(spines: SessionSpines, volume, name: str = "session 0", max_distance_um: float = MAX_DISTANCE_UM,
                 max_gap: int = MAX_GAP, reference: str = "first", max_rotation_deg: float = MAX_ROTATION_DEG,
                 z_weight: float = Z_WEIGHT) -> SessionSeries:
    """A series of one session: every spine starts a track (ids 1.. in the session's spine order).

    spines: :class:`SessionSpines` or a DetectionResult (its voxel size must be known).  volume: the
    session's stack (array or Stack), kept for registering later sessions (:func:`registration_image`).
    """
    _check_settings(max_distance_um, max_gap, reference, max_rotation_deg, z_weight)
    if not isinstance(spines, SessionSpines):
        spines = session_spines(spines)
    image = registration_image(volume)
    _check_shape(spines, image, name)
    n = len(spines)
    identity = Registration(centre_um=(spines.shape[1] * spines.voxel_size[1] / 2,
                                       spines.shape[2] * spines.voxel_size[2] / 2))
    settings = {"max_distance_um": float(max_distance_um), "max_gap": int(max_gap), "reference": reference,
                "max_rotation_deg": float(max_rotation_deg), "z_weight": float(z_weight)}
    return SessionSeries([spines], [identity], [np.arange(1, n + 1, dtype=np.int64)],
                         [spines.position_um.copy()], settings, [name], n, image, image)


def _check_shape(spines: SessionSpines, image: np.ndarray, name: str) -> None:
    if tuple(image.shape) != tuple(spines.shape):
        raise SpineDetError(f"{name}: the stack's shape {tuple(image.shape)} is not the detections' {spines.shape}")


def add_session(series: SessionSeries, spines: SessionSpines, volume, name: str | None = None) -> SessionSeries:
    """``series`` with one more session: register it, link its spines, extend the tracks.

    spines: :class:`SessionSpines` or a DetectionResult (where its voxel
    size is unknown, the first session's is taken).  volume: its stack.
    Sessions already in ``series`` are not redone (nor changed: a new
    series is returned).  Raises SpineDetError if the session cannot be
    compared (another voxel size, a single image among stacks) or shares too
    little with its reference (:data:`MIN_QUALITY`, :data:`MIN_OVERLAP`).
    """
    k = len(series.sessions)
    name = name or f"session {k}"
    first = series.sessions[0]
    if not isinstance(spines, SessionSpines):
        spines = session_spines(spines, first.voxel_size)
    if not np.allclose(spines.voxel_size, first.voxel_size, rtol=1e-3):
        raise SpineDetError(f"{name}: voxel size {_size_text(spines.voxel_size)} differs from the first session's "
                            f"{_size_text(first.voxel_size)}; pass --pixel-size and --z-step if they are the same")
    if (spines.shape[0] == 1) != (first.shape[0] == 1):
        raise SpineDetError(f"{name}: single images and z-stacks cannot be compared "
                            f"(shape {spines.shape}, the first session's {first.shape})")
    image = registration_image(volume)
    _check_shape(spines, image, name)
    settings = series.settings
    chained = settings["reference"] == "previous"
    target = series._previous_volume if chained else series._reference_volume
    pair = register(target, image, spines.voxel_size, settings["max_rotation_deg"])
    reference = k - 1 if chained else 0
    pair = replace(pair, reference=reference)
    if pair.quality < MIN_QUALITY or pair.overlap < MIN_OVERLAP:
        raise SpineDetError(
            f"{name}: cannot be registered to session {reference} ({series.names[reference]}): they share too "
            f"little (correlation {pair.quality:.2f} after registration, at least {MIN_QUALITY} needed; overlap "
            f"{pair.overlap:.0%} of the field, at least {MIN_OVERLAP:.0%}); is it the same field of view?")
    to_first = pair.then(series.registrations[k - 1]) if chained else pair
    to_first = replace(to_first, quality=pair.quality, overlap=pair.overlap, reference=reference)
    positions = to_first.apply(spines.position_um)

    # the tracks still open: missed at most max_gap times in a row where their place was in view
    presence = series.presence()
    visible = series.visibility()
    open_tracks = []
    for t in range(series.n_tracks):
        hits = np.flatnonzero(presence[t])
        misses = int(np.sum(visible[t, hits[-1] + 1:])) if len(hits) else 0
        if misses <= settings["max_gap"]:
            open_tracks.append(t)
    open_tracks = np.asarray(open_tracks, dtype=np.int64)
    where = series.track_positions()[open_tracks]
    rows, cols = link(where, positions, settings["max_distance_um"], settings["z_weight"])
    ids = np.zeros(len(spines), dtype=np.int64)
    ids[cols] = open_tracks[rows] + 1
    new = np.flatnonzero(ids == 0)
    ids[new] = series.n_tracks + 1 + np.arange(len(new))
    return SessionSeries(series.sessions + [spines], series.registrations + [to_first], series.tracks + [ids],
                         series.positions + [positions], dict(settings), series.names + [name],
                         series.n_tracks + len(new), series._reference_volume, image)


def _size_text(voxel) -> str:
    return f"{voxel[2]:g} µm/px, z-step {voxel[0]:g} µm"


def track_sessions(sessions, volumes, names=None, max_distance_um: float = MAX_DISTANCE_UM, max_gap: int = MAX_GAP,
                   reference: str = "first", max_rotation_deg: float = MAX_ROTATION_DEG,
                   voxel_size=None, z_weight: float = Z_WEIGHT) -> SessionSeries:
    """Follow spines through a series: :func:`start_series` on the first session, :func:`add_session` on each next.

    sessions: per session a :class:`~spinedet.runtime.detector.DetectionResult`
    (or :class:`SessionSpines`), in session order.  volumes: per session its
    stack, ``(Z, Y, X)`` array or Stack (what the detections were found in).
    names: a label per session for messages.  voxel_size: ``(z, y, x)`` µm
    for results whose own is unknown.  max_distance_um (µm), max_gap
    (sessions), reference (``"first"`` or ``"previous"``), max_rotation_deg
    (degrees), z_weight: see the module docstring.  Needs at least two sessions.
    """
    sessions, volumes = list(sessions), list(volumes)
    if len(sessions) < 2:
        raise SpineDetError(f"a series needs at least two sessions, got {len(sessions)}")
    if len(volumes) != len(sessions):
        raise SpineDetError(f"{len(sessions)} sessions but {len(volumes)} stacks")
    names = list(names) if names is not None else [f"session {k}" for k in range(len(sessions))]
    spines = [s if isinstance(s, SessionSpines) else session_spines(s, voxel_size) for s in sessions]
    series = start_series(spines[0], volumes[0], names[0], max_distance_um, max_gap, reference, max_rotation_deg,
                          z_weight)
    for s, volume, name in zip(spines[1:], volumes[1:], names[1:]):
        series = add_session(series, s, volume, name)
    return series
