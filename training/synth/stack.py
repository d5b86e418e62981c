"""One synthetic stack and its ground truth: :func:`make_stack` puts the pieces together.

scene (:mod:`.scene`) -> sharp dye blurred by the PSF (:mod:`.render`) ->
photons and detector counts (:mod:`.camera`); the ground truth follows the
visibility rule (:mod:`.truth`).  The random draws happen in this order
(settings, scene, background, detector noise), so a seed gives one stack.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from spinedet.runtime.tables import BoxTable

from .camera import depth_attenuation, detect, expected_photons, slice_noise_sd
from .grid import Grid
from .params import SynthParams
from .render import haze_map, render_dye
from .scene import Scene, make_scene
from .truth import detection_floor, ground_truth


@dataclass
class SynthStack:
    """A synthetic stack and its ground truth.

    image            (Z, Y, X) uint8 or uint16
    voxel_size       (z_step, pixel_size, pixel_size) in µm
    table            ground truth, one row per spine per visible slice (boxes in pixels, score 1)
    spines           the spines (geometry in µm); ``spine_id`` matches ``table.spine_id``
    scene            every object, spines and distractors
    params           the sampled settings
    grid             the sampling and PSF (for re-rendering objects with :func:`~.render.render_alone`)
    detection_floor  (Z,) dye level a head must reach to stand ``min_snr`` noise SDs above
                     the background of that slice (the visibility rule, :mod:`.truth`)
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
    rng = np.random.default_rng(seed)
    p = sampled_params(rng, overrides)
    grid = Grid(shape, p.pixel_size_um, p.z_step_um, p.psf_sigma_xy_um, p.psf_sigma_z_um)
    scene = make_scene(rng, grid, p)
    return render_scene(rng, grid, scene, p)


def sampled_params(rng: np.random.Generator, overrides: dict) -> SynthParams:
    """The settings of one stack: ``overrides`` fixed, the rest drawn from ``rng`` (refuses unknown names)."""
    known = {f.name for f in fields(SynthParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown synthetic-stack setting(s) {', '.join(unknown)}")
    p = replace(SynthParams(), **overrides).sample(rng)
    if p.bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {p.bit_depth!r}")
    if not (p.pixel_size_um > 0 and p.z_step_um > 0 and p.psf_sigma_xy_um > 0 and p.psf_sigma_z_um > 0):
        raise ValueError("pixel size, z-step and PSF widths must be positive")
    return p


def render_scene(rng: np.random.Generator, grid: Grid, scene: Scene, p: SynthParams) -> SynthStack:
    """Image ``scene`` on ``grid`` (background, then detector noise from ``rng``) and find its ground truth."""
    objects = scene.dendrites + [o for s in scene.spines for o in s.objects()] + scene.distractors()
    dye = render_dye(grid, objects)                 # (Z, Y, X) dye units, turned into photons in place

    # photons: signal plus background and haze, attenuated with depth
    attenuation = depth_attenuation(grid, p)
    background = haze_map(rng, grid, scene, p).astype(np.float32)
    expected = expected_photons(dye, background, attenuation, p)
    floor = detection_floor(slice_noise_sd(expected, p), attenuation, p)
    image = detect(rng, expected, p)

    table = ground_truth(grid, scene, floor, p)
    return SynthStack(image, (p.z_step_um, p.pixel_size_um, p.pixel_size_um), table, scene.spines, scene, p,
                      grid, floor.astype(np.float64))
