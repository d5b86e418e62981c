"""A napari image layer's voxel size in µm, and the array spinedet runs on (plain numpy, no napari here).

napari keeps a layer's voxel size as its ``scale`` (one value per axis, ``(z, y, x)`` for a stack) in
the layer's ``units`` (napari's default unit is the pixel, with scale 1).  spinedet wants µm:

* a scale of 1 on every axis is napari's default, so the voxel size is **unknown**: spine-run's rule
  then applies (the model's pixel size is assumed, 0.1 µm/px for the shipped model) and the widget
  says so;
* with length units (nm, µm, mm..., :data:`spinedet.runtime.voxels.UM_PER_UNIT`) the scale is converted
  to µm;
* otherwise (units "pixel" or none, but a scale other than 1) the scale is taken to be in µm, which is
  what microscopy readers for napari set.

A z scale of 1 on a layer whose y/x scale is not 1 is a z-step of 1 unit (1 µm is a common one).
"""

from __future__ import annotations

import numpy as np

from spinedet.runtime.context import ASSUMED_Z_STEP_UM
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.voxels import um_per_unit



def voxel_size_from_scale(scale, units=None, model_pixel_um: float = 0.1) -> tuple[tuple, list[str]]:
    """``((z, y, x) in µm, notes)`` from a layer's ``scale`` (2 or 3 spatial values) and ``units``.

    Unknown values are None (z is None for a 2D layer).  notes: what was assumed, one sentence each
    (model_pixel_um: the pixel size the detector then assumes, its card's).
    """
    scale = [float(v) for v in scale]
    if len(scale) not in (2, 3):
        raise SpineDetError(f"expected the scale of a (Z, Y, X) or (Y, X) layer, got {len(scale)} values")
    names = [str(u) for u in units][-len(scale):] if units is not None else ["pixel"] * len(scale)
    factors = [um_per_unit(name) for name in names]
    if all(f is None for f in factors) and all(v == 1.0 for v in scale):
        z_step = f" and a {ASSUMED_Z_STEP_UM:g} µm z-step" if len(scale) == 3 else ""
        return (None, None, None), [f"the layer's scale is 1 (napari's default), so its voxel size is unknown: "
                                    f"assumed the model's {model_pixel_um:g} µm/px{z_step}; spine counts depend "
                                    "on it, so set the layer's scale (z, y, x in µm) if you know it"]
    um = [v * (f if f is not None else 1.0) for v, f in zip(scale, factors)]
    notes = []
    y, x = um[-2:]
    if not np.isclose(y, x, rtol=0.01):
        notes.append(f"pixels are {x:g} x {y:g} µm (x, y): used {x:g} µm/px for both")
    z = um[0] if len(um) == 3 else None
    return (z, x, x), notes


def detection_array(data, rgb: bool = False, multiscale: bool = False) -> np.ndarray:
    """The ``(Z, Y, X)`` or ``(Y, X)`` numpy array of an image layer's ``data`` (the full-resolution level of
    a multiscale one); SpineDetError for RGB or more than three dimensions."""
    if multiscale:
        data = data[0]
    if rgb:
        raise SpineDetError("an RGB layer: spinedet needs one grey channel (split the channels first)")
    shape = tuple(np.shape(data))
    if len(shape) not in (2, 3):
        raise SpineDetError(f"a layer of shape {shape}: spinedet needs a (Z, Y, X) stack or a (Y, X) image "
                            "(split channels or time points first)")
    return np.asarray(data)
