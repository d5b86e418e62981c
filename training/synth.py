"""Synthetic two-photon stacks of spiny dendrites, with ground-truth spine boxes.

No public 3D spine stack with labels exists, so training and tests use these.
They imitate in-vivo two-photon images like the paper's (Vogel et al.):
bright, often saturated dendritic shafts meandering through the volume and
drifting in depth; spines on them (stubby, thin, mushroom: a head on a faint
neck), some tilted out of the image plane; things that are *not* spines (thin
axons with boutons, bright puncta, out-of-focus haze); an anisotropic point
spread function (PSF); Poisson photon noise plus read noise; intensity that
falls with depth; 8- or 16-bit output, often saturated.

Everything is placed and rendered in physical units (µm), so pixel size and
z-step change the image consistently.  Coordinates are ``(z, y, x)`` in µm:
slice ``k`` lies at ``z = k * z_step``, pixel ``(row i, column j)`` covers
``[i, i + 1) * pixel_size`` in y and ``[j, j + 1) * pixel_size`` in x, so a
box edge at pixel coordinate ``c`` is at ``c * pixel_size`` µm.

How an image is made
    1. every object is drawn sharp (anti-aliased, value = dye brightness
       inside the object) into a volume sampled finely in z;
    2. the PSF, a Gaussian with ``psf_sigma_z_um`` along z and
       ``psf_sigma_xy_um`` across, blurs it, and the optical slices are read
       out at ``k * z_step``;
    3. expected photons = depth attenuation * (signal_photons * blurred dye
       + background and haze); the detector counts Poisson photons, adds
       Gaussian read noise, a gain (brightest voxel at ``saturation`` times
       full scale, so > 1 saturates) and an offset, and clips to 8 or 16 bit.

Ground truth: the visibility rule
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

Typical use::

    stack = make_stack(seed=1, shape=(30, 512, 512))
    stack.image[z], stack.boxes_at(z)          # a training slice and its boxes
    write_stack(stack, "out", "synth_000")     # out/synth_000.tif + _boxes.csv

This module needs numpy and tifffile only (no torch).
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import tifffile

from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.files import write_all
from spinedet.runtime.tables import BoxTable, boxes_csv_text

SPINE_KINDS = ("stubby", "thin", "mushroom")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

def _drawn(default, how: str = "uniform"):
    """A parameter field: ``how`` says how a ``(low, high)`` pair becomes one value.

    uniform / log: a float uniform on the range (log: on a log scale) once per stack;
    int: an integer in ``low..high`` inclusive; choice: one of the listed values;
    each: stays a range, drawn anew for every object (each spine, bouton, ...).
    """
    return field(default=default, metadata={"draw": how})


@dataclass(frozen=True)
class SynthParams:
    """All settings of the generator.

    A field holding a pair ``(low, high)`` is a range; :meth:`sample` draws
    one value per stack (or, for per-object fields, keeps the range for
    drawing per object).  A field holding a single value is used as is, so
    ``SynthParams(pixel_size_um=0.1)`` fixes the pixel size.  Lengths are
    in µm, brightness relative to a dendritic shaft (1.0), photons per voxel.
    """

    # microscope sampling and optics
    pixel_size_um: object = _drawn((0.07, 0.15))
    z_step_um: object = _drawn((0.3, 1.0))
    psf_sigma_xy_um: object = _drawn((0.12, 0.25))   # lateral PSF, FWHM = 2.355 sigma
    psf_sigma_z_um: object = _drawn((0.5, 1.6))      # axial PSF, always wider than lateral
    # brightness, noise and detector
    signal_photons: object = _drawn((15.0, 500.0), "log")     # photons/voxel of unblurred dye at 1.0
    background_fraction: object = _drawn((0.003, 0.03), "log")  # tissue background / signal_photons
    background_unevenness: object = _drawn((0.0, 1.0))       # relative amplitude of smooth background
    haze_level: object = _drawn((0.0, 0.25))                 # out-of-focus haze, relative to a shaft
    read_noise_photons: object = _drawn((0.1, 1.0))          # detector noise SD in photon units
    attenuation_length_um: object = _drawn((20.0, 300.0), "log")  # signal falls as exp(-depth / L)
    saturation: object = _drawn((0.6, 2.0))    # brightest noise-free voxel / full scale (> 1 clips)
    bit_depth: object = _drawn((8, 16), "choice")
    adc_bits: object = _drawn((12, 16), "int")               # used range of a 16-bit image
    offset_fraction: object = _drawn((0.0, 0.05))            # dark level / full scale
    # dendrites
    dendrite_count: object = _drawn((1, 3), "int")
    dendrite_radius_um: object = _drawn((0.5, 1.0), "each")
    dendrite_brightness: object = _drawn((0.7, 1.0), "each")
    dendrite_wiggle: object = _drawn((0.05, 0.5))      # amplitude of heading changes, radians
    dendrite_z_slope: object = _drawn((0.0, 0.3))      # largest depth drift, µm per µm of length
    # spines
    spines_per_um: object = _drawn((0.2, 0.8))         # along the shaft
    stubby_fraction: object = _drawn((0.1, 0.4))
    mushroom_fraction: object = _drawn((0.2, 0.5))     # the rest are thin spines
    max_spine_tilt_deg: object = _drawn((40.0, 90.0))  # elevation out of the image plane
    head_radius_um: object = _drawn((0.2, 0.8), "each")
    neck_length_um: object = _drawn((0.5, 2.0), "each")
    neck_radius_um: object = _drawn((0.07, 0.2), "each")
    spine_brightness: object = _drawn((0.6, 1.4), "each")  # relative to its shaft
    # distractors (never labelled)
    axon_count: object = _drawn((0, 4), "int")
    axon_radius_um: object = _drawn((0.08, 0.2), "each")
    axon_brightness: object = _drawn((0.2, 1.0), "each")
    bouton_spacing_um: object = _drawn((3.0, 12.0))
    bouton_radius_um: object = _drawn((0.3, 0.7), "each")
    terminal_bouton_fraction: object = _drawn((0.0, 0.4))  # boutons on a short stalk, spine-like
    puncta_per_100um2: object = _drawn((0.0, 1.5))
    punctum_radius_um: object = _drawn((0.1, 0.35), "each")
    punctum_brightness: object = _drawn((0.5, 2.5), "each")
    haze_dendrite_count: object = _drawn((0, 3), "int")
    # the ground-truth rule (fixed, see the module docstring)
    axial_fraction: object = 0.25
    edge_fraction: object = 0.25
    min_snr: object = 3.0

    def sample(self, rng: np.random.Generator) -> "SynthParams":
        """A copy with one value per stack drawn from every range.

        Exactly one random number is used per drawn field whether or not it
        is fixed, so fixing one setting does not change the others for the
        same seed.  Per-object fields stay ``(low, high)`` ranges.
        """
        values = {}
        for f in fields(self):
            how = f.metadata.get("draw", "fixed")
            value = getattr(self, f.name)
            u = rng.random() if how in ("uniform", "log", "int", "choice") else 0.0
            values[f.name] = _draw_one(f.name, how, value, u)
        return replace(self, **values)


def _draw_one(name: str, how: str, value, u: float):
    ranged = isinstance(value, (tuple, list))
    if how == "each":
        low, high = (value if ranged else (value, value))
        if not low <= high:
            raise ValueError(f"{name}: range ({low}, {high}) is reversed")
        return (float(low), float(high))
    if not ranged:
        return value
    if how == "choice":
        return value[min(int(u * len(value)), len(value) - 1)]
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(f"{name}: expected a (low, high) range, got {value!r}")
    low, high = value
    if how == "int":
        return int(low + min(int(u * (high - low + 1)), high - low))
    if how == "log":
        if low <= 0:
            raise ValueError(f"{name}: a log range needs positive values, got {value!r}")
        return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
    return float(low + u * (high - low))


def _uniform(rng, value_range, size=None):
    low, high = value_range
    return rng.uniform(low, high, size)


# --------------------------------------------------------------------------------------------
# Scene: the objects, in µm
# --------------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class Grid:
    """How the volume is sampled: output slices, pixels, the fine z grid and the PSF.

    Output slice ``k`` is at ``k * z_step_um``; the sharp volume is drawn on
    fine slices at ``m * fine_step_um`` (any integer m) before blurring, fine
    enough that thin necks between slices are not lost.
    """

    shape: tuple
    pixel_um: float
    z_step_um: float
    sigma_xy_um: float
    sigma_z_um: float

    @property
    def fine_step_um(self) -> float:
        return min(self.sigma_z_um / 3.0, 0.3)

    @property
    def psf_reach_z_um(self) -> float:
        """How far in z the blur is followed (4 axial sigmas)."""
        return 4.0 * self.sigma_z_um

    @property
    def kernel_xy(self) -> np.ndarray:
        """The lateral PSF as a normalised 1D kernel in pixels (odd length)."""
        sigma = self.sigma_xy_um / self.pixel_um
        radius = max(1, int(math.ceil(3.5 * sigma)))
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        return (k / k.sum()).astype(np.float32)

    @property
    def pad(self) -> int:
        return len(self.kernel_xy) // 2

    def slice_z_um(self) -> np.ndarray:
        return np.arange(self.shape[0]) * self.z_step_um

    def extent_um(self) -> tuple:
        """``(depth, height, width)`` of the stack in µm (depth between first and last slice)."""
        z, y, x = self.shape
        return ((z - 1) * self.z_step_um, y * self.pixel_um, x * self.pixel_um)


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
    brightness = _uniform(rng, p.spine_brightness) * shaft_brightness
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
    neck_r = _uniform(rng, p.neck_radius_um)
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
        radius0 = _uniform(rng, p.dendrite_radius_um)
        radius = radius0 * (1 + 0.12 * np.sin(2 * np.pi * s / rng.uniform(8, 30) + rng.uniform(0, 6.3)))
        brightness = _uniform(rng, p.dendrite_brightness)
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
        r_axon = _uniform(rng, p.axon_radius_um)
        b_axon = _uniform(rng, p.axon_brightness)
        axons.append(Tube(points, np.full(len(points), r_axon), b_axon))
        pos = rng.exponential(p.bouton_spacing_um)
        while pos < s[-1]:
            j = int(np.clip(np.searchsorted(s, pos), 1, len(s) - 2))
            r_b = _uniform(rng, p.bouton_radius_um)
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
                   _uniform(rng, p.punctum_radius_um), _uniform(rng, p.punctum_brightness))
              for _ in range(n_puncta)]

    haze_paths, haze_radius, haze_brightness = [], [], []
    for _ in range(p.haze_dendrite_count):
        start = np.array([0.0, rng.uniform(0, height), rng.uniform(0, width)])
        points, _ = _meander(rng, start, rng.uniform(0, 2 * np.pi), 0.0, p.dendrite_wiggle, grid.extent_um())
        haze_paths.append(points[:, 1:])
        haze_radius.append(rng.uniform(1.5, 4.0))     # blur of a dendrite a few µm out of focus
        haze_brightness.append(rng.uniform(0.3, 1.0))
    return Scene(dendrites, spines, axons, boutons, puncta, haze_paths, haze_radius, haze_brightness)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

class _Canvas:
    """A block of the sharp dye volume on the fine grid.

    Fine z slices ``m0 .. m0 + nz``, pixel rows ``r0 ..`` and columns ``c0 ..``
    (global indices, may lie outside the image); values in dye units.
    """

    def __init__(self, grid: Grid, m0: int, r0: int, c0: int, shape):
        self.grid, self.m0, self.r0, self.c0 = grid, m0, r0, c0
        self.data = np.zeros(shape, dtype=np.float32)

    def paint(self, obj) -> None:
        if isinstance(obj, Ball):
            self._paint_segment(obj.centre, obj.centre, obj.radius, obj.radius, obj.brightness)
            return
        # only the segments whose bounding box reaches into the canvas
        g = self.grid
        reach = np.maximum(obj.radius[:-1], obj.radius[1:]) + g.fine_step_um + g.pixel_um
        lo = np.minimum(obj.points[:-1], obj.points[1:]) - reach[:, None]
        hi = np.maximum(obj.points[:-1], obj.points[1:]) + reach[:, None]
        nz, ny, nx = self.data.shape
        canvas_lo = np.array([self.m0 * g.fine_step_um, self.r0 * g.pixel_um, self.c0 * g.pixel_um])
        canvas_hi = np.array([(self.m0 + nz) * g.fine_step_um, (self.r0 + ny + 1) * g.pixel_um,
                              (self.c0 + nx + 1) * g.pixel_um])
        near = np.all((hi >= canvas_lo) & (lo <= canvas_hi), axis=1)
        for k in np.flatnonzero(near):
            self._paint_segment(obj.points[k], obj.points[k + 1], obj.radius[k], obj.radius[k + 1], obj.brightness)

    def _paint_segment(self, p, q, rp, rq, brightness) -> None:
        """Draw a capsule from ``p`` to ``q`` (µm) with radii ``rp``..``rq``, anti-aliased."""
        g = self.grid
        fs, px = g.fine_step_um, g.pixel_um
        reach = max(rp, rq) + fs + px
        lo, hi = np.minimum(p, q) - reach, np.maximum(p, q) + reach
        nz, ny, nx = self.data.shape
        m_lo = max(self.m0, math.ceil(lo[0] / fs))
        m_hi = min(self.m0 + nz, math.floor(hi[0] / fs) + 1)
        i_lo = max(self.r0, math.ceil(lo[1] / px - 0.5))
        i_hi = min(self.r0 + ny, math.floor(hi[1] / px - 0.5) + 1)
        j_lo = max(self.c0, math.ceil(lo[2] / px - 0.5))
        j_hi = min(self.c0 + nx, math.floor(hi[2] / px - 0.5) + 1)
        if m_lo >= m_hi or i_lo >= i_hi or j_lo >= j_hi:
            return
        z = (fs * np.arange(m_lo, m_hi))[:, None, None]
        y = ((np.arange(i_lo, i_hi) + 0.5) * px)[None, :, None]
        x = ((np.arange(j_lo, j_hi) + 0.5) * px)[None, None, :]
        d = np.asarray(q, float) - np.asarray(p, float)
        dd = float(d @ d)
        if dd > 0:
            t = np.clip(((z - p[0]) * d[0] + (y - p[1]) * d[1] + (x - p[2]) * d[2]) / dd, 0.0, 1.0)
        else:
            t = 0.0
        oz, oy, ox = z - (p[0] + t * d[0]), y - (p[1] + t * d[1]), x - (p[2] + t * d[2])
        dist = np.sqrt(oz * oz + oy * oy + ox * ox)
        # anti-aliasing: the voxel's extent along the direction away from the axis
        width = (np.abs(oz) * fs + (np.abs(oy) + np.abs(ox)) * px) / np.maximum(dist, 1e-9)
        width = np.where(dist > 1e-9, width, fs + px)
        radius = rp + t * (rq - rp)
        value = brightness * np.clip(0.5 + (radius - dist) / width, 0.0, 1.0)
        view = self.data[m_lo - self.m0:m_hi - self.m0, i_lo - self.r0:i_hi - self.r0,
                         j_lo - self.c0:j_hi - self.c0]
        np.maximum(view, value, out=view)


def _blur_valid(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Convolve along ``axis`` with a symmetric kernel, keeping only fully covered samples."""
    r = len(kernel) // 2
    n = a.shape[axis] - 2 * r

    def part(start):
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, start + n)
        return a[tuple(index)]

    out = kernel[r] * part(r)
    for j in range(1, r + 1):
        out += kernel[r + j] * (part(r + j) + part(r - j))
    return out


