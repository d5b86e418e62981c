"""``_boxes.csv`` tables <-> napari layer data, as plain numpy (no napari, no Qt here).

A :class:`~spinedet.runtime.tables.BoxTable` row is one spine's box on one slice:
``spine_id``, ``z`` (slice index), box ``(x_min, y_min, x_max, y_max)`` in pixels and ``score``.
In napari it is one rectangle of a Shapes layer, given as its four corners in the layer's data
coordinates, which are pixels and slices:

* ``ndim=3``: each corner is ``(z, y, x)``, the rectangle lies in slice ``z``;
* ``ndim=2``: each corner is ``(y, x)`` (a single image, or a maximum projection: ``z`` is 0).

The corners go round the box: ``(y_min, x_min), (y_min, x_max), (y_max, x_max), (y_max, x_min)``.
Per-rectangle features (a column per name, one value per rectangle): ``spine_id``, ``score`` and
``slice`` (= ``z``).  A Points layer holds one point per spine at its centroid, as spine-run's
``_spines.csv`` defines it: the centre of the spine's z-averaged box, and the middle of its slice
range ``(z_first + z_last) / 2`` in slices.

:func:`table_from_shapes` is the way back: each shape's bounding box in the plane, its slice the
rounded mean ``z`` of its corners.  A rectangle the user drew has no spine id (``spine_id`` NaN,
or 0 or below, as :data:`NEW_BOX_FEATURES` sets for new shapes): each becomes a new spine with
the next free id and score 1 (a person's annotation, as in ground truth).
"""

from __future__ import annotations

import numpy as np

from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.evaluate import spines_of
from spinedet.runtime.tables import BoxTable

#: feature values napari gives a rectangle the user draws (see the module docstring)
NEW_BOX_FEATURES = {"spine_id": 0, "score": 1.0, "slice": 0}


def shapes_from_table(table: BoxTable, ndim: int = 3) -> tuple[list, dict]:
    """Rectangles and their features for ``table``: ``([corners (4, ndim)], {name: (N,) array})``.

    Corners are in pixels (and slices for ``ndim=3``), rows in the table's order.  ``ndim=2`` needs every
    row in slice 0 (a single image or a projection).
    """
    if ndim not in (2, 3):
        raise SpineDetError(f"rectangles are 2D or 3D, not {ndim}D")
    if ndim == 2 and len(table) and np.any(table.z != 0):
        raise SpineDetError(f"boxes in slices {sorted(set(table.z.tolist()))} cannot be drawn in 2D")
    shapes = []
    for z, (x0, y0, x1, y1) in zip(table.z, table.boxes):
        corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=np.float64)
        if ndim == 3:
            corners = np.column_stack([np.full(4, float(z)), corners])
        shapes.append(corners)
    features = {"spine_id": table.spine_id.copy(), "score": table.score.copy(), "slice": table.z.copy()}
    return shapes, features


def table_from_shapes(shapes, features) -> BoxTable:
    """The BoxTable of a Shapes layer: ``shapes`` a list of ``(K, 2 or 3)`` corner arrays (pixels; slices
    first in 3D), ``features`` a mapping (or DataFrame) with ``spine_id`` and ``score`` per shape.

    A shape's box is the bounding box of its corners; its slice the rounded mean of their ``z`` (0 in 2D).
    Shapes without a spine id (NaN, or 0 and below) get new ids after the largest one, score 1 where the
    score is missing.
    """
    shapes = [np.asarray(s, dtype=np.float64) for s in shapes]
    n = len(shapes)
    ids = _column(features, "spine_id", n)
    scores = _column(features, "score", n)
    boxes = np.zeros((n, 4))
    z = np.zeros(n, dtype=np.int64)
    for k, corners in enumerate(shapes):
        if corners.ndim != 2 or corners.shape[1] not in (2, 3) or len(corners) == 0:
            raise SpineDetError(f"shape {k} has corners of shape {corners.shape}, expected (K, 2) or (K, 3)")
        if corners.shape[1] == 3:
            z[k] = int(np.rint(corners[:, 0].mean()))
        y, x = corners[:, -2], corners[:, -1]
        boxes[k] = x.min(), y.min(), x.max(), y.max()
    new = ~(ids > 0)  # NaN or <= 0
    known = ids[~new]
    start = int(known.max()) + 1 if len(known) else 1
    ids[new] = np.arange(start, start + int(new.sum()))
    scores[np.isnan(scores)] = 1.0
    if np.any(z < 0):
        raise SpineDetError(f"a box lies above the first slice (slice {int(z.min())})")
    return BoxTable.from_rows(ids.astype(np.int64), z, boxes, scores)


def _column(features, name: str, n: int) -> np.ndarray:
    """``features[name]`` as ``(n,)`` float (NaN where missing)."""
    if features is None or name not in features:
        return np.full(n, np.nan)
    values = np.asarray(features[name], dtype=np.float64).reshape(-1)
    if len(values) != n:
        raise SpineDetError(f"{len(values)} values of {name!r} for {n} shapes")
    return values.copy()


def centroids_from_table(table: BoxTable, ndim: int = 3) -> tuple[np.ndarray, dict]:
    """One point per spine at its centroid: ``((S, ndim) points, {name: (S,) array})``, spines by id.

    A point is ``(z, y, x)`` (``(y, x)`` for ``ndim=2``): x, y the centre of the spine's z-averaged box
    (pixels), z the middle of its slice range (slices; may be a half slice).  Features: ``spine_id``,
    ``z_first``, ``z_last``, ``max_score``.  The table holds one stack's boxes (spine ids count per stack).
    """
    if ndim not in (2, 3):
        raise SpineDetError(f"points are 2D or 3D, not {ndim}D")
    stacks = table.stacks()
    if len(stacks) > 1:
        raise SpineDetError(f"the table holds the boxes of {len(stacks)} stacks; give one stack's")
    spines = spines_of(table, stacks[0] if stacks else "")  # mean box and slice range per id, ids sorted
    x0, y0, x1, y1 = spines.mean_box.T
    centre = [(y0 + y1) / 2, (x0 + x1) / 2]
    points = np.column_stack(([(spines.z_first + spines.z_last) / 2] if ndim == 3 else []) + centre)
    best = np.full(len(spines.spine_id), -np.inf)
    np.maximum.at(best, np.searchsorted(spines.spine_id, table.spine_id), table.score)
    return points.reshape(-1, ndim), {"spine_id": spines.spine_id.astype(np.int64), "z_first": spines.z_first,
                                      "z_last": spines.z_last, "max_score": best}
