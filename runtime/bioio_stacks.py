"""Reading vendor microscope files (Zeiss CZI, Nikon ND2, Leica LIF) through ``bioio`` as a :class:`~.stacks.Stack`.

The file's suffix picks the bioio reader plugin (:data:`READERS`); each is an
optional extra (``pip install "spinedet[formats]"``) and a missing one is a
one-line error naming the command.  The first scene (series) of the file is
read.  bioio presents it as ``TCZYX`` (``S`` added for RGB); axes of size 1
are dropped, so ``channel=`` and ``time_point=`` work as for a TIFF
hyperstack.  Slices come from bioio's lazy dask array, chunked one plane at a
time, so ``stack[z]`` reads one ``(Y, X)`` plane from the file.  The voxel
size in µm is bioio's ``physical_pixel_sizes`` (X and Z).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import SpineDetError

#: file suffix -> (bioio reader module, the pip package that provides it)
READERS = {".czi": ("bioio_czi", "bioio-czi"), ".nd2": ("bioio_nd2", "bioio-nd2"), ".lif": ("bioio_lif", "bioio-lif")}
INSTALL = 'pip install "spinedet[formats]"'


def reads(path: Path) -> bool:
    """True if ``path`` is a file that spinedet reads through bioio (by its suffix)."""
    return path.suffix.lower() in READERS


def open_bioio(path: Path, channel: int | None = None, time_point: int | None = None):
    """Open a CZI/ND2/LIF file as a lazily read Stack of ``(Y, X)`` slices (see the module doc)."""
    from .stacks import _axis_layout, _believed, _layout_stack, _slice_selector

    module, package = READERS[path.suffix.lower()]
    kind = path.suffix.lstrip(".").upper()
    try:
        from bioio import BioImage
        reader = importlib.import_module(module).Reader
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise SpineDetError(f"reading {kind} files needs bioio and its reader {package} ({missing} is not "
                            f"installed): {INSTALL}", path) from None
    options = {}
    if "chunk_dims" in inspect.signature(reader.__init__).parameters or module == "bioio_czi":
        options["chunk_dims"] = ["Y", "X"] if module == "bioio_czi" else ["Y", "X", "S"]  # one plane per chunk
    try:
        with _quiet_bioio():
            image = BioImage(path, reader=reader, **options)
        dims, full_shape = str(image.dims.order), tuple(int(n) for n in image.shape)
        data = image.dask_data
        sizes = image.physical_pixel_sizes
        dtype = np.dtype(image.dtype)
    except SpineDetError:
        raise
    except Exception as exc:
        raise SpineDetError(f"not a readable {kind} file ({type(exc).__name__}: {_first_sentence(exc)})",
                            path) from None
    if dtype.kind not in "uif":
        raise SpineDetError(f"unsupported pixel type {dtype}", path)
    if not dims.endswith(("YX", "YXS")) or min(full_shape) == 0:
        raise SpineDetError(f"{kind} image has no 2D planes (dims {dims}, shape {full_shape})", path)
    kept = [k for k, (d, n) in enumerate(zip(dims, full_shape)) if n > 1 or d in "YX"]
    axes = "".join(dims[k] for k in kept)
    shape = tuple(full_shape[k] for k in kept)
    layout = _axis_layout(axes, shape, path, time_point)

    def read(index):
        full = [0] * len(full_shape)
        for k, i in zip(kept, index):
            full[k] = i
        return np.asarray(data[tuple(full)].compute(scheduler="synchronous"))

    select = _slice_selector(axes, shape, layout, channel, read, path)
    voxel = _believed(_number(sizes.X), _number(sizes.Z), f"{kind} metadata")
    closer = getattr(image, "close", None) or getattr(getattr(image, "reader", None), "close", None)
    return _layout_stack(path, axes, shape, layout, dtype, voxel, select, closer)


@contextmanager
def _quiet_bioio():
    """bioio logs a failed reader attempt as a warning before it raises; the raised error is said in one line."""
    log = logging.getLogger("bioio")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _first_sentence(exc: Exception) -> str:
    """The first line of an exception's message, cut at 200 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _number(value) -> float | None:
    try:
        return float(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None
