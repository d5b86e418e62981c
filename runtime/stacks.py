"""Reading image stacks: the one place in spinedet that opens image files.

:func:`open_stack` turns a path into a :class:`Stack`, a lazy sequence of
2D grey slices (``stack[z]`` is a ``(Y, X)`` array in the file's own dtype)
with the voxel size in µm.  Accepted inputs:

* TIFF stacks, including ImageJ hyperstacks and OME-TIFF, of uint8, uint16,
  float32 (and other integer/float types): ``ZYX``; ``ZCYX`` / ``CYX`` with
  ``channel=``; a single 2D image ``YX``;
* RGB(A) images (TIFF or PNG): read as grey when the colour channels are
  equal (as the paper's example slices are), otherwise ``channel=`` picks one;
* a folder of per-slice PNG files named like the paper's data,
  ``<name>-<NN>.png``, where NN is the slice index;
* one time point of a time series (``TZYX``, e.g. chronic imaging sessions
  saved as one hyperstack) with ``time_point=``; without it a time series is
  refused, since a detector reads one z-stack at a time;
* OME-Zarr folders (``*.zarr``, NGFF 0.4/0.5; :mod:`.zarr_stacks`, needs the
  ``[zarr]`` extra), with the same axes, ``channel=`` and ``time_point=``;
* Zeiss CZI, Nikon ND2 and Leica LIF files through bioio
  (:mod:`.bioio_stacks`, needs the ``[formats]`` extra).

Slices are read one at a time: from uncompressed contiguous TIFF data by
reading just that slice's bytes (not a memory map, whose touched pages would
count against the process's memory), from other TIFFs page by page, from
OME-Zarr chunk by chunk and from bioio's files plane by plane, so a
stack larger than memory can be processed in a small, constant footprint.
Every problem is a one-line SpineDetError that names the file.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from .errors import SpineDetError
from .tables import slice_index_from_name
from .voxels import VoxelSize, plausible, um_per_unit

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DEPTH_AXES = "ZQI"  # tifffile: Z depth, Q unknown, I image sequence
#: colour channels within this fraction of the value range of each other are one grey image
GREY_TOLERANCE = 0.03


class Stack:
    """A lazily read z-stack of grey 2D slices.

    len(stack): number of slices Z; stack[k]: slice k as a ``(Y, X)`` array.
    shape: ``(Z, Y, X)``.  z_index: the slice number of each slice (0..Z-1,
    or the numbers in per-slice file names).  is_2d: the input was one image.
    time_points: how many time points the file holds (1 unless it is a time
    series); time_point: the one this stack reads (0-based; None for a file
    without a time axis).
    """

    def __init__(self, path, name, shape, dtype, voxel_size, read_slice, z_index=None, is_2d=False,
                 closer=None, axes="", time_points=1, time_point=None):
        self.path = Path(path)
        self.name = name
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = voxel_size
        self.z_index = list(range(self.shape[0])) if z_index is None else list(z_index)
        self.is_2d = is_2d
        self.axes = axes
        self.time_points = int(time_points)
        self.time_point = time_point
        self._read_slice = read_slice
        self._closer = closer

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k %= len(self)
        try:
            image = np.asarray(self._read_slice(k))
        except SpineDetError as exc:
            raise exc.with_path(self.path) from None
        except Exception as exc:  # a codec or I/O failure deep in tifffile/imagecodecs
            raise SpineDetError(f"cannot read slice {k} ({type(exc).__name__}: {exc})", self.path) from None
        if image.shape != self.shape[1:]:
            raise SpineDetError(f"slice {k} has shape {image.shape}, expected {self.shape[1:]}", self.path)
        return image

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_stack(path, channel: int | None = None, pixel_size: float | None = None,
               z_step: float | None = None, time_point: int | None = None) -> Stack:
    """Open a TIFF/PNG image or stack, a folder of per-slice PNGs, an OME-Zarr folder or a CZI/ND2/LIF file.

    channel: which channel of a multi-channel (ZCYX, CYX) or true-colour
        image to read (0-based).
    pixel_size, z_step: override the voxel size in µm from the file's metadata.
    time_point: which time point of a time series (``TZYX``, ``TZCYX``) to
        read (0-based); ``stack.time_points`` says how many the file has.
        Without it a time series is refused.  A file without a time axis
        has one time point, 0.
    """
    path = Path(path)
    for value, name in ((pixel_size, "--pixel-size"), (z_step, "--z-step")):
        if value is not None and not value > 0:
            raise SpineDetError(f"{name} must be a positive number of µm, got {value}")
    if time_point is not None and time_point < 0:
        raise SpineDetError(f"time point must be 0 or more, got {time_point}")
    if not path.exists():
        raise SpineDetError("no such file or folder", path)
    from .bioio_stacks import open_bioio, reads
    from .zarr_stacks import is_zarr, open_zarr

    if is_zarr(path):
        stack = open_zarr(path, channel, time_point)
    elif path.is_dir():
        stack = _open_png_folder(path, channel)
        _only_time_point(stack, time_point)
    elif reads(path):
        stack = open_bioio(path, channel, time_point)
    else:
        try:
            with open(path, "rb") as handle:
                magic = handle.read(8)
        except OSError as exc:
            raise SpineDetError(f"cannot open ({exc.strerror or exc})", path) from None
        if not magic:
            raise SpineDetError("file is empty", path)
        if magic[:4] in _TIFF_MAGIC:
            stack = _open_tiff(path, channel, time_point)
        elif magic == _PNG_MAGIC:
            stack = _open_png(path, channel)
            _only_time_point(stack, time_point)
        else:
            raise SpineDetError("not a TIFF or PNG image (unrecognised file contents)", path)
    if pixel_size is not None or z_step is not None:
        old = stack.voxel_size
        stack.voxel_size = VoxelSize(pixel_size or old.x_um, z_step or old.z_um,
                                     "command line" if old.source == "unknown" else old.source + " + command line",
                                     old.ignored if pixel_size is None else "")
    return stack


#: suffixes (case-insensitive) of the stack files a folder of stacks may hold; OME-Zarr folders count too
STACK_FILE_SUFFIXES = (".tif", ".tiff", ".png", ".czi", ".nd2", ".lif")


def _stack_files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` that may be stacks (not hidden, not spine-run's ``*_overlay.png``)."""
    return [p for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in STACK_FILE_SUFFIXES and not p.name.startswith(".")
            and not p.name.lower().endswith("_overlay.png")]


