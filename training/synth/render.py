"""Rendering: objects drawn sharp, then seen through the point spread function (PSF).

1. every object is drawn sharp (anti-aliased, value = dye brightness inside
   the object) into a volume sampled finely in z (:class:`Canvas`, on the
   fine grid of :class:`~.grid.Grid`);
2. the PSF, a Gaussian with ``psf_sigma_z_um`` along z and
   ``psf_sigma_xy_um`` across, blurs it, and the optical slices are read out
   at ``k * z_step`` (:func:`blur_canvas`).

Results are in dye units (a shaft in focus is near 1), before photons and
noise (:mod:`.camera`).  :func:`haze_map` is the smooth background: uneven
tissue and dendrites far out of focus.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .grid import Grid
from .params import SynthParams
from .scene import Ball, Scene

if TYPE_CHECKING:
    from .stack import SynthStack


class Canvas:
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


def blur_canvas(canvas: Canvas, z_out_um: np.ndarray) -> np.ndarray:
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


def canvas_around(grid: Grid, objects) -> Canvas:
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
    return Canvas(grid, m0, r0, c0, (m1 - m0, r1 - r0, c1 - c0))


def seen_alone(canvas: Canvas, obj, z_um: np.ndarray):
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
    seen = blur_canvas(canvas, np.concatenate([z_um, own_z]))
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
        canvas = Canvas(grid, m0, -pad, -pad, (m1 - m0, height + 2 * pad, width + 2 * pad))
        for obj in objects:
            canvas.paint(obj)
        out[k0:k1] = blur_canvas(canvas, z_um[k0:k1])
        k0 = k1
    return out


def render_alone(stack: SynthStack, objects) -> np.ndarray:
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


def haze_map(rng, grid: Grid, scene: Scene, p: SynthParams) -> np.ndarray:
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
