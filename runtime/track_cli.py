"""``spine-track``: follow spines over imaging sessions of the same field (one identity per spine).

``spine-track SESSION... --out DIR`` takes the sessions in order as files (TIFF stacks, OME-Zarr folders,
CZI/ND2/LIF files, or folders of per-slice PNGs), or one folder of stacks (its ``.tif``/``.tiff``/``.zarr``/
``.czi``/``.nd2``/``.lif`` entries in name order, numbers by value), or one time-series TIFF or OME-Zarr (``TZYX``:
its time points are the sessions).  It detects spines in each session as ``spine-run``
does, registers each session to the first (``--reference first``) or to the one before (``previous``),
links spines across sessions (:mod:`~spinedet.runtime.sessions`) and writes the series' tables
(:mod:`~spinedet.runtime.session_reports`), all or nothing.

Every problem with the input (one session only, another voxel size, a session that does not overlap its
reference, a corrupt file) is one line and leaves no output, exit code 1; a bad option or model is one
line, exit code 2, before any input is read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from .cliutil import (Batch, Channel, Device, DeviceName, Json, LinkThreshold, MaxArea, Model, NoShaftCheck, Out,
                      PixelSize, Progress, Quiet, ScoreThreshold, ShaftDistance, Threads, ZStep, fail, guarded,
                      make_app, note, run, say, shaft_distance_um)
from .detector import DEFAULT_BATCH
from .errors import SpineDetError
from .postprocess import MAX_AREA_UM2
from .sessions import MAX_DISTANCE_UM, MAX_GAP, MAX_ROTATION_DEG, REFERENCES

TOOL = "spine-track"

app = make_app()


def session_inputs(paths) -> list[tuple[Path, int | None, str]]:
    """The sessions named on the command line: ``(path, time point or None, label)`` each, in order.

    One folder of stacks: its stacks (TIFF, OME-Zarr, CZI/ND2/LIF) by name, numbers by value (``day2`` before
    ``day10``).  One time-series TIFF or OME-Zarr: its time points.  Anything else: one session per path.  Refuses
    fewer than two.
    """
    from .stacks import STACK_FILE_SUFFIXES, is_stack_folder, open_stack, stacks_in
    from .zarr_stacks import is_zarr

    paths = [Path(p) for p in paths]
    sessions = [(p, None, str(p)) for p in paths]
    if len(paths) == 1:
        path = paths[0]
        one_stack = path.is_dir() and (is_zarr(path) or (is_stack_folder(path) and any(
            f.suffix.lower() == ".png" for f in path.iterdir())))
        if path.is_dir() and not one_stack:
            sessions = [(f, None, str(f)) for f in stacks_in(path)]
            if not sessions:
                raise SpineDetError(f"folder holds no stacks ({', '.join(STACK_FILE_SUFFIXES)}, .zarr) to track",
                                    path)
        elif path.is_file() or is_zarr(path):
            with open_stack(path, time_point=0) as stack:
                n = stack.time_points
            if n > 1:
                sessions = [(path, t, f"{path}[t={t}]") for t in range(n)]
    if len(sessions) < 2:
        where = f": {sessions[0][2]}" if sessions else ""
        raise SpineDetError(f"a series needs at least two sessions, got {len(sessions)}{where} (give the sessions' "
                            "stacks in order, a folder of them, or one time-series TIFF)")
    return sessions


@app.command()
def spine_track(
    sessions: List[Path] = typer.Argument(..., metavar="SESSION",
                                          help="The sessions' stacks in order, a folder of them, or one TZYX "
                                               "TIFF or OME-Zarr."),
    out: Out = Path("."),
    name: str = typer.Option("series", metavar="NAME", help="File names: NAME_observations.csv, ..."),
    max_distance: float = typer.Option(MAX_DISTANCE_UM, "--max-distance", metavar="UM",
                                       help="Spines farther apart than this after registration are never "
                                            "linked (µm; a difference in depth counts half)."),
    max_gap: int = typer.Option(MAX_GAP, "--max-gap", min=0, metavar="N",
                                help="Sessions in a row a spine may be missed and keep its identity."),
    reference: str = typer.Option("first", "--reference", metavar="first|previous",
                                  help="Register each session to the first one, or to the previous one (chained)."),
    max_rotation: float = typer.Option(MAX_ROTATION_DEG, "--max-rotation", metavar="DEG",
                                       help="Largest in-plane rotation between sessions searched (0: shift only)."),
    model: Model = None,
    device: Device = DeviceName.cpu,
    batch: Batch = DEFAULT_BATCH,
    threads: Threads = None,
    channel: Channel = None,
    pixel_size: PixelSize = None,
    z_step: ZStep = None,
    score_threshold: ScoreThreshold = None,
    link_threshold: LinkThreshold = None,
    max_area: MaxArea = MAX_AREA_UM2,
    shaft_distance: ShaftDistance = None,
    no_shaft_check: NoShaftCheck = False,
    detections: Optional[Path] = typer.Option(
        None, "--detections", metavar="DIR", file_okay=False,
        help="Reuse spine-run's tables: a session whose DIR/<stem>_boxes.csv exists (as spine-run --out DIR wrote "
             "it, or corrected by hand) is not detected again; the others are."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write each session's projection labelled by track."),
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Follow dendritic spines over imaging sessions: one id per spine, gained, lost, survival, turnover."""
    from .batch import DetectorOptions

    if reference not in REFERENCES:
        fail(TOOL, f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if not max_distance > 0:
        fail(TOOL, f"--max-distance must be a positive number of µm, got {max_distance}")
    if not 0 <= max_rotation <= 45:
        fail(TOOL, f"--max-rotation must be 0-45 degrees, got {max_rotation}")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        fail(TOOL, f"--name must be a plain file name prefix, got {name!r}")
    for value, option in ((pixel_size, "--pixel-size"), (z_step, "--z-step")):
        if value is not None and not value > 0:
            fail(TOOL, f"{option} must be a positive number of µm, got {value}")
    options = DetectorOptions(model, device.value, batch, threads, score_threshold, link_threshold, max_area,
                              shaft_distance_um(shaft_distance, no_shaft_check))
    detector = guarded(TOOL, options.load)
    settings = {"batch": batch, "device": detector.backend.device, "channel": channel,
                "score_threshold": detector.score_threshold, "link_threshold": detector.link_threshold,
                "max_area_um2": detector.max_area_um2, "shaft_distance_um": detector.shaft_distance_um}

    def main():
        try:
            return _track(detector, sessions, out, name, max_distance, max_gap, reference, max_rotation, channel,
                          pixel_size, z_step, overlay, quiet, settings, detections)
        except SpineDetError as exc:
            fail(TOOL, exc, 1)

    report = guarded(TOOL, main)
    if as_json:
        typer.echo(json.dumps(report))


def _track(detector, paths, out, name, max_distance, max_gap, reference, max_rotation, channel, pixel_size, z_step,
           overlay, quiet, settings, detections=None) -> dict:
    from .context import ASSUMED_Z_STEP_UM
    from .files import write_all
    from .session_reports import series_files, state_counts
    from .reuse import check_run, check_table, detection_from_table
    from .sessions import add_session, session_spines, start_series
    from .stacks import open_stack

    start = time.perf_counter()
    inputs = session_inputs(paths)

    def opened(k):
        path, t, label = inputs[k]
        try:
            return open_stack(path, channel=channel, pixel_size=pixel_size, z_step=z_step, time_point=t)
        except SpineDetError as exc:
            raise SpineDetError(f"session {k}: {exc.with_path(label)}") from None

    # before any detection: every session readable, one voxel size, all stacks or all single images
    voxels, shapes, tables = [], [], _reused_tables(inputs, detections)
    for k in range(len(inputs)):
        with opened(k) as stack:
            voxels.append(stack.voxel_size)
            shapes.append(stack.shape)
            if k in tables:
                try:
                    check_run(tables[k][2], stack.shape)
                    check_table(tables[k][1], stack.shape, stack.z_index)
                except SpineDetError as exc:
                    raise SpineDetError(f"session {k}: {exc.with_path(tables[k][0])} "
                                        f"(the stack: {inputs[k][2]})") from None
    first_voxel = voxels[0]
    for k, (voxel, shape) in enumerate(zip(voxels, shapes)):
        label = inputs[k][2]
        if not _close(voxel, first_voxel):
            raise SpineDetError(f"session {k}: {label}: voxel size {_voxel_text(voxel)} differs from session 0's "
                                f"{_voxel_text(first_voxel)}; if they are the same, pass --pixel-size and --z-step")
        if (shape[0] == 1) != (shapes[0][0] == 1):
            raise SpineDetError(f"session {k}: {label}: single images and z-stacks cannot be compared (shape "
                                f"{shape}, session 0: {shapes[0]})")
    notes = []
    px = first_voxel.x_um or detector.card.pixel_size_um
    dz = first_voxel.z_um or ASSUMED_Z_STEP_UM
    if first_voxel.x_um is None:
        notes.append(f"no pixel size in the files: assumed the model's {px:g} µm/px (pass --pixel-size UM)")
    if first_voxel.z_um is None and shapes[0][0] > 1:
        notes.append(f"no z-step in the files: assumed {dz:g} µm (pass --z-step UM); z distances depend on it")
    voxel_size = (dz, px, px)

    series, results = None, []
    for k, (path, _, label) in enumerate(inputs):
        progress = Progress(f"session {k}", quiet)
        tick = time.perf_counter()
        with opened(k) as stack:
            try:
                if k in tables:
                    result = detection_from_table(tables[k][1], stack, projection=overlay)
                else:
                    result = detector.detect(stack, projection=overlay, progress=progress)
                spines = session_spines(result, voxel_size)
            except SpineDetError as exc:
                raise SpineDetError(f"session {k}: {exc.with_path(label)}") from None
            finally:
                progress.close()
            try:  # these errors name the session (label) themselves
                if series is None:
                    series = start_series(spines, stack, label, max_distance, max_gap, reference, max_rotation)
                else:
                    series = add_session(series, spines, stack, label)
            except SpineDetError as exc:
                raise SpineDetError(f"session {k}: {exc}") from None
        results.append(result)
        reg = series.registrations[-1]
        where = "" if k == 0 else (f"; shift x {reg.shift_um[2]:+.2f} y {reg.shift_um[1]:+.2f} "
                                   f"z {reg.shift_um[0]:+.2f} µm, rotation {reg.rotation_deg:+.2f}°, "
                                   f"quality {reg.quality:.2f}")
        found = f"from {tables[k][0]}" if k in tables else "detected"
        say(f"session {k}: {label}: {len(spines)} spines ({found}, {time.perf_counter() - tick:.1f} s){where}", quiet)
    model_path = str(detector.model_path)
    extra = {"inputs": [label for _, _, label in inputs],
             "voxel_size_um": {"x": px, "y": px, "z": dz, "source": first_voxel.source},
             "notes": notes, "model": model_path, "detection": settings,
             "detections_read": [str(tables[k][0]) if k in tables else None for k in range(len(inputs))],
             "seconds": round(time.perf_counter() - start, 3)}
    files = series_files(series, out, name, [label for _, _, label in inputs], results, extra, overlay)
    write_all(files)
    for text in notes:
        note(TOOL, text, quiet)
    states = state_counts(series.states())
    say(f"{series.n_tracks} spines over {len(inputs)} sessions: " + ", ".join(f"{v} {k}" for k, v in states.items())
        + f" -> {Path(out) / (name + '_observations.csv')}", quiet)
    summary = json.loads(files[Path(out) / f"{name}_summary.json"])
    summary["files"] = [str(p) for p in files]
    return summary


def _reused_tables(inputs, folder) -> dict:
    """``{session: (path, BoxTable, run summary)}`` of the sessions whose ``<stem>_boxes.csv`` (spine-run's name)
    is in ``folder``.

    Refuses a folder that is missing or holds no table for any session, and time points of one file (spine-run
    writes no tables for those)."""
    from .batch import assign_stems
    from .reuse import read_detections

    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise SpineDetError("--detections: no such folder", folder)
    if any(t is not None for _, t, _ in inputs):
        raise SpineDetError("--detections needs one stack file per session (spine-run writes no tables for the time "
                            "points of one file)", folder)
    stems = assign_stems([path for path, _, _ in inputs])
    found = {k: folder / f"{stem}_boxes.csv" for k, stem in enumerate(stems)}
    found = {k: path for k, path in found.items() if path.is_file()}
    if not found:
        raise SpineDetError(f"--detections: no table for any session (looked for {stems[0]}_boxes.csv"
                            f"{', ...' if len(stems) > 1 else ''}; spine-run --out DIR writes them)", folder)
    return {k: (path, *read_detections(path)) for k, path in found.items()}


def _close(a, b) -> bool:
    """Voxel sizes equal within 0.1 % (both known) or both unknown."""
    def same(u, v):
        return (u is None and v is None) or (u is not None and v is not None and abs(u - v) <= 1e-3 * max(u, v))
    return same(a.x_um, b.x_um) and same(a.z_um, b.z_um)


def _voxel_text(voxel) -> str:
    x = f"{voxel.x_um:g} µm/px" if voxel.x_um else "unknown pixel size"
    z = f"z-step {voxel.z_um:g} µm" if voxel.z_um else "unknown z-step"
    return f"{x}, {z} ({voxel.source})"


def main() -> None:
    """Entry point of ``spine-track``."""
    run(app, TOOL)


if __name__ == "__main__":  # pragma: no cover
    main()
