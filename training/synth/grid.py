"""How a stack samples space: slices, pixels, the fine z grid of the sharp volume, and the PSF.

Everything is placed and rendered in physical units (µm), so pixel size and
z-step change the image consistently.  Coordinates are ``(z, y, x)`` in µm:
slice ``k`` lies at ``z = k * z_step``, pixel ``(row i, column j)`` covers
``[i, i + 1) * pixel_size`` in y and ``[j, j + 1) * pixel_size`` in x, so a
box edge at pixel coordinate ``c`` is at ``c * pixel_size`` µm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