def is_stack_folder(folder) -> bool:
    """True when the folder ``folder`` is itself one stack: an OME-Zarr, or one whose image files are all
    per-slice PNGs ``<name>-<NN>.png`` (or that holds no image file: :func:`open_stack` says what is wrong)."""
    from .zarr_stacks import is_zarr

    folder = Path(folder)
    return is_zarr(folder) or all(p.suffix.lower() == ".png" and slice_index_from_name(p.name) is not None
                                  for p in _stack_files(folder))


def stacks_in(folder) -> list[Path]:
    """The stacks a folder of stacks holds, not recursing: its stack files (:data:`STACK_FILE_SUFFIXES`),
    OME-Zarr folders and per-slice PNG subfolders, by name with runs of digits compared as numbers (``day2``
    before ``day10``)."""
    from .zarr_stacks import is_zarr

    folder = Path(folder)
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (is_zarr(p) or (_stack_files(p) and is_stack_folder(p)))]
    return sorted(_stack_files(folder) + subfolders, key=natural_key)


def natural_key(path):
    """Sort key of a file name with its runs of digits compared as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", Path(path).name)]


def stack_name(path) -> str | None:
    """The name :func:`open_stack` gives the stack at ``path`` (``Stack.name``), from its file name alone.

    Reads at most a file's first 8 bytes, or a folder's file names: cheap enough to name hundreds of
    inputs before any is processed.  None when ``path`` cannot be a stack (missing, unreadable, not a
    stack file, a folder that is neither an OME-Zarr nor per-slice PNGs).
    """
    from .bioio_stacks import reads
    from .zarr_stacks import is_zarr

    path = Path(path)
    if is_zarr(path) or (path.is_file() and reads(path)):
        return _file_stack_name(path)
    try:
        if path.is_dir():
            named = [slice_index_from_name(p.name) for p in path.iterdir() if p.suffix.lower() == ".png"]
            names = {parsed[0] for parsed in named if parsed is not None}
            return _folder_stack_name(names.pop(), path) if len(names) == 1 and None not in named else None
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError:
        return None
    if magic[:4] in _TIFF_MAGIC:
        return _file_stack_name(path)
    return path.stem if magic == _PNG_MAGIC else None


def _file_stack_name(path: Path) -> str:
    """A stack file's (or OME-Zarr folder's) name: its file name up to the first dot (``a.ome.tif`` -> ``a``)."""
    return path.name.split(".")[0]


def _folder_stack_name(slice_name: str, folder: Path) -> str:
    return re.sub(r"[^\w.-]+", "_", slice_name) or folder.name


def _only_time_point(stack: Stack, time_point) -> None:
    """Refuse a time point other than 0 of an input without a time axis."""
    if time_point not in (None, 0):
        raise SpineDetError(f"time point {time_point} does not exist: the input is not a time series", stack.path)


def read_image(path, channel: int | None = None) -> np.ndarray:
    """Read a single 2D image as a ``(Y, X)`` array (the first slice of a stack)."""
    with open_stack(path, channel) as stack:
        return stack[0]


# --- TIFF ---------------------------------------------------------------------------------------------------------

class _TiffComplaints(logging.Handler):
    """Collects what tifffile logs while it parses a file: it logs damage (invalid page offsets,
    corrupted ImageJ metadata) and carries on with whatever pages it found."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logger = logging.getLogger("tifffile")
        self._propagate, logger.propagate = logger.propagate, False
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("tifffile")
        logger.removeHandler(self)
        logger.propagate = self._propagate


