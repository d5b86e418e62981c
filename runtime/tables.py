"""Tables of tracked boxes: the project's ``_boxes.csv`` and the paper's CSV formats.

A :class:`BoxTable` holds one row per spine per optical slice:

``stack``     the scope of spine ids: rows with the same stack and spine_id
              are one 3D spine ("" for a single stack)
``spine_id``  integer id of the 3D spine (unique within a stack)
``z``         slice index (0 for a single 2D image)
``boxes``     ``(N, 4)`` float, (x_min, y_min, x_max, y_max) in pixels
``score``     detection confidence in [0, 1] (1 for ground truth)
``source``    the image series the slice belongs to: a slice is the pair
              (source, z).  Usually equal to ``stack``; it differs for the
              paper's tracking CSV, whose ids are global over all the stacks
              in one file (the authors tracked their test stacks as one
              sequence), so there ``stack`` is "" and ``source`` is the stack
              named in each row's file name.

Formats read by :func:`read_box_table`:

* the project's ``_boxes.csv``: ``spine_id,z,xmin,ymin,xmax,ymax,score``
  (optionally with a leading ``stack`` column, as consensus files have);
* the paper's tracking CSV: ``id,filename,width,height,class,score,xmin,
  ymin,xmax,ymax``, slice index from the two digits before ``.png`` in
  ``filename`` and the source stack from the rest of the file name.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SpineDetError

BOXES_COLUMNS = ("spine_id", "z", "xmin", "ymin", "xmax", "ymax", "score")
PAPER_TRACKING_COLUMNS = ("id", "filename", "width", "height", "class", "score", "xmin", "ymin", "xmax", "ymax")
_SLICE_NAME = re.compile(r"^(?P<stack>.*)-(?P<z>\d+)\.png$", re.IGNORECASE)


@dataclass
class BoxTable:
    """Rows of tracked boxes; all arrays have the same length N."""

    stack: np.ndarray
    spine_id: np.ndarray
    z: np.ndarray
    boxes: np.ndarray
    score: np.ndarray
    source: np.ndarray

    FIELDS = ("stack", "spine_id", "z", "boxes", "score", "source")

    @classmethod
    def empty(cls) -> "BoxTable":
        return cls.from_rows([], [], np.zeros((0, 4)), [])

    @classmethod
    def from_rows(cls, spine_id, z, boxes, score, stack=None, source=None) -> "BoxTable":
        n = len(spine_id)
        stack = np.asarray([""] * n if stack is None else stack, dtype=object).reshape(n)
        return cls(
            stack,
            np.asarray(spine_id, dtype=np.int64).reshape(n),
            np.asarray(z, dtype=np.int64).reshape(n),
            np.asarray(boxes, dtype=np.float64).reshape(n, 4),
            np.asarray(score, dtype=np.float64).reshape(n),
            stack.copy() if source is None else np.asarray(source, dtype=object).reshape(n),
        )

    @classmethod
    def concatenate(cls, tables) -> "BoxTable":
        tables = list(tables)
        if not tables:
            return cls.empty()
        return cls(*(np.concatenate([getattr(t, f) for t in tables]) for f in cls.FIELDS))

    def __len__(self) -> int:
        return len(self.spine_id)

    def stacks(self) -> list[str]:
        """The stack names (scopes of spine ids) in order of first appearance."""
        return list(dict.fromkeys(self.stack.tolist()))

    def sources(self) -> list[str]:
        """The image series names in order of first appearance."""
        return list(dict.fromkeys(self.source.tolist()))

    def select(self, mask) -> "BoxTable":
        return BoxTable(*(getattr(self, f)[mask] for f in self.FIELDS))


def slice_index_from_name(filename: str) -> tuple[str, int] | None:
    """``(stack, z)`` from a per-slice file name like ``.../SR052stack1-06.png``, or None."""
    match = _SLICE_NAME.match(Path(filename).name)
    if match is None:
        return None
    return match.group("stack"), int(match.group("z"))


def boxes_csv_text(table: BoxTable, with_stack: bool = False) -> str:
    """The project's ``_boxes.csv`` text for ``table`` (rows sorted by stack, spine, z)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((("stack",) if with_stack else ()) + BOXES_COLUMNS)
    order = np.lexsort((table.z, table.spine_id, table.stack.astype(str)))
    for i in order:
        x0, y0, x1, y1 = table.boxes[i]
        row = [int(table.spine_id[i]), int(table.z[i]), f"{x0:.2f}", f"{y0:.2f}", f"{x1:.2f}", f"{y1:.2f}",
               f"{table.score[i]:.4f}"]
        writer.writerow(([table.stack[i]] if with_stack else []) + row)
    return out.getvalue()


