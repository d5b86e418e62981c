"""The command ``spine-synth``: synthetic stacks and their ground truth, written to a folder.

``spine-synth --out DIR [--count N] [--slices Z] [--size PX] [--seed S]
[--pixel-size UM] [--z-step UM] [--bit-depth 8|16] [--prefix NAME] [--quiet] [--json]``

``--sessions N`` (2 or more) writes time series instead (:mod:`.series`): series ``i`` is
``make_series(np.random.default_rng([S, i]), (Z, PX, PX), N, ...)``, the same dendrites imaged in N
sessions moved by up to ``--max-shift`` µm in x and y and ``--max-z-shift`` µm in z and turned by up
to ``--max-rotation`` degrees against session 0, losing ``--loss`` and gaining ``--gain`` of their
spines between sessions, head radii drifting by ``--size-drift`` (SD of the log).  It writes
``DIR/NAME_iii_s<k>.tif`` and ``NAME_iii_s<k>_boxes.csv`` per session (spine ids persist across
sessions) and the series' ground truth in ``spine-track``'s format, ``NAME_iii_observations.csv``,
``NAME_iii_spines.csv``, with ``NAME_iii_truth.json`` (poses, events), all-or-nothing per series;
``spine-eval sessions --gt DIR/NAME_iii_observations.csv --pred TRACKED`` scores a tracker on it.

Stack ``i`` (0-based) is ``make_stack(np.random.default_rng([S, i]), (Z, PX, PX))``
with the given settings fixed and the others drawn; it is written as
``DIR/NAME_iii.tif`` (ImageJ TIFF with the voxel size in µm) and
``DIR/NAME_iii_boxes.csv`` (the ground truth), the two files all-or-nothing.

Per stack, one line on stderr (unless ``--quiet``) says what the files hold (wrapped here)::

    out/synth_000.tif: 30 slices, 0.092 µm/px, z-step 0.48 µm, 16-bit, signal 120 photons/voxel;
    ground truth: 14 spines in 42 boxes (29 spines placed, 15 never visible)

The ground truth names only spines visible in some slice (:mod:`.truth`),
so it can hold fewer spines than the scene placed.  With
``--json``, stdout gets one JSON object, ``{"out": ..., "seed": ..., "stacks":
[...]}``, one entry per stack with its files and these numbers (see
:func:`stack_report`).  Errors are one line, ``spine-synth: error: ...``, exit
code 2; stacks written before a failure stay (the error line says how many).
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from spinedet.runtime.cliutil import Json, Out, Quiet, Seed, guarded, make_app, run, say
from spinedet.runtime.errors import SpineDetError

from .files import write_series, write_stack
from .series import make_series
from .stack import SynthStack, make_stack

TOOL = "spine-synth"

app = make_app()

#: the bit depths, as a choice on the command line
BitDepth = Enum("BitDepth", {"8": "8", "16": "16"}, type=str)


def stack_report(stack: SynthStack, paths) -> dict:
    """What one written stack holds: its files, shape, voxel size (µm), drawn settings and ground-truth counts.

    ``paths`` are the files :func:`~.files.write_stack` wrote: ``files`` names
    them (``image`` the TIFF, ``ground_truth`` the ``_boxes.csv``).  ``spines`` and
    ``boxes`` count what the ``_boxes.csv`` holds (distinct spine ids, rows);
    ``spines_placed`` the spines in the scene, ``spines_never_visible`` those
    of them without any box.
    """
    paths = [Path(p) for p in paths]
    boxed = len(set(stack.table.spine_id.tolist()))
    placed = len(stack.spines)
    return {
        "files": {"image": str(next(p for p in paths if p.suffix == ".tif")),
                  "ground_truth": str(next(p for p in paths if p.suffix == ".csv"))},
        "shape": [int(n) for n in stack.image.shape],
        "voxel_size_um": [float(v) for v in stack.voxel_size],
        "bit_depth": int(stack.params.bit_depth),
        "signal_photons": float(stack.params.signal_photons),
        "spines": boxed,
        "boxes": len(stack.table),
        "spines_placed": placed,
        "spines_never_visible": placed - boxed,
    }


def _count(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def report_line(report: dict) -> str:
    """The stderr line of one stack (see the module docstring)."""
    z_um, px_um = report["voxel_size_um"][:2]
    return (f"{report['files']['image']}: {_count(report['shape'][0], 'slice')}, {px_um:.3f} µm/px, "
            f"z-step {z_um:.2f} µm, {report['bit_depth']}-bit, signal {report['signal_photons']:.0f} photons/voxel; "
            f"ground truth: {_count(report['spines'], 'spine')} in {_count(report['boxes'], 'box', 'boxes')} "
            f"({_count(report['spines_placed'], 'spine')} placed, {report['spines_never_visible']} never visible)")


def _positive_um(option: str, value: Optional[float]) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise SpineDetError(f"{option} must be a positive number of µm, got {value}")
    return value


@app.command()
def spine_synth(
    out: Out,
    count: int = typer.Option(1, min=1, help="Number of stacks."),
    slices: int = typer.Option(30, min=1, help="Slices per stack."),
    size: int = typer.Option(512, min=16, help="Width = height of a slice in pixels (at least 16)."),
    seed: Seed = 0,
    pixel_size: Optional[float] = typer.Option(None, "--pixel-size", metavar="UM",
                                               help="Pixel size in µm (default: drawn per stack, 0.07-0.15)."),
    z_step: Optional[float] = typer.Option(None, "--z-step", metavar="UM",
                                           help="Slice spacing in µm (default: drawn per stack, 0.3-1.0)."),
    bit_depth: Optional[BitDepth] = typer.Option(None, "--bit-depth", help="8 or 16 bit (default: drawn per stack)."),
    prefix: str = typer.Option("synth", metavar="NAME", help="File names: NAME_000.tif, NAME_000_boxes.csv, ..."),
    sessions: int = typer.Option(1, "--sessions", min=1, metavar="N",
                                 help="Write each stack as a time series of N imaging sessions (N >= 2)."),
    max_shift: float = typer.Option(4.0, "--max-shift", metavar="UM",
                                    help="Series: largest x and y shift of a session against the first (µm)."),
    max_z_shift: float = typer.Option(1.0, "--max-z-shift", metavar="UM",
                                      help="Series: largest z shift of a session against the first (µm)."),
    max_rotation: float = typer.Option(1.5, "--max-rotation", metavar="DEG",
                                       help="Series: largest in-plane rotation against the first session."),
    loss: float = typer.Option(0.1, "--loss", metavar="F", help="Series: share of spines lost between sessions."),
    gain: float = typer.Option(0.1, "--gain", metavar="F", help="Series: share of spines gained between sessions."),
    size_drift: float = typer.Option(0.15, "--size-drift", metavar="S",
                                     help="Series: SD of the log head radius change per session."),
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Write synthetic two-photon spine stacks (NAME_000.tif, ...) with their ground truth (NAME_000_boxes.csv)."""

    def main() -> list:
        if seed < 0:
            raise SpineDetError(f"--seed must be 0 or more, got {seed}")
        overrides = {}
        if _positive_um("--pixel-size", pixel_size) is not None:
            overrides["pixel_size_um"] = pixel_size
        if _positive_um("--z-step", z_step) is not None:
            overrides["z_step_um"] = z_step
        if bit_depth is not None:
            overrides["bit_depth"] = int(bit_depth.value)
        shape = (slices, size, size)
        if sessions > 1:
            def make(rng):
                return make_series(rng, shape, sessions, (max_z_shift, max_shift, max_shift), max_rotation, loss,
                                   gain, size_drift, **overrides)
            return _write_each(make, write_series, series_report, series_line, "series")
        return _write_each(lambda rng: make_stack(rng, shape, **overrides), write_stack, stack_report, report_line,
                           "stacks")

    def _write_each(make, write, report, line, what) -> list:
        """Make and write item i = 0..count-1 from seed [seed, i]; one line per item; the reports."""
        reports = []
        for i in range(count):
            try:
                try:
                    item = make(np.random.default_rng([seed, i]))
                except ValueError as exc:  # a setting the generator refuses
                    raise SpineDetError(str(exc)) from None
                paths = write(item, out, f"{prefix}_{i:03d}")
            except SpineDetError as exc:
                if reports:
                    raise SpineDetError(f"{exc} ({len(reports)} of {count} {what} were written before it)") from None
                raise
            reports.append(report(item, paths))
            say(line(reports[-1]), quiet)
        return reports

    reports = guarded(TOOL, main)
    if as_json:
        key = "series" if sessions > 1 else "stacks"
        typer.echo(json.dumps({"out": str(out), "seed": seed, key: reports}))