def _open_tiff(path: Path, channel, time_point=None):
    import tifffile

    with _TiffComplaints() as complaints:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise SpineDetError(f"not a readable TIFF file ({exc})", path) from None
        try:
            stack = _tiff_stack(tif, path, channel, time_point)
        except SpineDetError:
            tif.close()
            raise
        except Exception as exc:
            tif.close()
            raise SpineDetError(f"cannot read TIFF structure ({type(exc).__name__}: {exc})", path) from None
    if complaints.messages:
        tif.close()
        message = complaints.messages[0].split("> ", 1)[-1]
        raise SpineDetError(f"damaged or truncated TIFF ({message})", path)
    return stack


def _tiff_stack(tif, path: Path, channel, time_point=None):
    if not tif.series or not tif.pages:
        raise SpineDetError("TIFF holds no image", path)
    series = tif.series[0]
    axes, shape = series.axes, tuple(series.shape)
    dtype = np.dtype(series.dtype)
    if dtype.kind not in "uif":
        raise SpineDetError(f"unsupported pixel type {dtype}", path)
    if "Y" not in axes or "X" not in axes or min(shape) == 0:
        raise SpineDetError(f"TIFF series has no 2D image (axes {axes}, shape {shape})", path)
    layout = _axis_layout(axes, shape, path, time_point)
    reader = _tiff_reader(tif, series, path)
    select = _slice_selector(axes, shape, layout, channel, reader, path)
    return _layout_stack(path, axes, shape, layout, dtype, _tiff_voxel_size(tif), select, tif.close)


def _layout_stack(path: Path, axes: str, shape, layout: dict, dtype, voxel: VoxelSize, select,
                  closer=None) -> Stack:
    """The Stack of a file whose axes (``axes``, ``shape``; :func:`_axis_layout` gave ``layout``) are read
    through ``select`` (:func:`_slice_selector`): TIFF, OME-Zarr and bioio files alike."""
    depth = shape[layout["depth"]] if layout["depth"] is not None else 1
    return Stack(path, _file_stack_name(path), (depth, shape[axes.index("Y")], shape[axes.index("X")]), dtype,
                 voxel, select, is_2d=layout["depth"] is None, closer=closer, axes=axes,
                 time_points=shape[layout["time"]] if layout["time"] is not None else 1,
                 time_point=layout["time_point"])


