"""The files a run writes per input: tables, a JSON summary and an overlay picture.

``<stem>_boxes.csv``   one row per spine per slice:
                       ``spine_id,z,xmin,ymin,xmax,ymax,score`` (pixels)
``<stem>_spines.csv``  one row per spine (columns in :data:`SPINE_COLUMNS`)
``<stem>_summary.json``  input, voxel size, model, settings, counts, timings
``<stem>_overlay.png``   (optional) maximum projection with numbered boxes

:func:`report_files` builds them in memory; the caller writes them with
:func:`spinedet.runtime.files.write_all`, all or nothing.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .contract import normalise
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
                         *("" if v is None else f"{v:.3f}" for v in um), f"{s.fluorescence:.6g}",
                         f"{s.background:.6g}"])
    return out.getvalue()


def summary(result, source: Path, model_path: Path, settings: dict) -> dict:
    """The JSON summary of one run on one input."""
    voxel = result.voxel_size
    return {
        "input": str(source),
        "shape_zyx": list(result.shape),
        "voxel_size_um": {"x": voxel.x_um, "y": voxel.x_um, "z": voxel.z_um, "source": voxel.source},
        "mode": "maximum projection" if result.mip else "3D tracking",
        "depth_context_slices_each_side": result.context_slices,
        "model": str(model_path),
        "settings": settings,
        "intensity_range": list(result.intensity_range),
        "n_spines": len(result.spines),
        "n_detections": int(len(result.table)),
        "seconds": {k: round(v, 4) for k, v in result.timings.items()},
    }


def report_files(result, source: Path, out_dir: Path, stem: str, model_path: Path, settings: dict,
                 overlay: bool = False) -> dict:
    """``{path: contents}`` of every output file for one input."""
    out_dir = Path(out_dir)
    files = {
        out_dir / f"{stem}_boxes.csv": boxes_csv_text(result.table),
        out_dir / f"{stem}_spines.csv": spines_csv_text(result.spines),
        out_dir / f"{stem}_summary.json": json.dumps(summary(result, source, model_path, settings), indent=2) + "\n",
    }
    if overlay:
        files[out_dir / f"{stem}_overlay.png"] = overlay_png(result.projection, result.spines, result.intensity_range)
    return files


# --- overlay picture ----------------------------------------------------------------------------------------------

_DIGITS = {  # 3x5 pixel font
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111",
}
_BOX_COLOUR = np.array([255, 220, 0], dtype=np.uint8)


def overlay_png(projection: np.ndarray, spines, intensity_range) -> bytes:
    """PNG bytes: the grey projection with each spine's mean box and id drawn in yellow."""
    import imagecodecs

    grey = (normalise(projection, *intensity_range) * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    scale = 2 if max(grey.shape) >= 256 else 1
    for s in spines:
        x0, y0, x1, y1 = np.round(s.mean_box).astype(int)
        _rectangle(rgb, x0, y0, x1 - 1, y1 - 1)
        _text(rgb, str(s.spine_id), x0, y0 - 6 * scale - 1, scale)
    return imagecodecs.png_encode(rgb)


def _rectangle(rgb, x0, y0, x1, y1):
    ny, nx = rgb.shape[:2]
    xs, ys = np.clip([x0, x1], 0, nx - 1), np.clip([y0, y1], 0, ny - 1)
    rgb[ys[0]:ys[1] + 1, xs] = _BOX_COLOUR
    rgb[ys, xs[0]:xs[1] + 1] = _BOX_COLOUR


def _text(rgb, text, x, y, scale):
    ny, nx = rgb.shape[:2]
    y = max(0, y)
    for k, char in enumerate(text):
        glyph = np.array([int(b) for b in _DIGITS[char]], dtype=bool).reshape(5, 3)
        glyph = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        gx = x + k * 4 * scale
        if gx >= nx or y >= ny or gx < 0:
            continue
        h, w = min(glyph.shape[0], ny - y), min(glyph.shape[1], nx - gx)
        rgb[y:y + h, gx:gx + w][glyph[:h, :w]] = _BOX_COLOUR
