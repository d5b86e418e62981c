"""Spines found before, read back: a ``_boxes.csv`` (spine-run's, perhaps edited by hand) as a DetectionResult.

``spine-track --detections DIR`` uses this so that a session already run
through ``spine-run`` (or corrected in napari or Fiji) is not detected again:
its spines are rebuilt from the table's rows, one spine per ``spine_id``, in
slice order, and their fluorescence is measured on the stack exactly as
:meth:`~spinedet.runtime.detector.SpineDetector.detect` measures it
(:func:`~spinedet.runtime.spines.box_fluorescence`, gaps filled by
:func:`~spinedet.runtime.spines.spine_from_track`).  No model runs.

Units: boxes (x_min, y_min, x_max, y_max) in pixels of the stack, ``z`` the
stack's slice numbers as spine-run writes them (0 = the first slice of a TIFF;
a folder of numbered PNG slices keeps its numbers), voxel sizes in µm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .detector import DetectionResult, max_projection
from .errors import SpineDetError
from .spines import box_fluorescence, spine_from_track
from .stacks import Stack
from .tables import BoxTable, read_box_table
from .tracking import Track, tracks_to_table
from .voxels import as_voxel_size

#: pixels a box edge may lie outside the image (rounding in a table written elsewhere)
EDGE_TOLERANCE_PX = 1.0


def read_detections(path) -> tuple[BoxTable, dict]:
    """A ``<stem>_boxes.csv`` and the run summary spine-run wrote beside it (``<stem>_summary.json``; ``{}`` where
    there is none, as for a table made by hand).  Raises SpineDetError for an unreadable table or summary."""
    path = Path(path)
    table = read_box_table(path)
    summary_path = path.with_name(path.name[: -len("_boxes.csv")] + "_summary.json") \
        if path.name.endswith("_boxes.csv") else None
    if summary_path is None or not summary_path.is_file():
        return table, {}
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpineDetError(f"unreadable run summary ({type(exc).__name__})", summary_path) from None
    return table, summary if isinstance(summary, dict) else {}


def check_run(summary: dict, shape) -> None:
    """Raise SpineDetError where spine-run's ``summary`` of a table says it does not describe 3D spines of a stack
    of ``shape`` ``(Z, Y, X)``: found on the maximum projection (``--mip``: every box in slice 0), or in a stack
    of another shape."""
    if summary.get("mode") == "maximum projection" and shape[0] > 1:
        raise SpineDetError("was found on the maximum projection (spine-run --mip): its spines have no depth; run "
                            "spine-run without --mip for spine-track")
    made = summary.get("shape_zyx")
    if isinstance(made, list) and len(made) == 3 and tuple(made) != tuple(shape):
        raise SpineDetError(f"was found in a stack of shape {tuple(made)}, this one is {tuple(shape)} "
                            "(is it the table of another stack?)")


def check_table(table: BoxTable, shape, z_index=None) -> None:
    """Raise SpineDetError unless every row of ``table`` fits a stack of ``shape`` ``(Z, Y, X)``.

    One stack's table (one ``stack`` value), spine ids of 1 or more, one row
    per spine per slice, slices among ``z_index`` (the stack's slice numbers,
    default ``0..Z-1``), finite boxes with
    ``x_min < x_max``, ``y_min < y_max`` inside the image (within
    :data:`EDGE_TOLERANCE_PX`).
    """
    if len(table.stacks()) > 1:
        raise SpineDetError(f"holds the boxes of {len(table.stacks())} stacks ({', '.join(table.stacks()[:3])}...); "
                            "give one stack's table")
    if not len(table):
        return
    depth, height, width = shape
    rows = np.arange(len(table))

    def refuse(bad, what):
        k = int(rows[bad][0])
        raise SpineDetError(f"row {k + 1} (spine {table.spine_id[k]}, z {table.z[k]}): {what}; "
                            f"{int(np.sum(bad))} such rows (is this the table of another stack?)")

    if np.any(table.spine_id < 1):
        refuse(table.spine_id < 1, "spine ids start at 1")
    numbers = np.arange(depth) if z_index is None else np.asarray(z_index)
    outside = ~np.isin(table.z, numbers)
    if outside.any():
        refuse(outside, f"slice not in the stack (its {depth} slices are numbered {numbers[0]}-{numbers[-1]})")
    b = table.boxes
    if not np.isfinite(b).all():
        refuse(~np.isfinite(b).all(axis=1), "box corner is not a number")
    if np.any((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])):
        refuse((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]), "box has no area (x_max <= x_min or y_max <= y_min)")
    tol = EDGE_TOLERANCE_PX
    off = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > width + tol) | (b[:, 3] > height + tol)
    if off.any():
        refuse(off, f"box outside the {width} x {height} pixel image")
    pairs = table.spine_id * (int(numbers.max()) + 1) + table.z
    if len(np.unique(pairs)) != len(pairs):
        _, first = np.unique(pairs, return_index=True)
        twice = np.ones(len(pairs), dtype=bool)
        twice[first] = False
        refuse(twice, "a second box of the same spine in the same slice")


def detection_from_table(table: BoxTable, stack, voxel_size=None, projection: bool = False) -> DetectionResult:
    """The :class:`~spinedet.runtime.detector.DetectionResult` of the spines in ``table``, measured on ``stack``.

    table: the boxes of one stack (:func:`~spinedet.runtime.tables.read_box_table`),
    a row per spine per slice (``z``: the stack's slice numbers, as
    spine-run writes them); spine ids are kept.  stack: its ``(Z, Y, X)``
    array or :class:`~spinedet.runtime.stacks.Stack` (raw intensities, for
    fluorescence).  voxel_size: ``(z, y, x)`` µm (default: the Stack's own).
    projection: also keep the maximum-intensity projection (overlays).
    The result's ``intensity_range`` is (nan, nan) and its timings empty: no
    model ran.  Raises SpineDetError where the table does not fit the stack
    (:func:`check_table`).
    """
    if isinstance(stack, Stack):
        slices, voxel = stack, stack.voxel_size if voxel_size is None else as_voxel_size(voxel_size)
        shape, z_index = tuple(stack.shape), list(stack.z_index)
    else:
        slices = np.asarray(stack)
        slices = slices[None] if slices.ndim == 2 else slices
        if slices.ndim != 3 or slices.size == 0:
            raise SpineDetError(f"expected a (Z, Y, X) stack or a (Y, X) image, got shape {np.shape(stack)}")
        voxel, shape, z_index = as_voxel_size(voxel_size), slices.shape, list(range(len(slices)))
    check_table(table, shape, z_index)
    position = {int(z): k for k, z in enumerate(z_index)}
    values = np.zeros((len(table), 2))
    for z in np.unique(table.z):
        rows = np.flatnonzero(table.z == z)
        values[rows] = box_fluorescence(np.asarray(slices[position[int(z)]]), table.boxes[rows])
    spines = []
    for spine_id in np.unique(table.spine_id):
        rows = np.flatnonzero(table.spine_id == spine_id)
        rows = rows[np.argsort(table.z[rows])]
        track = Track(int(spine_id), table.z[rows].tolist(), list(table.boxes[rows]), table.score[rows].tolist(),
                      list(values[rows]))
        spines.append(spine_from_track(track, voxel.z_um, voxel.x_um))
    maximum = max_projection(slices) if projection else None
    return DetectionResult(spines, tracks_to_table(spines), shape, voxel, (math.nan, math.nan), {}, False, maximum,
                           None, [], [])