def _axis_layout(axes: str, shape, path, time_point=None):
    """Which axis is depth, channel and time; refuse a time series without ``time_point`` and >1 depth axis.

    ``layout["time_point"]``: the time index read (None where the file has no time axis).
    """
    layout = {"depth": None, "channel": None, "time": None, "time_point": None}
    for k, letter in enumerate(axes):
        if letter in "YX":
            continue
        if letter == "T":
            if shape[k] > 1 and time_point is None:
                raise SpineDetError(f"time series with {shape[k]} time points (axes {axes}, shape {shape}); "
                                    "spinedet reads one z-stack at a time: save each time point separately "
                                    "(spine-track follows spines across them)", path)
            layout["time"] = k
            continue
        if letter in "CS":
            if layout["channel"] is not None:
                raise SpineDetError(f"{len(shape)}D data with two channel axes (axes {axes}, shape {shape})", path)
            layout["channel"] = k
        elif letter in _DEPTH_AXES or letter not in "T":
            if layout["depth"] is not None:
                raise SpineDetError(f"{len(shape)}D data (axes {axes}, shape {shape}); expected a z-stack "
                                    "ZYX, ZCYX with --channel, or a 2D image", path)
            layout["depth"] = k
    if layout["time"] is not None:
        n_times = shape[layout["time"]]
        layout["time_point"] = 0 if time_point is None else int(time_point)
        if layout["time_point"] >= n_times:
            raise SpineDetError(f"time point {time_point} does not exist: the file has {n_times} "
                                f"(0-{n_times - 1}; axes {axes}, shape {shape})", path)
    elif time_point not in (None, 0):
        raise SpineDetError(f"time point {time_point} does not exist: the file is not a time series "
                            f"(axes {axes}, shape {shape})", path)
    return layout


def _tiff_reader(tif, series, path):
    """A function ``read(index)`` giving the 2D array at a full index into the series.

    ``index`` has one entry per series axis: integers for the non-image axes,
    ``slice(None)`` for Y and X.
    """
    import tifffile

    shape = tuple(series.shape)
    filesize = path.stat().st_size
    offset = getattr(series, "dataoffset", None)
    if offset is not None:  # contiguous and uncompressed: read each slice's bytes directly
        dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if offset + nbytes > filesize:
            raise SpineDetError(f"file is truncated: image data needs {offset + nbytes} bytes, "
                                f"the file has {filesize}", path)
        y_axis = series.axes.index("Y")
        plane_shape = shape[y_axis:]  # YX, YXS or similar: contiguous for a fixed leading index
        plane_items = int(np.prod(plane_shape))

        def read_plane(index):
            first = int(np.ravel_multi_index(index[:y_axis], shape[:y_axis])) if y_axis else 0
            with open(path, "rb") as handle:
                handle.seek(offset + first * plane_items * dtype.itemsize)
                plane = np.fromfile(handle, dtype=dtype, count=plane_items)
            if plane.size != plane_items:
                raise SpineDetError("file ended inside the image data", path)
            return plane.reshape(plane_shape)[index[y_axis:]]

        return read_plane

    pages = series.pages
    page_shape = tuple(series.keyframe.shape)
    grid = shape[:len(shape) - len(page_shape)]
    if grid + page_shape == shape and len(pages) == int(np.prod(grid)) and pages[-1] is not None:
        last = pages[-1]
        offsets, counts = getattr(last, "dataoffsets", ()), getattr(last, "databytecounts", ())
        if offsets and counts and offsets[-1] + counts[-1] > filesize:
            raise SpineDetError(f"file is truncated: the last slice ends at byte {offsets[-1] + counts[-1]}, "
                                f"the file has {filesize}", path)

        def read_page(index):
            flat = int(np.ravel_multi_index(index[:len(grid)], grid)) if grid else 0
            return pages[flat].asarray().reshape(page_shape)[index[len(grid):]]

        return read_page

    # an irregular layout: read it whole, if that is reasonable
    nbytes = int(np.prod(shape)) * np.dtype(series.dtype).itemsize
    if nbytes > 1 << 30:
        raise SpineDetError(f"TIFF layout cannot be read slice by slice and the image is {nbytes >> 20} MiB", path)
    try:
        whole = series.asarray()
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise SpineDetError(f"cannot read image data ({exc})", path) from None
    return lambda index: whole[index]


