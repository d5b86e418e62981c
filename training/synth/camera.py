"""The camera: from dye to photons to counts, with depth attenuation, noise, gain and bit depth.

expected photons = depth attenuation * (signal_photons * blurred dye +
background and haze); the detector counts Poisson photons, adds Gaussian
read noise, a gain (brightest voxel at ``saturation`` times full scale, so
> 1 saturates) and an offset, and clips to 8 or 16 bit.
"""

from __future__ import annotations

import numpy as np

from .grid import Grid
from .params import SynthParams


def depth_attenuation(grid: Grid, p: SynthParams) -> np.ndarray:
    """(Z,) float64: the fraction of the signal left at each slice's depth, ``exp(-z / attenuation_length_um)``."""
    return np.exp(-grid.slice_z_um() / p.attenuation_length_um)


def expected_photons(dye: np.ndarray, background: np.ndarray, attenuation: np.ndarray,
                     p: SynthParams) -> np.ndarray:
    """Expected photons per voxel (Z, Y, X) float32, computed in place in ``dye`` and returned.

    ``dye`` (Z, Y, X) float32 blurred dye units, ``background`` (Y, X)
    float32 photons before attenuation (:func:`~.render.haze_map`),
    ``attenuation`` (Z,) from :func:`depth_attenuation`.
    """
    dye *= np.float32(p.signal_photons)
    dye += background[None]
    dye *= attenuation.astype(np.float32)[:, None, None]
    return dye


def slice_noise_sd(expected: np.ndarray, p: SynthParams) -> np.ndarray:
    """(Z,) float32: the noise SD in photons of each slice's median voxel, sqrt(its photons + read noise²)."""
    return np.sqrt(np.median(expected.reshape(expected.shape[0], -1), axis=1) + p.read_noise_photons ** 2)


def detect(rng, expected: np.ndarray, p: SynthParams) -> np.ndarray:
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
