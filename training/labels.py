"""Loaders for real labelled spine images, all into one structure.

Every loader returns a list of :class:`LabelledImage`: an image file, its
size and its spine boxes ``(N, 4)`` as ``(x_min, y_min, x_max, y_max)`` in
pixels (the box format of :mod:`spinedet.runtime.boxes`).  Formats:

* the paper's label CSV ``filename,width,height,class,xmin,ymin,xmax,ymax``
  (extra columns such as ``score``, ``type`` or ``id`` are allowed), which
  also reads the paper's tracking CSV slice by slice
  (:func:`read_label_csv`); the tracking CSV as a 3D table of tracked boxes
  (:func:`read_tracking_csv`);
* the VGG Image Annotator (VIA 1.x and 2.x) JSON export or project file
  (:func:`read_via_json`): rect, polygon, polyline, circle and ellipse
  regions become their bounding boxes;
* YOLO txt labels, ``class cx cy w h`` or polygons ``class x1 y1 x2 y2 ...``,
  normalised to the image size (:func:`read_yolo_txt`,
  :func:`read_yolo_dataset`);
* the real 2D set in ``../shared/data/real2d-mdg`` (:func:`load_real2d_mdg`).

:func:`split_by_group` splits by stack or by image, never by box.  numpy
only (no torch); problems with a file are one-line SpineDetErrors naming it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.tables import BoxTable, read_box_table, slice_index_from_name

LABEL_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class LabelledImage:
    """One labelled 2D image or optical slice.

    path     the image file (need not exist when only labels were given)
    width, height  image size in pixels, None where the labels do not say
    boxes    (N, 4) float64, (x_min, y_min, x_max, y_max) in pixels
    classes  (N,) class name of each box ("spine" unless the file says otherwise)
    types    (N,) morphology or other per-box tag ("" if none), e.g. M/S/T/B/F
    scores   (N,) float64, 1.0 for manual labels
    group    what must stay on one side of a split: the stack for per-slice
             files named ``<stack>-<NN>.png``, otherwise the image itself
    z        slice index from such a name, else None
    """

    path: Path
    width: int | None
    height: int | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    classes: tuple = ()
    types: tuple = ()
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group: str = ""
    z: int | None = None

    def __len__(self) -> int:
        return len(self.boxes)


def _grouping(name: str) -> tuple[str, int | None]:
    """(group, z) for an image name: per-slice names group by stack."""
    parsed = slice_index_from_name(name)
    if parsed is None:
        return name, None
    return parsed[0], parsed[1]


def _image(path: Path, width, height, boxes, classes, types, scores, name: str) -> LabelledImage:
    group, z = _grouping(name)
    return LabelledImage(Path(path), width, height, np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                         tuple(classes), tuple(types), np.asarray(scores, dtype=np.float64).reshape(-1),
                         group, z)


def _resolve(filename: str, root: Path, explicit_root: bool) -> Path:
    """Where the image named in a label file lives: relative names are under ``root``.

    An absolute name that does not exist (labels made on another computer)
    is looked for by its base name under ``root`` if a root was given.
    """
    path = Path(filename)
    if not path.is_absolute():
        return root / path
    if explicit_root and not path.exists():
        return root / path.name
    return path


# --------------------------------------------------------------------------------------------
# Image reading
# --------------------------------------------------------------------------------------------

def read_grey_image(path) -> np.ndarray:
    """A 2D image file as a ``(Y, X)`` array (TIFF and PNG through the runtime's reader)."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".tif", ".tiff"):
        from spinedet.runtime.stacks import read_image

        return read_image(path)
    import imagecodecs

    try:
        image = imagecodecs.imread(str(path))
    except FileNotFoundError:
        raise SpineDetError("no such file", path) from None
    except Exception as exc:
        raise SpineDetError(f"not a readable image ({exc})", path) from None
    if image.ndim == 3:                          # colour: the mean of the colour channels
        image = image[..., :3].mean(axis=2).astype(image.dtype)
    return image


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` of an image file in pixels."""
    height, width = read_grey_image(path).shape[:2]
    return int(width), int(height)


def _size_if_present(path: Path):
    return image_size(path) if path.is_file() else (None, None)


# --------------------------------------------------------------------------------------------
# The paper's label CSV and tracking CSV
# --------------------------------------------------------------------------------------------

def read_label_csv(path, image_root=None) -> list[LabelledImage]:
    """Read a label CSV ``filename,width,height,class,xmin,ymin,xmax,ymax[,score,type,...]``.

    One LabelledImage per file name, in order of first appearance.  Relative
    file names are under ``image_root`` (default: the CSV's folder).  A row
    whose four box values are empty lists an image without spines.  The
    paper's tracking CSV (``id,filename,...,score,...``) reads the same way,
    one image per optical slice.
    """
    path = Path(path)
    text = _read_text(path)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise SpineDetError("empty file, expected a CSV header", path)
    header = [name.strip().lower() for name in rows[0]]
    missing = [c for c in ("filename", "xmin", "ymin", "xmax", "ymax") if c not in header]
    if missing:
        raise SpineDetError(f"not a label CSV: missing column(s) {','.join(missing)}; "
                            f"expected {','.join(LABEL_COLUMNS)}", path)
    col = {name: k for k, name in enumerate(header)}
    root = Path(image_root) if image_root is not None else path.parent
    images: dict[str, dict] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            _add_label_row(images, row, col)
        except (ValueError, IndexError) as exc:
            raise SpineDetError(f"line {line}: {exc}", path) from None
    return [_image(_resolve(name, root, image_root is not None), entry["width"], entry["height"],
                   entry["boxes"], entry["classes"], entry["types"], entry["scores"], name)
            for name, entry in images.items()]


def _add_label_row(images: dict, row, col) -> None:
    def cell(name, default=""):
        return row[col[name]].strip() if name in col and col[name] < len(row) else default

    name = cell("filename")
    if not name:
        raise ValueError("empty filename")
    width = _optional_int(cell("width"), "width")
    height = _optional_int(cell("height"), "height")
    entry = images.setdefault(name, {"width": width, "height": height, "boxes": [], "classes": [],
                                     "types": [], "scores": []})
    if (width, height) != (entry["width"], entry["height"]):
        raise ValueError(f"{name}: size {width}x{height} differs from an earlier row "
                         f"({entry['width']}x{entry['height']})")
    values = [cell(c) for c in ("xmin", "ymin", "xmax", "ymax")]
    if not any(values):
        return                                   # an image without spines
    box = [float(v) for v in values]
    _check_box(box)
    entry["boxes"].append(box)
    entry["classes"].append(cell("class", "spine") or "spine")
    entry["types"].append(cell("type"))
    entry["scores"].append(float(cell("score", "1") or 1))


def _optional_int(text: str, what: str):
    if not text:
        return None
    value = float(text)
    if not value > 0 or value != int(value):
        raise ValueError(f"{what} {text!r} is not a positive whole number of pixels")
    return int(value)


def _check_box(box) -> None:
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box {box} is not finite")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"box {box} has no area (need xmax > xmin and ymax > ymin)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpineDetError("no such file", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpineDetError(f"cannot read as text ({exc})", path) from None


def read_tracking_csv(path) -> BoxTable:
    """The paper's tracking CSV (or a project ``_boxes.csv``) as a 3D :class:`BoxTable`.

    Same reader as the runtime's evaluation (:func:`spinedet.runtime.tables.read_box_table`):
    stack and slice come from file names like ``...stack1-06.png``.
    """
    return read_box_table(path)


# --------------------------------------------------------------------------------------------
# VGG Image Annotator
# --------------------------------------------------------------------------------------------

def read_via_json(path, image_root=None) -> list[LabelledImage]:
    """Read a VIA 1.x / 2.x annotation export or project file.

    Accepts the project file (the entries under ``_via_img_metadata``) and
    the plain export ``{key: {filename, size, regions, file_attributes}}``,
    with ``regions`` a list (VIA 2) or a dict (VIA 1).  Each region's
    ``shape_attributes`` become a box: rect, polygon, polyline, circle,
    ellipse; points cannot.  The class comes from a ``class``, ``label`` or
    ``name`` region attribute ("spine" if none), the type from ``type``.
    VIA does not store image sizes (its ``size`` is the file size in
    bytes), so width and height are read from the image if it is there,
    else None.  Images live under ``image_root`` (default: the JSON's folder).
    """
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise SpineDetError(f"not valid JSON ({exc})", path) from None
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        entries = data["_via_img_metadata"]
    elif isinstance(data, dict) and {"project", "file", "metadata"} <= set(data):
        raise SpineDetError("a VIA 3 project; export the annotations as VIA 2 JSON", path)
    elif isinstance(data, dict) and all(isinstance(v, dict) and "filename" in v for v in data.values()):
        entries = data
    else:
        raise SpineDetError("not a VIA annotation file (expected _via_img_metadata or "
                            "{key: {filename, regions}} entries)", path)
    root = Path(image_root) if image_root is not None else path.parent
    images = []
    for key, entry in entries.items():
        name = str(entry.get("filename", ""))
        if not name:
            raise SpineDetError(f"entry {key!r} has no filename", path)
        regions = entry.get("regions") or []
        if isinstance(regions, dict):            # VIA 1.x: {"0": {...}, "1": {...}}
            regions = [regions[k] for k in sorted(regions, key=lambda k: (len(str(k)), str(k)))]
        boxes, classes, types = [], [], []
        for n, region in enumerate(regions):
            try:
                boxes.append(_via_region_box(region.get("shape_attributes") or {}))
            except (ValueError, TypeError, KeyError) as exc:
                raise SpineDetError(f"{name}, region {n}: {exc}", path) from None
            attributes = region.get("region_attributes") or {}
            classes.append(_attribute(attributes, ("class", "label", "name")) or "spine")
            types.append(_attribute(attributes, ("type",)))
        image_path = _resolve(name, root, image_root is not None)
        width, height = _size_if_present(image_path)
        images.append(_image(image_path, width, height, boxes, classes, types, np.ones(len(boxes)), name))
    return images


def _via_region_box(shape: dict) -> list[float]:
    kind = shape.get("name")
    if kind == "rect":
        x, y = float(shape["x"]), float(shape["y"])
        box = [x, y, x + float(shape["width"]), y + float(shape["height"])]
    elif kind in ("polygon", "polyline"):
        xs = [float(v) for v in shape["all_points_x"]]
        ys = [float(v) for v in shape["all_points_y"]]
        if len(xs) < 2 or len(xs) != len(ys):
            raise ValueError(f"{kind} needs matching all_points_x/all_points_y with 2 or more points")
        box = [min(xs), min(ys), max(xs), max(ys)]
    elif kind == "circle":
        cx, cy, r = float(shape["cx"]), float(shape["cy"]), float(shape["r"])
        box = [cx - r, cy - r, cx + r, cy + r]
    elif kind == "ellipse":
        cx, cy, rx, ry = (float(shape[k]) for k in ("cx", "cy", "rx", "ry"))
        theta = float(shape.get("theta", 0.0))
        half_x = math.hypot(rx * math.cos(theta), ry * math.sin(theta))
        half_y = math.hypot(rx * math.sin(theta), ry * math.cos(theta))
        box = [cx - half_x, cy - half_y, cx + half_x, cy + half_y]
    else:
        raise ValueError(f"region shape {kind!r} cannot be a box (use rect, polygon, circle or ellipse)")
    _check_box(box)
    return box


def _attribute(attributes: dict, names) -> str:
    for name in names:
        value = attributes.get(name)
        if isinstance(value, dict):              # VIA checkbox attributes: {option: true}
            value = ",".join(k for k, on in value.items() if on)
        if value not in (None, ""):
            return str(value)
    return ""


# --------------------------------------------------------------------------------------------
# YOLO
# --------------------------------------------------------------------------------------------

def read_yolo_txt(path, width: int, height: int, image_path=None, names=None) -> LabelledImage:
    """Read one YOLO label file for an image of ``width`` x ``height`` pixels.

    Lines: ``class cx cy w h`` (box), ``class cx cy w h confidence``
    (prediction) or ``class x1 y1 x2 y2 x3 y3 ...`` (polygon, 3+ points),
    all normalised to 0..1.  ``names`` maps class numbers to names (a list
    or dict); without it the class is the number as text.
    """
    path = Path(path)
    if not (width and height and width > 0 and height > 0):
        raise SpineDetError(f"need the image size to read YOLO labels, got {width}x{height}", path)
    boxes, classes, scores = [], [], []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
            cls, coords = int(values[0]), values[1:]
            if values[0] != cls:
                raise ValueError(f"class {tokens[0]!r} is not a whole number")
            score = 1.0
            if len(coords) in (4, 5):
                if len(coords) == 5:
                    score = coords.pop()
                cx, cy, w, h = coords
                box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            elif len(coords) >= 6 and len(coords) % 2 == 0:
                xs, ys = coords[0::2], coords[1::2]
                box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
            else:
                raise ValueError(f"{len(tokens)} values: expected class cx cy w h [conf] or class x1 y1 x2 y2 x3 y3 ...")
            _check_box(box)
        except (ValueError, IndexError) as exc:
            raise SpineDetError(f"line {line_no}: {exc}", path) from None
        boxes.append(box)
        classes.append(str(names[cls]) if names is not None else str(cls))
        scores.append(score)
    image_path = Path(image_path) if image_path is not None else path.with_suffix(".png")
    return _image(image_path, int(width), int(height), boxes, classes, [""] * len(boxes), scores, image_path.name)


def read_yolo_dataset(images_dir, labels_dir=None, names=None) -> list[LabelledImage]:
    """Every image in ``images_dir`` with its YOLO labels ``labels_dir/<stem>.txt``.

    ``labels_dir`` defaults to the YOLO layout: ``.../images/...`` ->
    ``.../labels/...``, else a ``labels`` folder beside ``images_dir``.  An
    image without a label file has no spines.  Image sizes are read from
    the images.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise SpineDetError("no such folder", images_dir)
    if labels_dir is None:
        parts = list(images_dir.parts)
        if "images" in parts:
            k = len(parts) - 1 - parts[::-1].index("images")
            labels_dir = Path(*parts[:k], "labels", *parts[k + 1:])
        else:
            labels_dir = images_dir.parent / "labels"
    labels_dir = Path(labels_dir)
    out = []
    for image_path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        width, height = image_size(image_path)
        label_path = labels_dir / f"{image_path.stem}.txt"
        if label_path.is_file():
            out.append(read_yolo_txt(label_path, width, height, image_path, names))
        else:
            out.append(_image(image_path, width, height, [], [], [], [], image_path.name))
    return out


# --------------------------------------------------------------------------------------------
# The real 2D set and splits
# --------------------------------------------------------------------------------------------

def load_real2d_mdg(root, split: str = "train") -> list[LabelledImage]:
    """The real 2D spine images of ``real2d-mdg`` (see ../shared/data/README.md), one split.

    ``root`` is the ``real2d-mdg`` folder (``labels.csv``, ``train/``,
    ``val/``); ``split`` is ``"train"`` or ``"val"``.  Images of the split
    folder that have no row in ``labels.csv`` are included without boxes.
    """
    root = Path(root)
    if split not in ("train", "val"):
        raise SpineDetError(f"unknown split {split!r}; real2d-mdg has 'train' and 'val'")
    if not (root / "labels.csv").is_file():
        raise SpineDetError("no labels.csv: not the real2d-mdg folder", root)
    folder = root / split
    labelled = [im for im in read_label_csv(root / "labels.csv", root)
                if im.path.parent.resolve() == folder.resolve()]
    known = {im.path.resolve() for im in labelled}
    extra = [p for p in sorted(folder.glob("*.png")) if p.resolve() not in known] if folder.is_dir() else []
    for p in extra:
        width, height = image_size(p)
        labelled.append(_image(p, width, height, [], [], [], [], f"{split}/{p.name}"))
    return labelled


def split_by_group(items, key, fractions, seed: int = 0) -> list[list]:
    """Split ``items`` so that all items of one group land in the same part.

    ``key``: a function of an item, or an attribute name (e.g. ``"group"``:
    the stack of a slice, or the image), giving its group.  ``fractions``:
    the share of *groups* (not items or boxes) in each part, e.g.
    ``(0.8, 0.1, 0.1)``; normalised to sum 1.  Every part with a positive
    fraction gets at least one group when there are enough groups.  The
    result depends only on the set of groups and ``seed``, not on the order
    of ``items``; within a part, items keep their order.
    """
    fractions = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if len(fractions) == 0 or np.any(fractions < 0) or not fractions.sum() > 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {fractions.tolist()}")
    fractions = fractions / fractions.sum()
    get = (lambda item: getattr(item, key)) if isinstance(key, str) else key
    items = list(items)
    keys = [str(get(item)) for item in items]
    groups = sorted(set(keys))
    shuffled = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    counts = _share_out(len(groups), fractions)
    part_of, start = {}, 0
    for part, count in enumerate(counts):
        for group in shuffled[start:start + count]:
            part_of[group] = part
        start += count
    parts = [[] for _ in fractions]
    for item, k in zip(items, keys):
        parts[part_of[k]].append(item)
    return parts


def _share_out(n: int, fractions: np.ndarray) -> list[int]:
    """Whole counts summing to ``n`` close to ``n * fractions``; at least 1 per positive fraction if possible."""
    raw = n * fractions
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - int(counts.sum())]:
        counts[k] += 1
    for k in np.flatnonzero((fractions > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    return counts.tolist()
