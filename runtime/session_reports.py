"""The files ``spine-track`` writes for a series, and reading them back.

In ``--out DIR``, for ``--name NAME`` (default ``series``):

``NAME_observations.csv``  one row per spine per session:
    ``track_id,session,present,in_view,spine_id,centroid_x_um,centroid_y_um,centroid_z_um,fluorescence``;
    ``spine_id`` is the spine's id in that session's ``NAME_s<k>_spines.csv`` (empty where it was not seen),
    the centroid is in the first session's frame (µm; where it was not seen: where the track was last seen),
    ``in_view`` 0 where that place lies outside the session's stack, fluorescence is that session's
    integrated fluorescence (raw units x voxels; empty where not seen)
``NAME_spines.csv``        one row per spine: ``track_id,first_session,last_session,n_present,state,``
    ``centroid_x_um,centroid_y_um,centroid_z_um`` (where last seen, first frame)
``NAME_sessions.csv``      one row per session: its input, spines detected, the summary (count, gained, lost,
    survival, turnover; :func:`~spinedet.runtime.sessions.session_summary`) and its registration to the first
    session (shift µm, rotation, quality, overlap)
``NAME_summary.json``      all of that in one object, with voxel size, settings, model, notes and times
``NAME_s<k>_boxes.csv``, ``NAME_s<k>_spines.csv``   session k's own detections, as ``spine-run`` writes them
``NAME_s<k>_overlay.png``  with ``--overlay``: session k's projection, each spine labelled with its track id

Sessions are numbered from 0.  :func:`read_series` reads a series back (the tool's or a ground truth's
written the same way, e.g. by ``spine-synth --sessions``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import SpineDetError
from .overlay import overlay_png
from .reports import spines_csv_text
from .tables import boxes_csv_text, read_box_table, read_csv

OBSERVATION_COLUMNS = ("track_id", "session", "present", "in_view", "spine_id", "centroid_x_um", "centroid_y_um",
                       "centroid_z_um", "fluorescence")
TRACK_COLUMNS = ("track_id", "first_session", "last_session", "n_present", "state", "centroid_x_um",
                 "centroid_y_um", "centroid_z_um")
SESSION_COLUMNS = ("session", "input", "detected", "count", "gained", "lost", "survival", "turnover", "reference",
                   "shift_x_um", "shift_y_um", "shift_z_um", "rotation_deg", "quality", "overlap")


def _csv(rows, header) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _num(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def observation_rows(series) -> list:
    """Rows of ``NAME_observations.csv`` (see the module docstring), by track, then session."""
    index = series.observation_index()
    visible = series.visibility()
    last = series.track_positions()
    rows = []
    for t in range(series.n_tracks):
        for k, session in enumerate(series.sessions):
            j = index[t, k]
            seen = j >= 0
            z, y, x = series.positions[k][j] if seen else last[t]
            rows.append([t + 1, k, int(seen), int(visible[t, k]), int(session.spine_id[j]) if seen else "",
                         f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{session.fluorescence[j]:.1f}" if seen else ""])
    return rows


def track_rows(series) -> list:
    """Rows of ``NAME_spines.csv``: one per track."""
    presence = series.presence()
    states = series.states()
    where = series.track_positions()
    rows = []
    for t in range(series.n_tracks):
        hits = np.flatnonzero(presence[t])
        z, y, x = where[t]
        rows.append([t + 1, int(hits[0]), int(hits[-1]), len(hits), states[t], f"{x:.3f}", f"{y:.3f}", f"{z:.3f}"])
    return rows


def session_records(series, inputs) -> list[dict]:
    """Per session: input, detected spines, the summary and the registration, as one dict each."""
    records = []
    for k, (row, reg, session) in enumerate(zip(series.summary(), series.registrations, series.sessions)):
        records.append({"session": k, "input": str(inputs[k]), "detected": len(session), **{
            key: row[key] for key in ("count", "gained", "lost", "survival", "turnover")},
            "registration": {"reference": reg.reference, "shift_um": {"x": reg.shift_um[2], "y": reg.shift_um[1],
                                                                      "z": reg.shift_um[0]},
                             "rotation_deg": reg.rotation_deg, "quality": reg.quality, "overlap": reg.overlap}})
    return records


def session_rows(records) -> list:
    rows = []
    for r in records:
        reg = r["registration"]
        first = reg["reference"] is None
        rows.append([r["session"], r["input"], r["detected"], r["count"], "" if r["gained"] is None else r["gained"],
                     "" if r["lost"] is None else r["lost"], _num(r["survival"], 4), _num(r["turnover"], 4),
                     "" if first else reg["reference"], f"{reg['shift_um']['x']:.3f}", f"{reg['shift_um']['y']:.3f}",
                     f"{reg['shift_um']['z']:.3f}", f"{reg['rotation_deg']:.3f}", f"{reg['quality']:.4f}",
                     f"{reg['overlap']:.4f}"])
    return rows


def state_counts(states) -> dict:
    from .sessions import STATES

    return {s: int(sum(1 for x in states if x == s)) for s in STATES}


def series_files(series, out_dir, name: str, inputs, results=None, summary_extra: dict | None = None,
                 overlay: bool = False) -> dict:
    """``{path: contents}`` of every file of a series (module docstring).

    inputs: per session, what it was read from (for the tables).  results:
    per session the DetectionResult (for its box tables and, with
    ``overlay``, its projection), or None to write only the series tables.
    """
    out_dir = Path(out_dir)
    records = session_records(series, inputs)
    states = series.states()
    summary = {"sessions": records, "n_tracks": series.n_tracks, "states": state_counts(states),
               "settings": dict(series.settings), **(summary_extra or {})}
    files = {
        out_dir / f"{name}_observations.csv": _csv(observation_rows(series), OBSERVATION_COLUMNS),
        out_dir / f"{name}_spines.csv": _csv(track_rows(series), TRACK_COLUMNS),
        out_dir / f"{name}_sessions.csv": _csv(session_rows(records), SESSION_COLUMNS),
        out_dir / f"{name}_summary.json": json.dumps(summary, indent=2) + "\n",
    }
    for k, result in enumerate(results or []):
        files[out_dir / f"{name}_s{k}_boxes.csv"] = boxes_csv_text(result.table)
        files[out_dir / f"{name}_s{k}_spines.csv"] = spines_csv_text(result.spines)
        if overlay:
            relabelled = [replace(s, spine_id=int(t)) for s, t in zip(series.sessions[k].spines, series.tracks[k])]
            files[out_dir / f"{name}_s{k}_overlay.png"] = overlay_png(result.projection, relabelled,
                                                                      detached=result.detached)
    return files


# --- reading a series back ----------------------------------------------------------------------------------------

@dataclass
class SeriesTables:
    """A series as written: observations as arrays of one row each, per-session box tables, states.

    track_id, session, present, spine_id (-1 where empty), in_view (all
    True where the table has no such column): the observation rows.  boxes:
    per session, its ``_boxes.csv`` (or None where absent).  states:
    ``{track_id: state}`` from ``NAME_spines.csv`` (empty where absent).
    """

    track_id: np.ndarray
    session: np.ndarray
    present: np.ndarray
    spine_id: np.ndarray
    in_view: np.ndarray
    boxes: list
    states: dict

    @property
    def n_sessions(self) -> int:
        return int(self.session.max()) + 1 if len(self.session) else 0

    def presence(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(track ids (T,), present (T, N) bool, in_view (T, N) bool)``."""
        ids = np.unique(self.track_id)
        present = np.zeros((len(ids), self.n_sessions), dtype=bool)
        shown = np.ones((len(ids), self.n_sessions), dtype=bool)
        rows = np.searchsorted(ids, self.track_id)
        present[rows, self.session] = self.present
        shown[rows, self.session] = self.in_view
        return ids, present, shown


