"""The generator's settings (:class:`SynthParams`) and how their ranges become values.

Lengths are in µm, brightness relative to a dendritic shaft (1.0), photons
per voxel.  A setting given as a ``(low, high)`` range is drawn once per
stack by :meth:`SynthParams.sample` (or, for per-object settings, once per
object with :func:`draw_each`); a single value fixes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np


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
    # the ground-truth rule (fixed, see spinedet.training.synth.truth)
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


def draw_each(rng, value_range, size=None):
    """One value (or ``size`` values) uniform on a per-object ``(low, high)`` range."""
    low, high = value_range
    return rng.uniform(low, high, size)
