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


def series_truth(series) -> dict:
    """The ground truth of a :class:`~.series.SynthSeries` as ``{file suffix: text}``: the series tables in
    ``spine-track``'s format (:mod:`spinedet.runtime.session_reports`) and a JSON of the poses and events.

    ``_observations.csv``: one row per spine (visible in some session) per session, ``track_id`` = the
    persistent ``spine_id`` (also the id in every ``_s<k>_boxes.csv``), ``present`` = boxed in that session's
    ground truth, ``in_view`` = its head lies in that session's stack clear of the edges (as the tracker
    judges it from the centroid), the centroid of its ground-truth boxes in that session (centre of the mean box,
    middle of the slice range; where not boxed: where last boxed) in session 0's frame (µm), and two columns more: ``alive`` (the spine exists
    in that session, visible or not) and ``head_radius_um``.  ``_spines.csv``: each spine's state from
    ``present`` and ``in_view`` (:func:`spinedet.runtime.sessions.track_states`).  ``_truth.json``: the
    settings, each session's pose and true registration, and per session the spines alive, gained and lost.
    """
    import csv
    import io
    import json

    from spinedet.runtime.session_reports import OBSERVATION_COLUMNS, TRACK_COLUMNS
    from spinedet.runtime.sessions import in_view, session_summary, track_states

    presence = series.presence()
    ids = sorted(presence)
    n = len(series.sessions)
    registrations = [series.registration(k) for k in range(n)]
    shape, voxel = series.sessions[0].image.shape, series.voxel_size
    # where each spine is, as the tracker would place it: its boxes' centroid, in session 0's frame
    seen_at = [{i: registrations[k].apply(c)[0] for i, c in series.box_centroids(k).items()} for k in range(n)]
    positions = np.array([seen_at[max(k for k in range(n) if presence[i][k])][i] for i in ids],
                         dtype=np.float64).reshape(-1, 3)
    visible = (np.stack([in_view(positions, r, shape, voxel) for r in registrations], axis=1) if ids
               else np.zeros((0, n), dtype=bool))
    present = np.array([presence[i] for i in ids], dtype=bool).reshape(-1, n)
    states = track_states(present, visible)
    obs, tracks = io.StringIO(), io.StringIO()
    w = csv.writer(obs, lineterminator="\n")
    w.writerow(OBSERVATION_COLUMNS + ("alive", "head_radius_um"))
    t = csv.writer(tracks, lineterminator="\n")
    t.writerow(TRACK_COLUMNS)
    for row, i in enumerate(ids):
        for k in range(n):
            alive = i in series.alive[k]
            z, y, x = seen_at[k][i] if present[row, k] else positions[row]
            w.writerow([i, k, int(present[row, k]), int(visible[row, k]), i if present[row, k] else "",
                        f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", "", int(alive),
                        f"{series.head_radius[k][i]:.4f}" if alive else ""])
        hits = np.flatnonzero(present[row])
        z, y, x = positions[row]
        t.writerow([i, int(hits[0]), int(hits[-1]), len(hits), states[row], f"{x:.3f}", f"{y:.3f}", f"{z:.3f}"])
    events = [{"session": k, "alive": len(series.alive[k]),
               "gained": None if k == 0 else len(series.alive[k] - series.alive[k - 1]),
               "lost": None if k == 0 else len(series.alive[k - 1] - series.alive[k])} for k in range(n)]
    truth = {
        "settings": series.settings,
        "voxel_size_um": {"x": voxel[2], "y": voxel[1], "z": voxel[0]},
        "poses": [{"session": k, "shift_um": {"x": float(series.shift_um[k][2]), "y": float(series.shift_um[k][1]),
                                              "z": float(series.shift_um[k][0])},
                   "rotation_deg": float(series.rotation_deg[k]),
                   "registration_to_first": {"shift_um": {"x": r.shift_um[2], "y": r.shift_um[1], "z": r.shift_um[0]},
                                             "rotation_deg": r.rotation_deg}}
                  for k, r in enumerate(registrations)],
        "world_events": events,
        "visible_summary": session_summary(present, visible),
    }
    return {"_observations.csv": obs.getvalue(), "_spines.csv": tracks.getvalue(),
            "_truth.json": json.dumps(truth, indent=2) + "\n"}


def write_series(series, outdir, name: str) -> list:
    """Write a :class:`~.series.SynthSeries` all-or-nothing: ``outdir/name_s<k>.tif`` and
    ``name_s<k>_boxes.csv`` per session (ImageJ TIFF; ground truth by persistent spine id), and the series'
    ground truth :func:`series_truth` (``name_observations.csv``, ``name_spines.csv``, ``name_truth.json``).
    Returns the paths."""
    outdir = Path(outdir)
    files = {}
    for k, stack in enumerate(series.sessions):
        files[outdir / f"{name}_s{k}.tif"] = tiff_bytes(stack.image, stack.voxel_size)
        files[outdir / f"{name}_s{k}_boxes.csv"] = boxes_csv_text(stack.table)
    for suffix, text in series_truth(series).items():
        files[outdir / f"{name}{suffix}"] = text
    return write_all(files)