def series_prefix(path) -> Path:
    """The prefix ``DIR/NAME`` of a series from its ``NAME_observations.csv`` or the prefix itself."""
    path = Path(path)
    if path.name.endswith("_observations.csv"):
        return path.with_name(path.name[: -len("_observations.csv")])
    if path.is_dir():
        found = sorted(path.glob("*_observations.csv"))
        if len(found) != 1:
            raise SpineDetError(f"folder holds {len(found)} series (*_observations.csv); name the one to use", path)
        return series_prefix(found[0])
    return path


def read_series(path) -> SeriesTables:
    """Read a series written as in the module docstring: ``path`` is its ``NAME_observations.csv``, its prefix
    ``DIR/NAME``, or a folder holding one series."""
    prefix = series_prefix(path)
    observations = prefix.with_name(prefix.name + "_observations.csv")
    header, body = read_csv(observations)
    needed = ("track_id", "session", "present", "spine_id")
    if not set(needed) <= set(header):
        raise SpineDetError(f"not a series observations table: columns {','.join(header) or '(none)'}; expected "
                            f"{','.join(OBSERVATION_COLUMNS)}", observations)
    col = {c: header.index(c) for c in needed}
    try:
        track = np.array([int(r[col["track_id"]]) for r in body], dtype=np.int64)
        session = np.array([int(r[col["session"]]) for r in body], dtype=np.int64)
        present = np.array([int(r[col["present"]]) for r in body], dtype=bool)
        spine = np.array([int(r[col["spine_id"]]) if r[col["spine_id"]].strip() else -1 for r in body],
                         dtype=np.int64)
        shown = (np.array([int(r[header.index("in_view")]) for r in body], dtype=bool) if "in_view" in header
                 else np.ones(len(body), dtype=bool))
    except (ValueError, IndexError) as exc:
        raise SpineDetError(f"malformed row ({exc})", observations) from None
    if len(session) and session.min() < 0:
        raise SpineDetError("session numbers must be 0 or more", observations)
    if np.any(present & (spine < 0)):
        raise SpineDetError("a present spine has no spine_id", observations)
    n = int(session.max()) + 1 if len(session) else 0
    boxes = []
    for k in range(n):
        box_path = prefix.with_name(f"{prefix.name}_s{k}_boxes.csv")
        boxes.append(read_box_table(box_path) if box_path.exists() else None)
    states = {}
    spines_path = prefix.with_name(prefix.name + "_spines.csv")
    if spines_path.exists():
        table = list(csv.DictReader(io.StringIO(spines_path.read_text(encoding="utf-8-sig"))))
        try:
            states = {int(r["track_id"]): r["state"].strip() for r in table}
        except (KeyError, ValueError) as exc:
            raise SpineDetError(f"malformed row ({exc})", spines_path) from None
    return SeriesTables(track, session, present, spine, shown, boxes, states)
