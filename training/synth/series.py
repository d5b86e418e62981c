"""A synthetic time series: the same dendrites imaged in several sessions, with spines gained and lost.

Chronic in-vivo imaging images one field of view again and again over days.
:func:`make_series` imitates it for testing and measuring ``spine-track``:

* one scene (:func:`~.scene.make_scene`) is drawn on a field larger than the
  stack, so that a shifted or rotated session still sees dendrites at its edges;
* session 0 images it as it is; every later session ``k`` sees it moved by a
  rigid pose, a 3D shift drawn uniformly within ``±max_shift_um`` per axis
  and an in-plane rotation within ``±max_rotation_deg`` about the field's
  centre (both relative to session 0);
* between consecutive sessions a ``loss_fraction`` of the living spines near
  the field is removed for good and ``gain_fraction`` (of the same count) new
  spines grow at random places on the shafts, at least
  :data:`NEW_SPINE_CLEARANCE_UM` from every spine of the series so far (fewer
  when no such place is found); surviving heads change size
  multiplicatively, radius x exp(N(0, ``size_drift``)) (sizes stay
  log-normally spread, as measured in vivo);
* each session has its own background, its own brightness (signal photons
  x U(0.8, 1.25)) and its own detector noise.

Every spine keeps its id (``spine_id``, from 0) in every session: the ground
truth table of session ``k`` (``series.sessions[k].table``) names the spines
visible there, by that persistent id, under the single-stack visibility rule
(:mod:`.truth`).

Coordinates: a point ``p`` (z, y, x µm) of session 0's frame (the world)
appears in session ``k`` at ``R_k (p - c) + c + t_k`` in the plane, where
``c`` is the field's centre, ``R_k`` the rotation by ``rotation_deg[k]`` (x
towards y) and ``t_k`` the pose's shift; z moves by ``t_k[0]``.
:meth:`SynthSeries.to_first` maps session coordinates back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .grid import Grid
from .scene import Ball, Scene, Spine, Tube, _make_spine, _unit, make_scene
from .stack import SynthStack, _validated_shape, render_scene, sampled_params

#: per-session brightness: signal photons times a factor uniform in this range
SESSION_BRIGHTNESS = (0.8, 1.25)
#: µm: head radii stay within this range as they drift
HEAD_RADIUS_LIMITS = (0.15, 1.0)
#: µm: a new spine's head grows at least this far from every head of the series so far, living or lost (closer,
#: an annotator could not tell a new spine from an old one come back, and the truth would be a guess)
NEW_SPINE_CLEARANCE_UM = 2.0


@dataclass
class SynthSeries:
    """A synthetic imaging series and its ground truth.

    sessions     one :class:`~.stack.SynthStack` per session; each table's
                 ``spine_id`` is the spine's persistent id
    shift_um     (N, 3) each session's pose shift (z, y, x) µm (row 0 is zero)
    rotation_deg (N,) each session's in-plane rotation, degrees (x towards y)
    alive        per session, the set of spine ids that exist in it (visible or not)
    head_radius  per session, ``{spine_id: head radius µm}``
    in_common    ``{spine_id: bool}``: the head lies inside every session's
                 stack (x, y within the field, z within the slices), so its
                 fate can be seen in all of them
    position_um  ``{spine_id: (z, y, x)}`` head centre in session 0's frame
    settings     the series settings (shift, rotation, turnover, drift)
    """

    sessions: list
    shift_um: np.ndarray
    rotation_deg: np.ndarray
    alive: list
    head_radius: list
    in_common: dict
    position_um: dict
    settings: dict = field(default_factory=dict)

    @property
    def voxel_size(self) -> tuple:
        return self.sessions[0].voxel_size

    def centre_um(self) -> np.ndarray:
        """(y, x) µm of the field's centre, the rotation's pivot."""
        _, ny, nx = self.sessions[0].image.shape
        px = self.voxel_size[1]
        return np.array([ny * px / 2, nx * px / 2])

    def to_session(self, k: int, points_zyx) -> np.ndarray:
        """Points (N, 3) z, y, x µm of session 0's frame as seen in session ``k``."""
        return _pose_forward(np.asarray(points_zyx, float).reshape(-1, 3), self.shift_um[k], self.rotation_deg[k],
                             self.centre_um())

    def to_first(self, k: int, points_zyx) -> np.ndarray:
        """Points (N, 3) z, y, x µm of session ``k`` in session 0's frame (the inverse of :meth:`to_session`)."""
        points = np.asarray(points_zyx, float).reshape(-1, 3)
        c = self.centre_um()
        out = points - np.concatenate([[0.0], c]) - self.shift_um[k]
        out[:, 1:] = out[:, 1:] @ _rotation(self.rotation_deg[k])   # R^T applied to row vectors: R^-1
        out[:, 1:] += c
        return out

    def registration(self, k: int):
        """Session ``k``'s true map into session 0's frame, as the tracker reports one
        (:class:`spinedet.runtime.sessions.Registration`)."""
        from spinedet.runtime.sessions import Registration

        rotation = -float(self.rotation_deg[k])
        shift_yx = -(_rotation(rotation) @ self.shift_um[k][1:])
        return Registration((-float(self.shift_um[k][0]), float(shift_yx[0]), float(shift_yx[1])), rotation,
                            tuple(float(v) for v in self.centre_um()), reference=None if k == 0 else 0)

    def box_centroids(self, k: int) -> dict:
        """``{spine_id: (z, y, x) µm}`` in session ``k``'s own frame: the centroid of each visible spine's
        ground-truth boxes there, as the tracker takes it from detections (centre of the mean box in x and y,
        middle of the slice range in z)."""
        table = self.sessions[k].table
        dz, px = self.voxel_size[0], self.voxel_size[2]
        out = {}
        for i in dict.fromkeys(table.spine_id.tolist()):
            mine = table.spine_id == i
            box = table.boxes[mine].mean(axis=0)
            z = table.z[mine]
            out[int(i)] = np.array([(z.min() + z.max()) / 2 * dz, (box[1] + box[3]) / 2 * px, (box[0] + box[2]) / 2 * px])
        return out

    def presence(self) -> dict:
        """``{spine_id: [visible in session k for k in sessions]}`` from the ground-truth tables."""
        ids = sorted(set().union(*self.alive))
        seen = [set(s.table.spine_id.tolist()) for s in self.sessions]
        return {i: [i in v for v in seen] for i in ids if any(i in v for v in seen)}