def _slice_selector(axes, shape, layout, channel, reader, path):
    """A function ``slice(k) -> (Y, X)`` reading depth k of the chosen channel."""
    c_axis = layout["channel"]
    n_channels = shape[c_axis] if c_axis is not None else 1
    if channel is not None and not 0 <= channel < n_channels:
        raise SpineDetError(f"--channel {channel} does not exist: the image has {n_channels} "
                            f"channel{'s' if n_channels > 1 else ''} (axes {axes})", path)

    def pick(k, c):
        return reader(tuple(k if a == layout["depth"] else c if a == c_axis else layout["time_point"]
                            if a == layout["time"] else slice(None) if letter in "YX" else 0
                            for a, letter in enumerate(axes)))

    if c_axis is None or n_channels == 1:
        return lambda k: pick(k, 0)
    if channel is not None:
        return lambda k: pick(k, channel)
    depth = shape[layout["depth"]] if layout["depth"] is not None else 1
    if axes[c_axis] == "S" and _channels_equal(pick, n_channels, depth):
        return lambda k: pick(k, 0)
    kind = "colour channels" if axes[c_axis] == "S" else "channels"
    # a z-stack saved without its axes (e.g. tifffile's imagej=True) says "channels": say how to mend it
    hint = ("; if they are z-slices, the file lacks its axes: save it with axes ZYX "
            "(ImageJ: Image > Properties, slices = " + str(n_channels) + ", channels = 1)"
            if layout["depth"] is None and n_channels > 4 else "")
    raise SpineDetError(f"image has {n_channels} {kind} (axes {axes}, shape {tuple(shape)}); "
                        f"choose one with --channel N (0-based){hint}", path)


