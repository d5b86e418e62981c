"""napari reader and writer for spine-run's ``<stem>_boxes.csv`` (npe2 contributions, see ``napari.yaml``).

Reading gives two layers in pixels and slices (:func:`~.layers.box_layers`): the rectangles, one per spine
per slice, and the spine centroids.  Writing takes a Shapes layer (the rectangles, after the user deleted,
moved or drew some) back to a ``_boxes.csv`` exactly as spine-run writes it, all or nothing.  A corrected
table is ground truth for ``spine-eval --gt`` and training data for ``spine-train``.
"""

from __future__ import annotations

from pathlib import Path

from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.files import write_all
from spinedet.runtime.tables import boxes_csv_text, read_box_table

from .convert import table_from_shapes
from .layers import box_layers

SUFFIX = "_boxes.csv"


def get_reader(path):
    """npe2 reader hook: :func:`read_boxes` for one ``*_boxes.csv`` path (or a list of them), else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(str(p).endswith(SUFFIX) for p in paths):
        return None
    return read_boxes


def read_boxes(path) -> list[tuple]:
    """Layer-data tuples (Shapes of rectangles, Points of centroids) of each ``_boxes.csv`` in ``path``.

    The rectangles are 3D ``(z, y, x)`` in pixels and slices, so they lie over the stack they came from
    when that is shown at scale 1.  Raises SpineDetError (one line naming the file) for a bad table.
    """
    layers = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        table = read_box_table(p)
        if len(table.stacks()) > 1:
            raise SpineDetError(f"holds the boxes of {len(table.stacks())} stacks; open one stack's table", p)
        layers += box_layers(table, p.name[: -len(SUFFIX)] if p.name.endswith(SUFFIX) else p.stem, ndim=3)
    return layers


def write_boxes(path: str, data, attributes: dict) -> list[str]:
    """npe2 writer for one Shapes layer: its rectangles as a ``_boxes.csv`` at ``path``; returns ``[path]``.

    Only names ending in ``_boxes.csv`` get spine-run's format: napari offers this writer for every ``.csv``
    (npe2 matches extensions only), so any other ``.csv`` name is handed on to napari's own shapes writer,
    as if this plugin were not installed.

    data: the layer's shapes (corners in pixels, slices first in 3D); attributes: the layer's state, whose
    ``features`` give each shape's ``spine_id`` and ``score`` (shapes without one become new spines,
    :func:`~.convert.table_from_shapes`).  Rows are sorted by spine and slice as spine-run sorts them.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise SpineDetError("a box table is a .csv file (spine-run names them <stem>_boxes.csv)", path)
    if not path.name.endswith(SUFFIX):
        from npe2 import write

        return write(str(path), [(data, attributes, "shapes")], plugin_name="napari")
    try:
        table = table_from_shapes(data, attributes.get("features"))
    except SpineDetError as exc:
        raise exc.with_path(path) from None
    return [str(p) for p in write_all({path: boxes_csv_text(table)})]
