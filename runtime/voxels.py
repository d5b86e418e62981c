"""Voxel sizes: where a stack's came from, which are believable, and how far a slice is resampled for the model.

Units are µm throughout.  The model works at its card's pixel size
(``ModelCard.pixel_size_um``, 0.1 µm for the shipped one); a slice of pixel
size ``p`` is resampled by the factor ``p / card.pixel_size_um`` (above 1 it
is enlarged).  Metadata outside :data:`PLAUSIBLE_UM` is a display or print
setting (72 or 300 dpi), not optics, and is ignored with a note; a size the
model cannot use (a spine would be under a pixel wide, or the resampled slice
would not fit in memory) is refused before any work, naming where it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .context import ASSUMED_Z_STEP_UM
from .errors import SpineDetError

#: µm: voxel sizes outside this range are not a microscope's
PLAUSIBLE_UM = (0.005, 20.0)
#: the model takes slices whose pixel size is within these factors of its own (below: shrunk, above: enlarged;
#: at 5x a 1 µm spine head is 2 pixels wide in the file)
RESCALE_LIMITS = (1 / 8, 5.0)
#: the most pixels a slice may have after resampling (about 10,000 x 10,000)
MAX_RESAMPLED_PIXELS = 100_000_000
#: µm per length unit, for the unit names files and viewers write (OME, ImageJ, NGFF/UDUNITS-2, pint), lower case
UM_PER_UNIT = {"angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0,
               "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "mm": 1e3, "millimeter": 1e3,
               "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6}


def um_per_unit(unit) -> float | None:
    """µm per ``unit`` (a length unit's name or abbreviation, str or bytes; case and spaces ignored), or None
    for anything that is not a length unit (``"pixel"``, ``"inch"``, empty)."""
    if isinstance(unit, bytes):
        unit = unit.decode("latin-1")
    return UM_PER_UNIT.get(str(unit).strip().lower()) if unit is not None else None


@dataclass(frozen=True)
class VoxelSize:
    """Voxel size in µm; None where unknown.

    source: where the values came from (``"ImageJ metadata"``, ``"command line"``, ``"unknown"``...).
    ignored: metadata that was found but not believed, in words (empty if none).
    """

    x_um: float | None = None
    z_um: float | None = None
    source: str = "unknown"
    ignored: str = ""

    def pixel_size_or(self, default: float) -> float:
        return self.x_um if self.x_um else default


def plausible(um) -> float | None:
    """``um`` if it is a believable voxel size in µm, else None."""
    return float(um) if um is not None and math.isfinite(um) and PLAUSIBLE_UM[0] <= um <= PLAUSIBLE_UM[1] else None


def as_voxel_size(value) -> VoxelSize:
    """A :class:`VoxelSize` from ``None``, a VoxelSize, a number (the pixel size) or ``(z, y, x)`` in µm."""
    if value is None:
        return VoxelSize()
    if isinstance(value, VoxelSize):
        return value
    values = tuple(value) if np.ndim(value) else (None, value, value)
    if len(values) != 3:
        raise SpineDetError(f"voxel_size must be (z, y, x) in µm, got {value!r}")
    z, _, x = values
    for v in (z, x):
        if v is not None and not v > 0:
            raise SpineDetError(f"voxel sizes must be positive µm, got {value!r}")
    return VoxelSize(x, z, "given")


def rescale_factor(pixel_size_um: float | None, card) -> float:
    """How much a slice of ``pixel_size_um`` is resized to reach the model's pixel size (1: not at all).

    Within the card's ``rescale_tolerance`` (relative) no resampling is done;
    an unknown pixel size is taken to be the model's.
    """
    if pixel_size_um and abs(pixel_size_um / card.pixel_size_um - 1) > card.rescale_tolerance:
        return pixel_size_um / card.pixel_size_um
    return 1.0


def check_scale(voxel: VoxelSize, slice_shape, card) -> None:
    """Refuse a voxel size the model cannot use, in one line that says where it came from and how to override it.

    slice_shape: ``(Y, X)`` pixels of one slice.
    """
    lo, hi = RESCALE_LIMITS
    unit = card.pixel_size_um
    accepted = f"the model takes {unit * lo:.3g}-{unit * hi:.3g} µm/px"
    hint = ("if that is wrong, pass the right size (spine-run --pixel-size UM, or voxel_size=)"
            if "command line" not in voxel.source else "")
    if voxel.x_um is not None:
        factor = rescale_factor(voxel.x_um, card)
        ny, nx = (int(round(v * factor)) for v in slice_shape)
        what = (f"pixel size {voxel.x_um:g} µm ({voxel.source}) would resample each {slice_shape[1]}x{slice_shape[0]} "
                f"slice {factor:.3g}x to {nx}x{ny} px for the model's {unit:g} µm/px")
        if not lo <= factor <= hi:
            raise SpineDetError(f"{what}; {accepted}{'; ' + hint if hint else ''}")
        if ny * nx > MAX_RESAMPLED_PIXELS:
            raise SpineDetError(f"{what}, more than {MAX_RESAMPLED_PIXELS // 1_000_000} million pixels; "
                                "crop the image or give its pixel size")
    if voxel.z_um is not None and plausible(voxel.z_um) is None:
        raise SpineDetError(f"z-step {voxel.z_um:g} µm ({voxel.source}) is not a microscope's "
                            f"({PLAUSIBLE_UM[0]:g}-{PLAUSIBLE_UM[1]:g} µm); pass the right one (--z-step UM)")


def assumptions(voxel: VoxelSize, card, n_slices: int) -> list[str]:
    """What a run had to assume about the voxel size, one sentence each (empty if nothing)."""
    notes = []
    if voxel.x_um is None:
        ignored = f" ({voxel.ignored})" if voxel.ignored else ""
        notes.append(f"no pixel size in the file{ignored}: assumed the model's {card.pixel_size_um:g} µm/px; "
                     "spine counts depend on it, so pass --pixel-size UM if it differs")
    if voxel.z_um is None and n_slices > 1 and card.depth_context_um > 0:
        notes.append(f"no z-step in the file: assumed {ASSUMED_Z_STEP_UM:g} µm for the model's depth context "
                     "(pass --z-step UM); z positions are in slices only")
    return notes
