"""Reading OME-Zarr images (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3) as a :class:`~.stacks.Stack`.

An OME-Zarr image is a folder (``*.zarr`` / ``*.ome.zarr``) holding a
multiscale pyramid; spinedet reads its highest-resolution level
(``multiscales[0].datasets[0]``).  Its axes come from the metadata: any of
``t, c, z, y, x`` in that order (the NGFF order), so ``ZYX``, ``CZYX``,
``TZYX``, ``TCZYX``, ``YX``...; ``channel=`` and ``time_point=`` pick one
as for a TIFF hyperstack.  A folder written by bioformats2raw (the image in
its ``0/`` group) is read as its first image.

The voxel size, in µm, is the dataset's ``scale`` (times the multiscale's
own, if any) in the unit its axes state (``micrometer``, ``nanometer``...);
a spatial axis without a unit has an unknown size (the caller assumes one
and says so).  ``stack[z]`` reads only the chunks that hold slice z, so a
stack larger than memory is read in the footprint of a few slices.

Needs the optional ``zarr`` package (``pip install "spinedet[zarr]"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SpineDetError
from .voxels import VoxelSize, um_per_unit

#: NGFF axis names spinedet knows, in the order NGFF requires, as the letters the TIFF path uses
_AXIS_LETTERS = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
INSTALL = 'pip install "spinedet[zarr]"'


def is_zarr(path: Path) -> bool:
    """True if the folder ``path`` is a Zarr group or array (or is named ``*.zarr``)."""
    return path.is_dir() and (path.suffix.lower() == ".zarr" or any(
        (path / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zattrs", ".zarray")))


def open_zarr(path: Path, channel: int | None = None, time_point: int | None = None):
    """Open the OME-Zarr folder ``path`` as a lazily read Stack of ``(Y, X)`` slices (see the module doc)."""
    from .stacks import _axis_layout, _believed, _layout_stack, _slice_selector

    try:
        import zarr
    except ImportError:
        raise SpineDetError(f"reading OME-Zarr needs the zarr package: {INSTALL}", path) from None
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise SpineDetError(f"not a Zarr folder ({type(exc).__name__}: {exc})", path) from None
    attrs = _ome_attributes(group)
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs and "0" in group:
        group = group["0"]  # bioformats2raw: one image per numbered group; read the first
        attrs = _ome_attributes(group)
    multiscales = attrs.get("multiscales")
    if not multiscales or not isinstance(multiscales, list) or not multiscales[0].get("datasets"):
        raise SpineDetError("Zarr folder has no OME-Zarr multiscales metadata (not an OME-Zarr image)", path)
    image = multiscales[0]
    dataset = image["datasets"][0]
    try:
        array = group[dataset["path"]]
    except Exception as exc:
        raise SpineDetError(f"OME-Zarr dataset {dataset.get('path')!r} cannot be opened "
                            f"({type(exc).__name__}: {exc})", path) from None
    shape, dtype = tuple(int(n) for n in array.shape), np.dtype(array.dtype)
    names, units = _axes(image, len(shape), path)
    axes = "".join(_AXIS_LETTERS[n] for n in names)
    if dtype.kind not in "uif":
        raise SpineDetError(f"unsupported pixel type {dtype}", path)
    if min(shape) == 0:
        raise SpineDetError(f"OME-Zarr image is empty (axes {axes}, shape {shape})", path)
    layout = _axis_layout(axes, shape, path, time_point)

    def read(index):
        return np.asarray(array[index])  # zarr reads only the chunks this index touches

    select = _slice_selector(axes, shape, layout, channel, read, path)
    scale = _scale(image, dataset, len(shape))
    voxel = _voxel_size(names, units, scale, _believed)
    return _layout_stack(path, axes, shape, layout, dtype, voxel, select)


def _ome_attributes(group) -> dict:
    """The group's OME attributes: NGFF 0.5 keeps them under ``"ome"``, 0.4 at the top."""
    attrs = dict(group.attrs)
    return attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs


def _axes(image: dict, ndim: int, path) -> tuple[list[str], list[str | None]]:
    """The axis names (lower case, NGFF order) and their units (None where not given)."""
    axes = image.get("axes")
    if axes is None and ndim == 5:  # NGFF 0.1/0.2: always TCZYX, no units
        axes = list("tczyx")
    if not isinstance(axes, list) or len(axes) != ndim:
        raise SpineDetError(f"OME-Zarr axes {axes!r} do not match the {ndim}D array", path)
    names = [str(a.get("name", "") if isinstance(a, dict) else a).lower() for a in axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    order = "".join(_AXIS_LETTERS.get(n, "?") for n in names)
    if "?" in order or not order.endswith("YX") or order != "".join(sorted(order, key="TCZYX".index)) \
            or len(set(order)) != len(order):
        raise SpineDetError(f"unsupported OME-Zarr axes {','.join(names)}; spinedet reads t, c, z, y, x "
                            "in that order, ending with y, x", path)
    return names, units


def _scale(image: dict, dataset: dict, ndim: int) -> list[float | None]:
    """Per-axis scale of the dataset: its ``scale`` transform times the multiscale's, if any."""
    total: list[float | None] = [1.0] * ndim
    for transforms in (dataset.get("coordinateTransformations"), image.get("coordinateTransformations")):
        for transform in transforms or []:
            if transform.get("type") == "scale":
                values = transform.get("scale")
                if not isinstance(values, list) or len(values) != ndim:
                    return [None] * ndim  # a scale kept in a file, or malformed: unknown
                total = [t * float(v) if t is not None and isinstance(v, (int, float)) else None
                         for t, v in zip(total, values)]
    return total


def _voxel_size(names, units, scale, believed) -> VoxelSize:
    """Pixel size (x) and z-step in µm, where the axes state a length unit; unitless scales are named as ignored."""
    def size(name):
        if name not in names:
            return None, ""
        k = names.index(name)
        unit, value = units[k], scale[k]
        factor = um_per_unit(unit) if unit else None
        if value is None:
            return None, ""
        if factor is None:
            what = f"a {name} scale of {value:g} with no unit" if not unit else f"a {name} scale in {unit!r}"
            return None, what
        return value * factor, ""

    (x, x_why), (z, z_why) = size("x"), size("z")
    voxel = believed(x, z, "OME-Zarr metadata")
    unclear = [why for why in (x_why, z_why) if why]
    if unclear:
        text = "ignored " + " and ".join(unclear) + " in the OME-Zarr metadata"
        voxel = VoxelSize(voxel.x_um, voxel.z_um, voxel.source, "; ".join(t for t in (voxel.ignored, text) if t))
    return voxel
