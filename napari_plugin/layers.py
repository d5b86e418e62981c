"""The napari layers of a ``_boxes.csv`` table, as layer-data tuples (plain data, no napari import).

:func:`box_layers` gives what the reader and the detection widget add to a viewer: a Shapes layer of
per-slice rectangles (features ``spine_id``, ``score``, ``slice``) and a Points layer of spine
centroids (features ``spine_id``, ``z_first``, ``z_last``, ``max_score``).  Coordinates are pixels
and slices (:mod:`.convert`); ``scale`` and ``translate`` place them over an image layer whose pixels
have another size in the viewer (the image layer's own ``scale`` and ``translate``).
"""

from __future__ import annotations

from spinedet.runtime.tables import BoxTable

from .convert import NEW_BOX_FEATURES, centroids_from_table, shapes_from_table

#: rectangle edges, spine-id labels and centroid points: three colours told apart in a screenshot
EDGE_COLOR = "yellow"
TEXT_COLOR = "cyan"
POINT_COLOR = "magenta"
EDGE_WIDTH = 1.0  # pixels of the layer's data


def box_layers(table: BoxTable, name: str, ndim: int = 3, scale=None, translate=None) -> list[tuple]:
    """``[(data, kwargs, "shapes"), (data, kwargs, "points")]`` for ``table``, named after ``name``.

    ndim: 3 (``(z, y, x)``, each rectangle in its slice) or 2 (``(y, x)``: a single image or a maximum
    projection, every row in slice 0).  scale, translate: per axis, ``ndim`` values (None: 1 and 0).
    """
    shapes, features = shapes_from_table(table, ndim)
    points, point_features = centroids_from_table(table, ndim)
    placed = {}
    if scale is not None:
        placed["scale"] = tuple(float(v) for v in scale)
    if translate is not None:
        placed["translate"] = tuple(float(v) for v in translate)
    shapes_kwargs = dict(
        name=f"{name} boxes", ndim=ndim, shape_type="rectangle", features=features,
        feature_defaults=dict(NEW_BOX_FEATURES),
        edge_color=EDGE_COLOR, edge_width=EDGE_WIDTH, face_color="transparent", opacity=1.0,
        text={"string": "{spine_id}", "color": TEXT_COLOR, "size": 8, "anchor": "upper_left"},
        metadata={"spinedet": "boxes"}, **placed)
    points_kwargs = dict(
        name=f"{name} spines", ndim=ndim, features=point_features, face_color=POINT_COLOR, border_width=0, size=3,
        opacity=1.0, out_of_slice_display=False, metadata={"spinedet": "centroids"}, **placed)
    return [(shapes, shapes_kwargs, "shapes"), (points, points_kwargs, "points")]