def _channels_equal(pick, n_channels, depth) -> bool:
    """True if a colour image is grey stored as colour (R, G, B nearly equal, checked on up to 3 slices)."""
    picks = sorted({0, depth // 2, depth - 1})
    return all(grey_channels([pick(k, c) for c in range(min(n_channels, 3))]) for k in picks)


def grey_channels(channels) -> bool:
    """True if the colour channels (2D arrays) of an image are the same grey picture.

    Grey saved as RGB is rarely bit-identical (compression, colour
    management): channels count as grey when no pixel differs from the first
    channel by more than :data:`GREY_TOLERANCE` of its value range (8 levels
    of 255); two real fluorophores differ far more.
    """
    first = np.asarray(channels[0], dtype=np.float64)
    allowed = GREY_TOLERANCE * max(float(np.ptp(first)), 1.0)
    return all(float(np.abs(np.asarray(c, dtype=np.float64) - first).max()) <= allowed for c in channels[1:])


def _tiff_voxel_size(tif) -> VoxelSize:
    if tif.is_ome:
        size = _ome_voxel_size(tif.ome_metadata)
        if size.x_um or size.z_um:
            return size
    page = tif.pages[0]
    x_res = _resolution(page)
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        scale = um_per_unit(meta.get("unit", ""))
        x_found = x_res * scale if x_res and scale else None
        z_found = float(meta["spacing"]) * scale if meta.get("spacing") and scale else None
        return _believed(x_found, z_found, "ImageJ metadata")
    unit = page.tags.get("ResolutionUnit")
    unit = int(unit.value) if unit else 2
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(unit)
    if not (x_res and per_unit_um):
        return VoxelSize()
    size = _believed(x_res * per_unit_um, None, "TIFF resolution tags")
    if size.ignored:
        per = "inch" if unit == 2 else "cm"
        size = VoxelSize(ignored=f"its resolution tag, {1 / x_res:g} pixels per {per}, is a print or display "
                                 f"setting ({x_res * per_unit_um:g} µm/px), not the microscope's")
    return size


def _believed(x_um, z_um, source: str) -> VoxelSize:
    """The plausible ones of the sizes a file states; the others are named in ``ignored``."""
    x, z = plausible(x_um), plausible(z_um)
    ignored = [f"{name} {v:g} µm in the {source}" for name, v, ok in (("pixel size", x_um, x), ("z-step", z_um, z))
               if v is not None and ok is None]
    return VoxelSize(x, z, source if x or z else "unknown", "ignored " + " and ".join(ignored) if ignored else "")


def _resolution(page) -> float | None:
    """Pixel size in resolution units (1 / XResolution), or None."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    value = tag.value
    numerator, denominator = (value if isinstance(value, tuple) else (value, 1))
    return denominator / numerator if numerator else None


def _ome_voxel_size(xml: str | None) -> VoxelSize:
    try:
        root = ElementTree.fromstring(xml)
    except (ElementTree.ParseError, TypeError, ValueError):
        return VoxelSize()
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            def size(axis):
                value = element.get(f"PhysicalSize{axis}")
                scale = um_per_unit(element.get(f"PhysicalSize{axis}Unit", "µm"))
                return float(value) * scale if value and scale else None
            return _believed(size("X"), size("Z"), "OME metadata")
    return VoxelSize()


# --- PNG ----------------------------------------------------------------------------------------------------------

def _decode_png(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        return imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:
        raise SpineDetError(f"not a readable PNG image ({exc})", path) from None


def _grey(image: np.ndarray, channel, path) -> np.ndarray:
    """``(Y, X)`` from a PNG array of shape (Y, X), (Y, X, 2..4)."""
    if image.ndim == 2:
        if channel not in (None, 0):
            raise SpineDetError(f"--channel {channel} does not exist: the image is grey", path)
        return image
    colours = 3 if image.shape[2] >= 3 else 1  # grey+alpha or RGB(+alpha): alpha is ignored
    if channel is not None:
        if not 0 <= channel < colours:
            raise SpineDetError(f"--channel {channel} does not exist: the image has {colours} colour channels", path)
        return image[..., channel]
    if colours == 1 or grey_channels([image[..., c] for c in range(colours)]):
        return image[..., 0]
    raise SpineDetError(f"image has {colours} colour channels that differ; choose one with --channel N", path)


def _open_png(path: Path, channel) -> Stack:
    image = _grey(_decode_png(path), channel, path)
    return Stack(path, path.stem, (1,) + image.shape, image.dtype, VoxelSize(), lambda k: image, is_2d=True,
                 axes="YX")


def _open_png_folder(folder: Path, channel) -> Stack:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise SpineDetError(f"folder holds no PNG slices, nor stacks ({', '.join(STACK_FILE_SUFFIXES)}, .zarr)",
                            folder)
    named = [(slice_index_from_name(p.name), p) for p in files]
    unnamed = [p.name for parsed, p in named if parsed is None]
    if unnamed:
        raise SpineDetError(f"slice file {unnamed[0]!r} is not named like <name>-<NN>.png", folder)
    names = {parsed[0] for parsed, _ in named}
    if len(names) > 1:
        raise SpineDetError(f"folder mixes slices of several stacks ({', '.join(sorted(names)[:3])})", folder)
    named.sort(key=lambda item: item[0][1])
    z_index = [parsed[1] for parsed, _ in named]
    if len(set(z_index)) != len(z_index):
        raise SpineDetError("two slice files have the same slice number", folder)
    first = _grey(_decode_png(named[0][1]), channel, named[0][1])

    def read(k):
        path = named[k][1]
        return _grey(_decode_png(path), channel, path)

    return Stack(folder, _folder_stack_name(names.pop(), folder), (len(named),) + first.shape,
                 first.dtype, VoxelSize(), read, z_index=z_index, axes="ZYX")