def series_report(series, paths) -> dict:
    """What one written series holds: its files, shape, voxel size, settings, poses and spine counts per session."""
    paths = [Path(p) for p in paths]
    return {
        "files": [str(p) for p in paths],
        "ground_truth": str(next(p for p in paths if p.name.endswith("_observations.csv"))),
        "shape": [int(n) for n in series.sessions[0].image.shape],
        "voxel_size_um": [float(v) for v in series.voxel_size],
        "settings": series.settings,
        "sessions": [{"shift_um": {"x": float(series.shift_um[k][2]), "y": float(series.shift_um[k][1]),
                                   "z": float(series.shift_um[k][0])},
                      "rotation_deg": float(series.rotation_deg[k]), "alive": len(series.alive[k]),
                      "visible": len(set(series.sessions[k].table.spine_id.tolist()))}
                     for k in range(len(series.sessions))],
    }


def series_line(report: dict) -> str:
    """The stderr line of one series."""
    z_um, px_um = report["voxel_size_um"][:2]
    visible = "/".join(str(s["visible"]) for s in report["sessions"])
    return (f"{report['ground_truth']}: {len(report['sessions'])} sessions of {_count(report['shape'][0], 'slice')}, "
            f"{px_um:.3f} µm/px, z-step {z_um:.2f} µm; spines visible per session {visible}")


def main() -> None:
    """Entry point of ``spine-synth``: runs :data:`app`, exits with its code (errors are one line)."""
    run(app, TOOL)