def _blur_canvas(canvas: _Canvas, z_out_um: np.ndarray) -> np.ndarray:
    """The canvas seen through the PSF at depths ``z_out_um``: (len(z_out), ny - 2 pad, nx - 2 pad)."""
    g = canvas.grid
    fine_z = g.fine_step_um * np.arange(canvas.m0, canvas.m0 + canvas.data.shape[0])
    weights = np.exp(-0.5 * ((np.asarray(z_out_um)[:, None] - fine_z[None, :]) / g.sigma_z_um) ** 2)
    weights *= g.fine_step_um / (math.sqrt(2 * math.pi) * g.sigma_z_um)
    nz, ny, nx = canvas.data.shape
    flat, weights = canvas.data.reshape(nz, ny * nx), weights.astype(np.float32)
    # BLAS for big blocks; small ones are quicker without its threads
    out = (weights @ flat if flat.size > 1_000_000 else np.einsum("ij,jk->ik", weights, flat)).reshape(-1, ny, nx)
    kernel = g.kernel_xy
    return _blur_valid(_blur_valid(out, kernel, 1), kernel, 2)


def _canvas_around(grid: Grid, objects) -> _Canvas:
    """An empty canvas just big enough for ``objects`` plus the PSF's reach."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for obj in objects:
        points = obj.centre[None, :] if isinstance(obj, Ball) else obj.points
        radius = obj.radius if isinstance(obj, Ball) else float(np.max(obj.radius))
        lo = np.minimum(lo, points.min(axis=0) - radius)
        hi = np.maximum(hi, points.max(axis=0) + radius)
    fs, px = grid.fine_step_um, grid.pixel_um
    z_margin = grid.psf_reach_z_um + fs
    m0 = math.floor((lo[0] - z_margin) / fs)
    m1 = math.ceil((hi[0] + z_margin) / fs) + 1
    xy_margin = 2 * grid.pad + 2
    r0, r1 = math.floor(lo[1] / px) - xy_margin, math.ceil(hi[1] / px) + xy_margin
    c0, c1 = math.floor(lo[2] / px) - xy_margin, math.ceil(hi[2] / px) + xy_margin
    return _Canvas(grid, m0, r0, c0, (m1 - m0, r1 - r0, c1 - c0))


def _seen_alone(canvas: _Canvas, obj, z_um: np.ndarray):
    """``obj`` alone on ``canvas``, blurred: its slices at ``z_um`` (n, ny, nx) and its in-focus peak.

    The in-focus peak (dye units) is the brightest value at any depth,
    sampled at the object's own depths (a ball's centre, a tube's depth range
    at half the fine step) and at ``z_um``, so no slice sees more.
    """
    canvas.data[:] = 0
    canvas.paint(obj)
    fs = canvas.grid.fine_step_um
    if isinstance(obj, Ball):
        z_lo = z_hi = obj.centre[0]
    else:
        z_lo, z_hi = obj.points[:, 0].min(), obj.points[:, 0].max()
    own_z = np.arange(z_lo - fs, z_hi + fs + 1e-9, fs / 2)
    seen = _blur_canvas(canvas, np.concatenate([z_um, own_z]))
    return seen[:len(z_um)], float(seen.max())


def render_dye(grid: Grid, objects, max_voxels: int = 48_000_000) -> np.ndarray:
    """Noise-free blurred dye signal of ``objects`` on the whole stack: (Z, Y, X) float32.

    Units: dye brightness (a shaft in focus is near 1), no attenuation,
    background or noise.  Overlapping objects merge (maximum), as the
    cytoplasm of a spine merges with its shaft.  Works through the stack in
    groups of slices so that the sharp volume stays below ``max_voxels``.
    """
    z_slices, height, width = grid.shape
    pad, fs, reach = grid.pad, grid.fine_step_um, grid.psf_reach_z_um
    plane = (height + 2 * pad) * (width + 2 * pad)
    z_um = grid.slice_z_um()

    def fine_range(k0, k1):             # fine slices that output slices k0..k1-1 see
        return math.floor((z_um[k0] - reach) / fs), math.ceil((z_um[k1 - 1] + reach) / fs) + 1

    out = np.empty((z_slices, height, width), dtype=np.float32)
    k0 = 0
    while k0 < z_slices:
        k1 = k0 + 1
        while k1 < z_slices and np.subtract(*fine_range(k0, k1 + 1)[::-1]) * plane <= max_voxels:
            k1 += 1
        m0, m1 = fine_range(k0, k1)
        canvas = _Canvas(grid, m0, -pad, -pad, (m1 - m0, height + 2 * pad, width + 2 * pad))
        for obj in objects:
            canvas.paint(obj)
        out[k0:k1] = _blur_canvas(canvas, z_um[k0:k1])
        k0 = k1
    return out


def render_alone(stack: "SynthStack", objects) -> np.ndarray:
    """``objects`` rendered alone on ``stack``'s grid (noise-free dye units), (Z, Y, X) float32.

    Used to check the ground truth: e.g. ``render_alone(stack, [spine.head])``.
    """
    return render_dye(stack.grid, objects)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation from a coarse grid of n_in cells to n_out cells."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _haze_map(rng, grid: Grid, scene: Scene, p: SynthParams) -> np.ndarray:
    """Smooth background (Y, X): unevenness and dendrites far out of focus, relative units.

    Returns expected photons per voxel before depth attenuation.
    """
    _, height, width = grid.shape
    cell = 4                                     # coarse pixels for the smooth parts
    hc, wc = max(1, height // cell), max(1, width // cell)
    px_c = grid.pixel_um * height / hc
    yc = (np.arange(hc) + 0.5) * px_c
    xc = (np.arange(wc) + 0.5) * grid.pixel_um * width / wc
    haze = np.zeros((hc, wc))
    for path, radius, brightness in zip(scene.haze_paths, scene.haze_radius, scene.haze_brightness):
        for a, b in zip(path[:-1], path[1:]):
            d = b - a
            t = np.clip(((yc[:, None] - a[0]) * d[0] + (xc[None, :] - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
            dist = np.hypot(yc[:, None] - a[0] - t * d[0], xc[None, :] - a[1] - t * d[1])
            np.maximum(haze, brightness * np.exp(-0.5 * (dist / radius) ** 2), out=haze)
    up_y, up_x = _interp_matrix(height, hc), _interp_matrix(width, wc)
    haze = up_y @ haze @ up_x.T
    # uneven tissue background: a few broad blobs
    y = (np.arange(height) + 0.5) * grid.pixel_um
    x = (np.arange(width) + 0.5) * grid.pixel_um
    uneven = np.zeros((height, width))
    for _ in range(4):
        sigma = rng.uniform(0.2, 0.6) * max(height, width) * grid.pixel_um
        cy, cx = rng.uniform(0, height * grid.pixel_um), rng.uniform(0, width * grid.pixel_um)
        uneven += rng.uniform(0.3, 1.0) * np.outer(np.exp(-0.5 * ((y - cy) / sigma) ** 2),
                                                   np.exp(-0.5 * ((x - cx) / sigma) ** 2))
    uneven /= max(uneven.max(), 1e-12)
    background = p.background_fraction * (1 + p.background_unevenness * uneven)
    return p.signal_photons * (background + p.haze_level * haze)


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------

@dataclass
class SynthStack:
    """A synthetic stack and its ground truth.

    image            (Z, Y, X) uint8 or uint16
    voxel_size       (z_step, pixel_size, pixel_size) in µm
    table            ground truth, one row per spine per visible slice (boxes in pixels, score 1)
    spines           the spines (geometry in µm); ``spine_id`` matches ``table.spine_id``
    scene            every object, spines and distractors
    params           the sampled settings
    grid             the sampling and PSF (for re-rendering objects with :func:`render_alone`)
    detection_floor  (Z,) dye level a head must reach to stand ``min_snr`` noise SDs above
                     the background of that slice (see the module docstring)
    """

    image: np.ndarray
    voxel_size: tuple
    table: BoxTable
    spines: list
    scene: Scene
    params: SynthParams
    grid: Grid
    detection_floor: np.ndarray

    def boxes_at(self, z: int) -> np.ndarray:
        """Ground-truth boxes (N, 4) in pixels, (x_min, y_min, x_max, y_max), in slice ``z``."""
        return self.table.boxes[self.table.z == z]

    def spine_ids_at(self, z: int) -> np.ndarray:
        """Ids of the spines boxed in slice ``z``, in the order of :meth:`boxes_at`."""
        return self.table.spine_id[self.table.z == z]


def _spine_boxes(grid: Grid, spine: Spine, dendrites, floor: np.ndarray, p: SynthParams):
    """Rows ``(z, box)`` of one spine under the visibility rule (module docstring).

    ``dendrites`` are the shafts (to tell when the head hides in one),
    ``floor`` (Z,) the detection floor; sets ``spine.head_peak`` and ``spine.neck_peak``.
    """
    z_slices, height, width = grid.shape
    canvas = _canvas_around(grid, spine.objects())
    z_um = grid.slice_z_um()
    ks = np.flatnonzero((z_um >= canvas.m0 * grid.fine_step_um)
                        & (z_um <= (canvas.m0 + canvas.data.shape[0] - 1) * grid.fine_step_um))
    head, spine.head_peak = _seen_alone(canvas, spine.head, z_um[ks])
    neck, spine.neck_peak = (None, 0.0) if spine.neck is None else _seen_alone(canvas, spine.neck, z_um[ks])
    if len(ks) == 0:
        return []
    canvas.data[:] = 0
    for dendrite in dendrites:
        canvas.paint(dendrite)
    shaft = _blur_canvas(canvas, z_um[ks])
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


def _validated_shape(shape) -> tuple:
    try:
        z, y, x = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (slices, height, width), got {shape!r}") from None
    if z < 1 or y < 16 or x < 16:
        raise ValueError(f"shape {shape!r} too small: need at least 1 slice of 16 x 16 pixels")
    return (z, y, x)


def make_stack(seed=0, shape=(30, 512, 512), **overrides) -> SynthStack:
    """Make one synthetic stack with ground truth.

    ``seed``: an int or a numpy Generator; the same seed gives the same stack.
    ``shape``: (slices, height, width) in pixels.
    ``overrides``: any :class:`SynthParams` field, a single value to fix it
    (``pixel_size_um=0.1``) or a ``(low, high)`` range.
    """
    shape = _validated_shape(shape)
    known = {f.name for f in fields(SynthParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown synthetic-stack setting(s) {', '.join(unknown)}")
    rng = np.random.default_rng(seed)
    p = replace(SynthParams(), **overrides).sample(rng)
    if p.bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {p.bit_depth!r}")
    if not (p.pixel_size_um > 0 and p.z_step_um > 0 and p.psf_sigma_xy_um > 0 and p.psf_sigma_z_um > 0):
        raise ValueError("pixel size, z-step and PSF widths must be positive")
    grid = Grid(shape, p.pixel_size_um, p.z_step_um, p.psf_sigma_xy_um, p.psf_sigma_z_um)
    scene = make_scene(rng, grid, p)
    objects = scene.dendrites + [o for s in scene.spines for o in s.objects()] + scene.distractors()
    expected = render_dye(grid, objects)            # dye units, turned into photons in place

    # photons: signal plus background and haze, attenuated with depth
    attenuation = np.exp(-grid.slice_z_um() / p.attenuation_length_um)
    background = _haze_map(rng, grid, scene, p).astype(np.float32)
    expected *= np.float32(p.signal_photons)
    expected += background[None]
    expected *= attenuation.astype(np.float32)[:, None, None]
    noise_sd = np.sqrt(np.median(expected.reshape(shape[0], -1), axis=1) + p.read_noise_photons ** 2)
    floor = p.min_snr * noise_sd / (p.signal_photons * attenuation)
    image = _detect(rng, expected, p)

    ids, zs, boxes = [], [], []
    for spine in scene.spines:
        for k, box in _spine_boxes(grid, spine, scene.dendrites, floor, p):
            ids.append(spine.spine_id)
            zs.append(k)
            boxes.append(box)
    table = BoxTable.from_rows(ids, zs, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.ones(len(ids)))
    return SynthStack(image, (p.z_step_um, p.pixel_size_um, p.pixel_size_um), table, scene.spines, scene, p,
                      grid, floor.astype(np.float64))


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


def _detect(rng, expected: np.ndarray, p: SynthParams) -> np.ndarray:
    """The detector: Poisson photons plus read noise, gain, offset, clipped to the bit depth.

    ``expected`` (Z, Y, X) photons per voxel; the gain puts the brightest
    expected voxel at ``saturation`` times full scale.  Returns uint8 or uint16.
    """
    full_scale = 255 if p.bit_depth == 8 else 2 ** int(p.adc_bits) - 1
    gain = np.float32(p.saturation * full_scale / max(float(expected.max()), 1e-9))
    image = np.empty(expected.shape, dtype=np.uint8 if p.bit_depth == 8 else np.uint16)
    for k in range(expected.shape[0]):              # slice by slice to keep memory small
        counts = rng.poisson(expected[k]).astype(np.float32)
        counts += np.float32(p.read_noise_photons) * rng.standard_normal(counts.shape, dtype=np.float32)
        counts *= gain
        counts += np.float32(p.offset_fraction * full_scale)
        image[k] = np.clip(np.rint(counts), 0, full_scale)
    return image


def tiff_bytes(image: np.ndarray, voxel_size) -> bytes:
    """``image`` (Z, Y, X) as ImageJ TIFF bytes with the voxel size (µm) in its metadata."""
    z_um, y_um, x_um = voxel_size
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, imagej=True, resolution=(1.0 / x_um, 1.0 / y_um),
                     metadata={"spacing": float(z_um), "unit": "um", "axes": "ZYX"})
    return buffer.getvalue()


def write_stack(stack: SynthStack, outdir, name: str) -> list:
    """Write ``outdir/name.tif`` (ImageJ TIFF) and ``outdir/name_boxes.csv`` together; return the paths."""
    outdir = Path(outdir)
    return write_all({
        outdir / f"{name}.tif": tiff_bytes(stack.image, stack.voxel_size),
        outdir / f"{name}_boxes.csv": boxes_csv_text(stack.table),
    })


# --------------------------------------------------------------------------------------------
# Command line: spine-synth OUTDIR
# --------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):                    # one line, exit code 2
        raise SpineDetError(message)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spine-synth",
                     description="Write synthetic two-photon spine stacks (NAME.tif) with ground truth "
                                 "(NAME_boxes.csv).")
    parser.add_argument("outdir", help="folder to write into (created if missing)")
    parser.add_argument("--count", type=_positive(int), default=1, help="number of stacks (default 1)")
    parser.add_argument("--slices", type=_positive(int), default=30, help="slices per stack (default 30)")
    parser.add_argument("--size", type=_positive(int), default=512, help="width = height in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--pixel-size", type=_positive(float), default=None, metavar="UM",
                        help="pixel size in µm (default: random 0.07-0.15)")
    parser.add_argument("--z-step", type=_positive(float), default=None, metavar="UM",
                        help="slice spacing in µm (default: random 0.3-1.0)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=None,
                        help="8 or 16 bit (default: random)")
    parser.add_argument("--prefix", default="synth", help="file name prefix (default synth)")
    return parser


def main(argv=None) -> int:
    """``spine-synth OUTDIR [--count N] [--slices Z] [--size PX] [--seed S] [--pixel-size UM]
    [--z-step UM] [--bit-depth 8|16]``; returns the exit code (2 on any error)."""
    try:
        args = _parser().parse_args(argv)
        if args.size < 16:
            raise SpineDetError(f"--size {args.size} is too small (at least 16 pixels)")
        overrides = {}
        if args.pixel_size is not None:
            overrides["pixel_size_um"] = args.pixel_size
        if args.z_step is not None:
            overrides["z_step_um"] = args.z_step
        if args.bit_depth is not None:
            overrides["bit_depth"] = args.bit_depth
        for i in range(args.count):
            stack = make_stack(np.random.default_rng([args.seed, i]), (args.slices, args.size, args.size),
                               **overrides)
            name = f"{args.prefix}_{i:03d}"
            write_stack(stack, args.outdir, name)
            print(f"{Path(args.outdir) / name}.tif: {stack.image.shape[0]} slices, "
                  f"{stack.voxel_size[1]:.3f} µm/px, z-step {stack.voxel_size[0]:.2f} µm, "
                  f"{len(stack.spines)} spines, {len(stack.table)} boxes")
        return 0
    except (SpineDetError, ValueError, MemoryError) as exc:
        print(f"spine-synth: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
