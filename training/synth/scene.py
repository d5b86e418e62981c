"""The objects of a stack, in µm: dendrites with spines, and the things that are not spines.

Dendritic shafts meander through the volume and drift in depth; spines grow
on them (stubby, thin, mushroom: a head on a faint neck), some tilted out of
the image plane.  The distractors are thin axons with boutons (some on a
short stalk, spine-like), bright puncta, and dendrites far out of focus that
only add haze.  Only spines are labelled.  Points are ``(z, y, x)`` in µm
(see :mod:`.grid`); brightness is dye concentration relative to a shaft (1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grid import Grid
from .params import SynthParams, draw_each

SPINE_KINDS = ("stubby", "thin", "mushroom")


@dataclass
class Tube:
    """A tube along a polyline: ``points`` (K, 3) as (z, y, x) µm, ``radius`` (K,) µm.

    ``brightness`` is the dye concentration inside, relative to a shaft (1.0).
    """

    points: np.ndarray
    radius: np.ndarray
    brightness: float


@dataclass
class Ball:
    """A sphere: ``centre`` (3,) as (z, y, x) µm, ``radius`` µm, relative ``brightness``."""

    centre: np.ndarray
    radius: float
    brightness: float


@dataclass
class Spine:
    """One spine: a head on a neck (stubby spines have no neck).

    ``base`` (3,) µm is where the neck leaves the shaft; ``head_peak`` and
    ``neck_peak`` are the in-focus peaks of the head's and neck's blurred
    signal alone (dye units), which the visibility rule compares against.
    """

    spine_id: int
    kind: str
    head: Ball
    neck: Tube | None
    base: np.ndarray
    head_peak: float = 0.0
    neck_peak: float = 0.0

    def objects(self) -> list:
        return [self.head] + ([self.neck] if self.neck is not None else [])


@dataclass
class Scene:
    """Everything in a stack.  Only ``spines`` are labelled."""

    dendrites: list
    spines: list
    axons: list
    boutons: list          # Balls, en passant or at the end of a stalk (stalks are in axons)
    puncta: list
    haze_paths: list       # (K, 2) y, x µm paths of dendrites far out of focus (haze only)
    haze_radius: list
    haze_brightness: list

    def distractors(self) -> list:
        """The objects that look spine-like or bright but are not spines."""
        return list(self.axons) + list(self.boutons) + list(self.puncta)


def _meander(rng, start, heading, z_slope, wiggle, extent, step=0.5, margin=3.0):
    """A smooth random path through ``start`` (z, y, x µm) until it leaves the field.

    The heading (radians in the image plane) swings by up to ``wiggle``
    radians over wavelengths of 10-60 µm; depth drifts by ``z_slope`` µm per
    µm plus a gentle wave.  Returns points (K, 3) every ``step`` µm and their
    arc lengths (K,).
    """
    _, height, width = extent
    half = math.hypot(height, width) + 2 * margin
    s = np.arange(-half, half + step / 2, step)
    theta = np.full_like(s, heading)
    depth = start[0] + z_slope * s
    for _ in range(3):
        wavelength = rng.uniform(10.0, 60.0)
        theta += wiggle * rng.uniform(-1, 1) * np.sin(2 * np.pi * s / wavelength + rng.uniform(0, 2 * np.pi))
        depth += rng.uniform(0.0, 0.7) * np.sin(2 * np.pi * s / rng.uniform(15.0, 60.0) + rng.uniform(0, 2 * np.pi))
    y = np.cumsum(np.sin(theta)) * step
    x = np.cumsum(np.cos(theta)) * step
    centre = len(s) // 2
    y += start[1] - y[centre]
    x += start[2] - x[centre]
    inside = (y > -margin) & (y < height + margin) & (x > -margin) & (x < width + margin)
    # keep the stretch through the start point
    lo = centre
    while lo > 0 and inside[lo - 1]:
        lo -= 1
    hi = centre
    while hi < len(s) - 1 and inside[hi + 1]:
        hi += 1
    points = np.stack([depth, y, x], axis=1)[lo:hi + 1]
    return points, s[lo:hi + 1] - s[lo]


def _unit(v):
    return v / max(np.linalg.norm(v), 1e-12)


def _side_direction(rng, tangent, max_tilt_rad):
    """A unit direction (z, y, x) perpendicular-ish to ``tangent``, tilted out of plane by <= max_tilt."""
    lateral = np.cross(tangent, np.array([1.0, 0.0, 0.0]))
    if np.linalg.norm(lateral) < 1e-6:           # shaft runs straight along z
        lateral = np.array([0.0, 1.0, 0.0])
    lateral = _unit(lateral)
    upward = _unit(np.cross(lateral, tangent))
    tilt = rng.uniform(-max_tilt_rad, max_tilt_rad)
    side = rng.choice([-1.0, 1.0])
    direction = math.cos(tilt) * side * lateral + math.sin(tilt) * upward
    return _unit(direction + 0.25 * rng.uniform(-1, 1) * tangent)


def _make_spine(rng, p: SynthParams, spine_id, axis_point, tangent, shaft_radius, shaft_brightness):
    """One spine growing from the shaft at ``axis_point`` (its kind drawn from the mix)."""
    kind_draw = rng.random()
    if kind_draw < p.stubby_fraction:
        kind = "stubby"
    elif kind_draw < p.stubby_fraction + p.mushroom_fraction:
        kind = "mushroom"
    else:
        kind = "thin"
    direction = _side_direction(rng, tangent, math.radians(p.max_spine_tilt_deg))
    h_lo, h_hi = p.head_radius_um
    n_lo, n_hi = p.neck_length_um
    span_h, span_n = h_hi - h_lo, n_hi - n_lo
    brightness = draw_each(rng, p.spine_brightness) * shaft_brightness
    if kind == "stubby":
        r = rng.uniform(h_lo, h_lo + 0.6 * span_h)
        centre = axis_point + (shaft_radius + rng.uniform(0.3, 0.7) * r) * direction
        return Spine(spine_id, kind, Ball(centre, r, brightness), None, axis_point + shaft_radius * direction)
    if kind == "thin":
        r = rng.uniform(h_lo, h_lo + 0.45 * span_h)
        length = rng.uniform(n_lo + 0.3 * span_n, n_hi)
    else:
        r = rng.uniform(h_lo + 0.4 * span_h, h_hi)
        length = rng.uniform(n_lo, n_lo + 0.7 * span_n)
    base = axis_point + (shaft_radius - 0.15) * direction
    centre = axis_point + (shaft_radius + length + 0.8 * r) * direction
    bend = _unit(np.cross(direction, rng.normal(size=3))) * rng.uniform(0, 0.2) * length
    neck_points = np.stack([base, 0.5 * (base + centre) + bend, centre])
    neck_r = draw_each(rng, p.neck_radius_um)
    neck = Tube(neck_points, np.full(3, neck_r), brightness)
    return Spine(spine_id, kind, Ball(centre, r, brightness), neck, base)


def make_scene(rng: np.random.Generator, grid: Grid, p: SynthParams) -> Scene:
    """Draw dendrites with spines, axons with boutons, puncta and haze for a sampled ``p``."""
    depth, height, width = grid.extent_um()
    reach_z = 4.0 * grid.sigma_z_um + 1.0           # farther from the stack nothing shows
    dendrites, spines, heads = [], [], []
    for _ in range(p.dendrite_count):
        start = np.array([rng.uniform(0, depth), rng.uniform(0.15, 0.85) * height,
                          rng.uniform(0.15, 0.85) * width])
        slope = p.dendrite_z_slope * rng.uniform(-1, 1)
        points, s = _meander(rng, start, rng.uniform(0, 2 * np.pi), slope, p.dendrite_wiggle, grid.extent_um())
        radius0 = draw_each(rng, p.dendrite_radius_um)
        radius = radius0 * (1 + 0.12 * np.sin(2 * np.pi * s / rng.uniform(8, 30) + rng.uniform(0, 6.3)))
        brightness = draw_each(rng, p.dendrite_brightness)
        dendrites.append(Tube(points, radius, brightness))
        # spines: a Poisson process along the shaft
        n_spines = rng.poisson(p.spines_per_um * s[-1]) if len(s) > 1 else 0
        for pos in np.sort(rng.uniform(0, s[-1], n_spines)):
            j = int(np.clip(np.searchsorted(s, pos), 1, len(s) - 2))
            tangent = _unit(points[j + 1] - points[j - 1])
            spine = _make_spine(rng, p, len(spines), points[j], tangent, radius[j], brightness)
            c = spine.head.centre
            if not (-reach_z < c[0] < depth + reach_z and -1 < c[1] < height + 1 and -1 < c[2] < width + 1):
                continue
            if any(np.linalg.norm(c - hc) < spine.head.radius + hr + 0.3 for hc, hr in heads):
                continue
            spine.spine_id = len(spines)
            spines.append(spine)
            heads.append((c, spine.head.radius))

    axons, boutons = [], []
    for _ in range(p.axon_count):
        start = np.array([rng.uniform(-1, depth + 1), rng.uniform(0, height), rng.uniform(0, width)])
        points, s = _meander(rng, start, rng.uniform(0, 2 * np.pi), 0.15 * rng.uniform(-1, 1),
                             0.4 * p.dendrite_wiggle, grid.extent_um())
        r_axon = draw_each(rng, p.axon_radius_um)
        b_axon = draw_each(rng, p.axon_brightness)
        axons.append(Tube(points, np.full(len(points), r_axon), b_axon))
        pos = rng.exponential(p.bouton_spacing_um)
        while pos < s[-1]:
            j = int(np.clip(np.searchsorted(s, pos), 1, len(s) - 2))
            r_b = draw_each(rng, p.bouton_radius_um)
            b_b = b_axon * rng.uniform(1.0, 2.0)
            if rng.random() < p.terminal_bouton_fraction:       # on a short stalk: looks like a spine
                direction = _side_direction(rng, _unit(points[j + 1] - points[j - 1]), math.radians(60))
                tip = points[j] + rng.uniform(0.5, 1.5) * direction
                axons.append(Tube(np.stack([points[j], tip]), np.full(2, r_axon), b_axon))
                boutons.append(Ball(tip, 0.8 * r_b, b_b))
            else:
                boutons.append(Ball(points[j].copy(), r_b, b_b))
            pos += rng.exponential(p.bouton_spacing_um) + 1.0

    n_puncta = rng.poisson(p.puncta_per_100um2 * height * width / 100.0)
    puncta = [Ball(np.array([rng.uniform(-1, depth + 1), rng.uniform(0, height), rng.uniform(0, width)]),
                   draw_each(rng, p.punctum_radius_um), draw_each(rng, p.punctum_brightness))
              for _ in range(n_puncta)]

    haze_paths, haze_radius, haze_brightness = [], [], []
    for _ in range(p.haze_dendrite_count):
        start = np.array([0.0, rng.uniform(0, height), rng.uniform(0, width)])
        points, _ = _meander(rng, start, rng.uniform(0, 2 * np.pi), 0.0, p.dendrite_wiggle, grid.extent_um())
        haze_paths.append(points[:, 1:])
        haze_radius.append(rng.uniform(1.5, 4.0))     # blur of a dendrite a few µm out of focus
        haze_brightness.append(rng.uniform(0.3, 1.0))
    return Scene(dendrites, spines, axons, boutons, puncta, haze_paths, haze_radius, haze_brightness)
