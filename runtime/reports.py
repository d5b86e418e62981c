"""The files a run writes per input: tables, a JSON summary and an overlay picture.

``<stem>_boxes.csv``   one row per spine per slice:
                       ``spine_id,z,xmin,ymin,xmax,ymax,score`` (pixels)
``<stem>_spines.csv``  one row per spine (columns in :data:`SPINE_COLUMNS`)
``<stem>_summary.json``  input, voxel size, model, settings, counts, timings
``<stem>_rois.zip``      (optional) Fiji ROIs, one rectangle per spine per slice (:mod:`~spinedet.runtime.rois`)
``<stem>_overlay.png``   (optional) maximum projection with numbered boxes (:mod:`~spinedet.runtime.overlay`)

:func:`report_files` builds them in memory; the caller writes them with
:func:`spinedet.runtime.files.write_all`, all or nothing.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .overlay import overlay_png
from .rois import rois_zip_bytes
from .tables import boxes_csv_text

SPINE_COLUMNS = ("spine_id", "z_first", "z_last", "n_detected", "xmin", "ymin", "xmax", "ymax", "mean_score",
                 "max_score", "centroid_x_px", "centroid_y_px", "centroid_z_slice", "centroid_x_um", "centroid_y_um",
                 "centroid_z_um", "fluorescence", "background")


def spines_csv_text(spines) -> str:
    """One row per spine: slice range, mean box (pixels), centroid (pixels, slices, µm), fluorescence."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SPINE_COLUMNS)
    for s in spines:
        um = s.centroid_um or (None, None, None)
        writer.writerow([s.spine_id, s.z_first, s.z_last, len(s.z), *(f"{v:.2f}" for v in s.mean_box),
                         f"{s.mean_score:.4f}", f"{np.max(s.scores):.4f}", *(f"{v:.2f}" for v in s.centroid_px),
                         *("" if v is None else f"{v:.3f}" for v in um), f"{s.fluorescence:.1f}",
                         f"{s.background:.2f}"])
    return out.getvalue()


def summary(result, source: Path, model_path: Path, settings: dict, model_precision: str | None = None) -> dict:
    """The JSON summary of one run on one input (``model``: the file that ran; ``model_precision``: its card's)."""
    voxel = result.voxel_size
    return {
        "input": str(source),
        "shape_zyx": list(result.shape),
        "voxel_size_um": {"x": voxel.x_um, "y": voxel.x_um, "z": voxel.z_um, "source": voxel.source,
                          "ignored": voxel.ignored},
        "mode": result.mode,
        "notes": list(result.notes),
        "depth_context_slices_each_side": result.context_slices,
        "model": str(model_path),
        "model_precision": model_precision,
        "settings": settings,
        "intensity_range": list(result.intensity_range),
        "n_spines": len(result.spines),
        "n_detections": int(len(result.table)),
        "n_detached_boxes": len(result.detached),
        "seconds": {k: round(v, 4) for k, v in result.timings.items()},
    }


def report_files(result, source: Path, out_dir: Path, stem: str, model_path: Path, settings: dict,
                 overlay: bool = False, overlay_scores: bool = False, rois: bool = False,
                 model_precision: str | None = None) -> dict:
    """``{path: contents}`` of every output file for one input."""
    out_dir = Path(out_dir)
    files = {
        out_dir / f"{stem}_boxes.csv": boxes_csv_text(result.table),
        out_dir / f"{stem}_spines.csv": spines_csv_text(result.spines),
        out_dir / f"{stem}_summary.json": json.dumps(summary(result, source, model_path, settings, model_precision),
                                                     indent=2) + "\n",
    }
    if rois:
        files[out_dir / f"{stem}_rois.zip"] = rois_zip_bytes(result.table, settings.get("channel"))
    if overlay:
        files[out_dir / f"{stem}_overlay.png"] = overlay_png(result.projection, result.spines, overlay_scores,
                                                             result.detached)
    return files