def paper_tracking_csv_text(table: BoxTable) -> str:
    """``table`` in the paper's tracking CSV format (file names ``<source>-<z>.png``, class ``spine``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PAPER_TRACKING_COLUMNS)
    order = np.lexsort((table.spine_id, table.z, table.source.astype(str)))
    for i in order:
        x0, y0, x1, y1 = table.boxes[i]
        writer.writerow([int(table.spine_id[i]), f"{table.source[i]}-{int(table.z[i]):02d}.png", "", "", "spine",
                         f"{table.score[i]:.4f}", f"{x0:.2f}", f"{y0:.2f}", f"{x1:.2f}", f"{y1:.2f}"])
    return out.getvalue()


def read_csv(path) -> tuple[tuple, list]:
    """``(header, rows)`` of a CSV file: the header's names stripped and lower-case (``()`` for an empty
    file), the rows as lists of strings, blank rows left out.  One-line SpineDetError if it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpineDetError("no such file", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpineDetError(f"cannot read as a CSV table ({exc})", path) from None
    rows = list(csv.reader(io.StringIO(text)))
    header = tuple(name.strip().lower() for name in rows[0]) if rows else ()
    return header, [r for r in rows[1:] if any(cell.strip() for cell in r)]


def read_box_table(path) -> BoxTable:
    """Read a project ``_boxes.csv`` or a paper tracking CSV; raise SpineDetError on anything else."""
    path = Path(path)
    header, body = read_csv(path)
    if not header:
        raise SpineDetError("empty file, expected a CSV header", path)
    try:
        if header in (BOXES_COLUMNS, ("stack",) + BOXES_COLUMNS):
            return _read_project_rows(header, body)
        if set(PAPER_TRACKING_COLUMNS) <= set(header):
            return _read_paper_rows(header, body)
    except (ValueError, IndexError) as exc:
        raise SpineDetError(f"malformed row ({exc})", path) from None
    raise SpineDetError(
        f"unknown CSV columns {','.join(header)}; expected {','.join(BOXES_COLUMNS)} "
        f"or the paper's tracking format {','.join(PAPER_TRACKING_COLUMNS)}", path)


def _read_project_rows(header, body) -> BoxTable:
    col = {name: k for k, name in enumerate(header)}
    stack = [r[col["stack"]] for r in body] if "stack" in col else None
    return BoxTable.from_rows(
        [int(r[col["spine_id"]]) for r in body],
        [int(r[col["z"]]) for r in body],
        [[float(r[col[c]]) for c in ("xmin", "ymin", "xmax", "ymax")] for r in body],
        [float(r[col["score"]]) for r in body],
        stack,
    )


def _read_paper_rows(header, body) -> BoxTable:
    col = {name: k for k, name in enumerate(header)}
    sources, zs = [], []
    for r in body:
        parsed = slice_index_from_name(r[col["filename"]])
        if parsed is None:
            raise ValueError(f"file name {r[col['filename']]!r} does not end in -NN.png")
        sources.append(parsed[0])
        zs.append(parsed[1])
    return BoxTable.from_rows(
        [int(float(r[col["id"]])) for r in body],
        zs,
        [[float(r[col[c]]) for c in ("xmin", "ymin", "xmax", "ymax")] for r in body],
        [float(r[col["score"]]) for r in body],
        stack=None,  # ids are global over the file
        source=sources,
    )
