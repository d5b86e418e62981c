"""What every spinedet command shares: one framework (typer), one error wrapper, one option vocabulary.

Errors a user can cause are printed as one line, ``<tool>: error: <file>: <problem>``,
never as a traceback (set ``SPINEDET_DEBUG=1`` to see one).  Exit codes: 0 when
everything succeeded, 1 when some inputs failed (the others were done), 2 when
nothing could run (a bad option, model or input), 3 for an internal error,
130 when interrupted.

The options mean the same in every command that has them:

``--out/-o DIR``   the folder outputs are written into (created if missing);
``--quiet/-q``     nothing on stderr but errors;
``--json``         print the results as one JSON object on stdout, and nothing else there;
``--device``       where a model runs (:data:`~spinedet.runtime.backends.DEVICES`);
``--batch N``      slices (or tiles) per inference call; for an engine, the largest batch it takes;
``--threads N``    CPU threads;
``--score-threshold``, ``--link-threshold``, ``--max-area``, ``--shaft-distance``, ``--no-shaft-check``
                   how a detector decides (spine-run's meaning, wherever they appear);
``--seed S``       the random seed of everything random in the command.
"""

from __future__ import annotations

import math
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .backends import DEVICES
from .errors import SpineDetError

Out = Annotated[Path, typer.Option("--out", "-o", file_okay=False, help="Folder to write into (created if missing).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")]
Json = Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")]
#: the devices, as a choice on the command line
DeviceName = Enum("DeviceName", {name: name for name in DEVICES}, type=str)
Device = Annotated[DeviceName, typer.Option(
    "--device", help="cpu, cuda or tensorrt (onnxruntime), trt (a TensorRT engine) or auto.")]
Batch = Annotated[int, typer.Option("--batch", min=1, help="Slices (or tiles) per inference call.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads (default: all).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Model = Annotated[Optional[Path], typer.Option(
    "--model", help="ONNX model (card .json beside it). Default: the fastest shipped model for --device (on cpu the "
                    "int8 one, where shipped).")]
Channel = Annotated[Optional[int], typer.Option("--channel", min=0,
                                                help="Channel to read from multi-channel data (0-based).")]
PixelSize = Annotated[Optional[float], typer.Option("--pixel-size", help="Pixel size in µm (overrides the files' "
                                                                         "metadata).")]
ZStep = Annotated[Optional[float], typer.Option("--z-step", help="Distance between slices in µm (overrides the "
                                                                 "files' metadata).")]
# how a detector decides (spine-run, spine-track; spine-validate has --no-shaft-check)
ScoreThreshold = Annotated[Optional[float], typer.Option(
    "--score-threshold", help="Report a spine when its most confident box scores above this. Default: the model "
                              "card's (0.5, the paper's, unless the model was calibrated).")]
LinkThreshold = Annotated[Optional[float], typer.Option(
    "--link-threshold", help="Boxes above this confidence extend spines through z (at most --score-threshold). "
                             "Default: the model card's (0.5, the paper's box rule), else the score threshold.")]
MaxArea = Annotated[float, typer.Option("--max-area", metavar="UM2",
                                        help="Drop boxes larger than this area, in µm².")]
ShaftDistance = Annotated[Optional[float], typer.Option(
    "--shaft-distance", min=0, metavar="UM",
    help="Drop boxes farther than this (µm) from every large bright structure (a dendrite) of their slice and its "
         "depth context: isolated puncta, out-of-focus clouds. Default: the model card's (1 µm for the shipped "
         "model; no check for a model whose card names none).")]
NoShaftCheck = Annotated[bool, typer.Option("--no-shaft-check",
                                            help="Keep boxes however far from a dendrite (the paper's rule).")]


def shaft_distance_um(distance_um: float | None, no_check: bool) -> float | None:
    """The detector's ``shaft_distance_um`` from ``--shaft-distance`` and ``--no-shaft-check`` (``math.inf``:
    no check; None: the card's)."""
    return math.inf if no_check else distance_um


def make_app(subcommands: bool = False) -> typer.Typer:
    """A typer app configured the spinedet way (no shell completion, no rich tracebacks or markup)."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                       invoke_without_command=subcommands, no_args_is_help=False)


def fail(tool: str, message, code: int = 2):
    """Print ``<tool>: error: <message>`` on stderr and exit with ``code``."""
    typer.echo(f"{tool}: error: {message}", err=True)
    raise typer.Exit(code)


def guarded(tool: str, main, interrupted: str = "interrupted; nothing was written for the work in progress"):
    """Run ``main()``, turning any exception into one stderr line and an exit code (see the module docstring)."""
    try:
        return main()
    except (typer.Exit, SystemExit, typer.TyperException):
        raise
    except SpineDetError as exc:
        fail(tool, exc)
    except KeyboardInterrupt as exc:  # one that says what was written (batch.Interrupted) says so
        fail(tool, str(exc) or interrupted, 130)
    except MemoryError:
        fail(tool, "out of memory", 2)
    except Exception as exc:  # a bug: still one line, unless debugging
        if os.environ.get("SPINEDET_DEBUG"):
            raise
        fail(tool, f"internal error {type(exc).__name__}: {exc} (set SPINEDET_DEBUG=1 for details)", 3)


def note(tool: str, message: str, quiet: bool = False) -> None:
    """Print ``<tool>: note: <message>`` on stderr, unless quiet."""
    if not quiet:
        typer.echo(f"{tool}: note: {message}", err=True)


def say(message: str, quiet: bool = False) -> None:
    """Print a progress or result line on stderr, unless quiet."""
    if not quiet:
        typer.echo(message, err=True)


def run(app: typer.Typer, prog: str) -> None:
    """Entry point body: run ``app`` as the command ``prog``; usage errors are one line too."""
    try:
        code = app(prog_name=prog, standalone_mode=False)  # returns an Exit's code instead of raising it
    except (typer.Abort, KeyboardInterrupt):
        typer.echo(f"{prog}: error: interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # a bad option or argument: one line and where to look
        typer.echo(f"{prog}: error: {exc.format_message()} (see {prog} --help)", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


class Progress:
    """A one-line progress display on stderr, only when stderr is a terminal and not quiet."""

    def __init__(self, name: str, quiet: bool, unit: str = "slices"):
        self.name, self.unit, self.active = name, unit, not quiet and sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int):
        if not self.active:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r{self.name}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit} "
                         f"{rate:.1f}/s")
        sys.stderr.flush()

    def close(self):
        if self.active:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
