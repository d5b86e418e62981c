"""Writing a synthetic stack: an ImageJ TIFF with its voxel size, and its ground-truth ``_boxes.csv``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile

from spinedet.runtime.files import write_all
from spinedet.runtime.tables import boxes_csv_text

from .stack import SynthStack


def tiff_bytes(image: np.ndarray, voxel_size) -> bytes:
    """``image`` (Z, Y, X) as ImageJ TIFF bytes with the voxel size (µm) in its metadata."""
    z_um, y_um, x_um = voxel_size
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, imagej=True, resolution=(1.0 / x_um, 1.0 / y_um),
                     metadata={"spacing": float(z_um), "unit": "um", "axes": "ZYX"})
    return buffer.getvalue()


def write_stack(stack: SynthStack, outdir, name: str) -> list:
    """Write ``outdir/name.tif`` (ImageJ TIFF) and ``outdir/name_boxes.csv`` together; return the paths."""
    outdir = Path(outdir)
    return write_all({
        outdir / f"{name}.tif": tiff_bytes(stack.image, stack.voxel_size),
        outdir / f"{name}_boxes.csv": boxes_csv_text(stack.table),
    })