def _rotation(deg: float) -> np.ndarray:
    """2x2 matrix rotating (y, x) column vectors by ``deg`` (x towards y)."""
    a = math.radians(deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def _pose_forward(points: np.ndarray, shift, rotation_deg, centre) -> np.ndarray:
    out = points.copy()
    out[:, 1:] = (points[:, 1:] - centre) @ _rotation(rotation_deg).T + centre
    return out + np.asarray(shift, float)


def _moved(obj, move):
    """A copy of a Tube or Ball with its points passed through ``move`` ((N, 3) -> (N, 3))."""
    if isinstance(obj, Ball):
        return Ball(move(obj.centre[None])[0], obj.radius, obj.brightness)
    return Tube(move(obj.points), obj.radius.copy(), obj.brightness)


def _moved_spine(spine: Spine, move, head_radius: float) -> Spine:
    head = Ball(move(spine.head.centre[None])[0], head_radius, spine.head.brightness)
    neck = _moved(spine.neck, move) if spine.neck is not None else None
    return Spine(spine.spine_id, spine.kind, head, neck, move(spine.base[None])[0])


def make_series(seed=0, shape=(20, 512, 512), sessions: int = 4, max_shift_um=(1.5, 4.0, 4.0),
                max_rotation_deg: float = 1.5, loss_fraction: float = 0.1, gain_fraction: float = 0.1,
                size_drift: float = 0.15, **overrides) -> SynthSeries:
    """Make a synthetic series of ``sessions`` stacks of one field, with persistent spine ids.

    ``seed``: int or numpy Generator.  ``shape``: (slices, height, width) px of every session.
    ``max_shift_um``: (z, y, x) µm, the largest shift of a session against session 0 per axis
    (a single number: the same for all three).  ``max_rotation_deg``: the largest in-plane
    rotation.  ``loss_fraction``, ``gain_fraction``: of the living spines near the field,
    the share lost and the share newly gained between consecutive sessions (rounded counts).
    ``size_drift``: SD of the log head radius change per session.  ``overrides``: any
    :class:`~.params.SynthParams` field, as for :func:`~.stack.make_stack` (one value per
    series: all sessions share pixel size, z-step, PSF and scene).
    """
    shape = _validated_shape(shape)
    if sessions < 1:
        raise ValueError(f"a series needs at least 1 session, got {sessions}")
    max_shift = np.broadcast_to(np.asarray(max_shift_um, dtype=float), (3,)).copy()
    for name, value in (("max_shift_um", max_shift.min()), ("max_rotation_deg", max_rotation_deg),
                        ("size_drift", size_drift)):
        if not value >= 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")
    for name, value in (("loss_fraction", loss_fraction), ("gain_fraction", gain_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    rng = np.random.default_rng(seed)
    p = sampled_params(rng, overrides)
    px = p.pixel_size_um
    grid = Grid(shape, px, p.z_step_um, p.psf_sigma_xy_um, p.psf_sigma_z_um)
    depth, height, width = grid.extent_um()
    centre = np.array([height / 2, width / 2])

    shifts = np.zeros((sessions, 3))
    rotations = np.zeros(sessions)
    for k in range(1, sessions):
        shifts[k] = rng.uniform(-1, 1, 3) * max_shift
        rotations[k] = rng.uniform(-1, 1) * max_rotation_deg

    # the world: a scene on a field wide enough for every pose, placed so that session 0 sees its middle
    reach = max_shift[1:].max() + math.hypot(height, width) / 2 * math.sin(math.radians(max_rotation_deg)) + 3.0
    margin = int(math.ceil(reach / px))
    world_grid = Grid((shape[0], shape[1] + 2 * margin, shape[2] + 2 * margin), px, p.z_step_um,
                      p.psf_sigma_xy_um, p.psf_sigma_z_um)
    world = make_scene(rng, world_grid, p)
    offset = np.array([0.0, margin * px, margin * px])

    def to_field(points):
        return points - offset

    world = Scene([_moved(d, to_field) for d in world.dendrites],
                  [_moved_spine(s, to_field, s.head.radius) for s in world.spines],
                  [_moved(a, to_field) for a in world.axons], [_moved(b, to_field) for b in world.boutons],
                  [_moved(b, to_field) for b in world.puncta],
                  [path - offset[1:] for path in world.haze_paths], world.haze_radius, world.haze_brightness)

    # spines near the field take part (the others are never imaged); later sessions gain new ones
    def near_field(c):
        return -1.0 < c[1] < height + 1.0 and -1.0 < c[2] < width + 1.0

    spines = {s.spine_id: s for s in world.spines if near_field(s.head.centre)}
    radius = {i: s.head.radius for i, s in spines.items()}
    alive_now = sorted(spines)
    next_id = max(s.spine_id for s in world.spines) + 1 if world.spines else 0
    alive, radii = [set(alive_now)], [dict(radius)]
    for k in range(1, sessions):
        n = len(alive_now)
        lost = set(rng.choice(alive_now, size=int(round(loss_fraction * n)), replace=False).tolist()) if n else set()
        alive_now = [i for i in alive_now if i not in lost]
        for i in alive_now:
            lo, hi = HEAD_RADIUS_LIMITS
            radius[i] = float(np.clip(radius[i] * math.exp(rng.normal(0.0, size_drift)), lo, hi))
        for _ in range(int(round(gain_fraction * n))):
            spine = _new_spine(rng, p, next_id, world.dendrites, [spines[i] for i in alive_now],
                               [spines[i] for i in spines], near_field)
            if spine is None:
                continue
            spines[next_id] = spine
            radius[next_id] = spine.head.radius
            alive_now.append(next_id)
            next_id += 1
        alive.append(set(alive_now))
        radii.append({i: radius[i] for i in alive_now})

    stacks = []
    base_photons = p.signal_photons
    for k in range(sessions):
        def move(points, k=k):
            return _pose_forward(np.asarray(points, float).reshape(-1, 3), shifts[k], rotations[k], centre)

        brightness = 1.0 if k == 0 else rng.uniform(*SESSION_BRIGHTNESS)
        p_k = replace(p, signal_photons=base_photons * brightness)
        scene = Scene([_moved(d, move) for d in world.dendrites],
                      [_moved_spine(spines[i], move, radii[k][i]) for i in sorted(alive[k])],
                      [_moved(a, move) for a in world.axons], [_moved(b, move) for b in world.boutons],
                      [_moved(b, move) for b in world.puncta],
                      [move(np.column_stack([np.zeros(len(path)), path]))[:, 1:] for path in world.haze_paths],
                      world.haze_radius, world.haze_brightness)
        stacks.append(render_scene(rng, grid, scene, p_k))

    position = {i: tuple(float(v) for v in s.head.centre) for i, s in spines.items()}
    in_common = {}
    for i, c in position.items():
        seen = np.array([_pose_forward(np.array([c]), shifts[k], rotations[k], centre)[0] for k in range(sessions)])
        in_common[i] = bool(np.all((seen[:, 0] >= 0) & (seen[:, 0] <= depth) & (seen[:, 1] >= 0)
                                   & (seen[:, 1] <= height) & (seen[:, 2] >= 0) & (seen[:, 2] <= width)))
    settings = {"sessions": sessions, "max_shift_um": [float(v) for v in max_shift],
                "max_rotation_deg": float(max_rotation_deg), "loss_fraction": float(loss_fraction),
                "gain_fraction": float(gain_fraction), "size_drift": float(size_drift)}
    return SynthSeries(stacks, shifts, rotations, alive, radii, in_common, position, settings)


def _new_spine(rng, p, spine_id: int, dendrites, living, every, near_field, tries: int = 50):
    """A new spine on a random shaft point near the field, clear of the living heads and
    :data:`NEW_SPINE_CLEARANCE_UM` from every head so far (None if no place is found)."""
    lengths = np.array([max(len(d.points) - 2, 0) for d in dendrites], dtype=float)
    if not lengths.sum():
        return None
    for _ in range(tries):
        d = dendrites[int(rng.choice(len(dendrites), p=lengths / lengths.sum()))]
        j = int(rng.integers(1, len(d.points) - 1))
        tangent = _unit(d.points[j + 1] - d.points[j - 1])
        spine = _make_spine(rng, p, spine_id, d.points[j], tangent, d.radius[j], d.brightness)
        c = spine.head.centre
        if not near_field(c):
            continue
        if any(np.linalg.norm(c - s.head.centre) < spine.head.radius + s.head.radius + 0.3 for s in living):
            continue
        if any(np.linalg.norm(c - s.head.centre) < NEW_SPINE_CLEARANCE_UM for s in every):
            continue
        return spine
    return None

