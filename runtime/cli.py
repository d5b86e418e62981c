"""Command-line tools: ``spine-run`` (detect spines) and ``spine-eval`` (score against ground truth).

Errors a user can cause are printed as one line, ``<tool>: error: <file>: <problem>``,
never as a traceback (set SPINEDET_DEBUG=1 to see one); the exit code is 0
when every input succeeded, 1 when some input failed, 2 when nothing could run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .errors import SpineDetError

run_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
eval_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                       invoke_without_command=True)


def _fail(tool: str, message, code: int = 2):
    typer.echo(f"{tool}: error: {message}", err=True)
    raise typer.Exit(code)


def _guarded(tool: str, main):
    """Run ``main()`` turning any exception into one stderr line and an exit code."""
    try:
        return main()
    except (typer.Exit, SystemExit):
        raise
    except SpineDetError as exc:
        _fail(tool, exc)
    except KeyboardInterrupt:
        _fail(tool, "interrupted; no output was written for the input in progress", 130)
    except Exception as exc:  # a bug: still one line, unless debugging
        if os.environ.get("SPINEDET_DEBUG"):
            raise
        _fail(tool, f"internal error {type(exc).__name__}: {exc} (set SPINEDET_DEBUG=1 for details)", 3)


class _Progress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self, name: str, quiet: bool):
        self.name, self.active = name, not quiet and sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int):
        if not self.active:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r{self.name}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total} slices "
                         f"{rate:.1f}/s")
        sys.stderr.flush()

    def close(self):
        if self.active:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


@run_app.command()
def spine_run(
    stacks: List[Path] = typer.Argument(..., metavar="STACK",
                                        help="TIFF/PNG stacks or images, or folders of <name>-NN.png slices."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for the result files."),
    model: Optional[Path] = typer.Option(None, help="ONNX model (card .json beside it). Default: shipped model."),
    device: str = typer.Option("cpu", help="cpu, cuda, tensorrt (onnxruntime), trt (native TensorRT) or auto."),
    batch: int = typer.Option(8, min=1, help="Slices (tiles) per inference call."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for inference (default: all)."),
    channel: Optional[int] = typer.Option(None, min=0, help="Channel to read from multi-channel data (0-based)."),
    pixel_size: Optional[float] = typer.Option(None, help="Pixel size in µm (overrides the file's metadata)."),
    z_step: Optional[float] = typer.Option(None, help="Distance between slices in µm (overrides metadata)."),
    score_threshold: Optional[float] = typer.Option(
        None, help="Report a spine when its most confident box scores above this. Default: the model card's "
                   "(0.5, the paper's, unless the model was calibrated)."),
    link_threshold: Optional[float] = typer.Option(
        None, help="Boxes above this confidence extend spines through z (at most --score-threshold). "
                   "Default: the model card's (0.5, the paper's box rule), else the score threshold."),
    max_area: float = typer.Option(20.0, help="Drop boxes larger than this area, in µm²."),
    mip: bool = typer.Option(False, "--mip", help="Detect on the maximum-intensity projection (fast 2D mode)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write a PNG of the projection with numbered boxes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or per-input lines on stderr."),
):
    """Detect dendritic spines in 3D stacks (or 2D images) and write CSV tables and a JSON summary per input."""
    from .detector import SpineDetector
    from .files import write_all
    from .reports import report_files
    from .stacks import open_stack

    detector = _guarded("spine-run", lambda: SpineDetector(
        model, device=device, batch=batch, threads=threads, score_threshold=score_threshold, max_area_um2=max_area,
        link_threshold=link_threshold))
    settings = {"score_threshold": detector.score_threshold, "link_threshold": detector.link_threshold,
                "max_area_um2": max_area, "nms_iom": detector.nms_iom,
                "link_iom": detector.link_iom, "max_misses": detector.max_misses, "batch": batch,
                "device": detector.backend.device, "channel": channel}
    failures = 0
    stems: dict[str, int] = {}
    for path in stacks:
        progress = _Progress(path.name, quiet)
        try:
            start = time.perf_counter()
            with open_stack(path, channel=channel, pixel_size=pixel_size, z_step=z_step) as stack:
                result = detector.detect(stack, mip=mip, projection=overlay, progress=progress)
                stem = stack.name
            stems[stem] = stems.get(stem, 0) + 1
            if stems[stem] > 1:  # two inputs with one name must not overwrite each other
                stem = f"{stem}-{stems[stem]}"
            files = report_files(result, path, out, stem, detector.model_path, settings, overlay)
            write_all(files)
            progress.close()
            if not quiet:
                typer.echo(f"{path}: {len(result.spines)} spines in {result.shape[0]} slice"
                           f"{'s' if result.shape[0] != 1 else ''} ({time.perf_counter() - start:.1f} s) "
                           f"-> {out / (stem + '_spines.csv')}", err=True)
        except SpineDetError as exc:
            progress.close()
            failures += 1
            typer.echo(f"spine-run: error: {exc.with_path(path)}", err=True)
        except KeyboardInterrupt:
            progress.close()
            _fail("spine-run", f"{path}: interrupted; no output was written for it", 130)
        except Exception as exc:
            progress.close()
            if os.environ.get("SPINEDET_DEBUG"):
                raise
            failures += 1
            typer.echo(f"spine-run: error: {path}: internal error {type(exc).__name__}: {exc} "
                       "(set SPINEDET_DEBUG=1 for details)", err=True)
    if failures:
        raise typer.Exit(1)


@eval_app.callback()
def spine_eval(
    ctx: typer.Context,
    gt: Optional[Path] = typer.Option(None, help="Ground truth: a _boxes.csv or the paper's tracking CSV."),
    pred: Optional[Path] = typer.Option(None, help="Detections: a _boxes.csv or the paper's tracking CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    match_iom: float = typer.Option(0.5, help="3D IoM at which a detection matches."),
    min_track_score: float = typer.Option(0.5, help="A detected track counts if its mean score is at least this."),
):
    """Score detections against ground truth with the paper's F1-3D (and the per-slice F1).

    Subcommand `consensus` builds ground truth from several annotators.
    """
    if ctx.invoked_subcommand is not None:
        return
    if gt is None or pred is None:
        _fail("spine-eval", "need --gt and --pred (or the subcommand 'consensus'); see --help")
    from .evaluate import f1_2d_tables, f1_3d
    from .tables import read_box_table

    def main():
        truth, detections = read_box_table(gt), read_box_table(pred)
        scores = f1_3d(detections, truth, match_iom, min_track_score)
        scores["per_slice"] = f1_2d_tables(detections, truth, 0.5, 0.0)
        return scores

    scores = _guarded("spine-eval", main)
    if as_json:
        typer.echo(json.dumps(scores))
        return
    s = scores
    typer.echo(f"F1-3D {s['f1']:.4f}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  "
               f"(TP {s['tp']}, FP {s['fp']}, FN {s['fn']})")
    p = s["per_slice"]
    typer.echo(f"F1-2D {p['f1']:.4f}  precision {p['precision']:.4f}  recall {p['recall']:.4f}  "
               f"(TP {p['tp']}, FP {p['fp']}, FN {p['fn']}; per slice, IoM >= 0.5)")


@eval_app.command("consensus")
def consensus_command(
    annotations: List[Path] = typer.Argument(..., metavar="CSV", help="One tracking CSV per annotator."),
    min_votes: int = typer.Option(..., "--min-votes", min=1,
                                  help="Annotators that must agree: 1 minimal, majority, all maximal."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the consensus CSV."),
    match_iom: float = typer.Option(0.5, help="3D IoM at which two annotators mean the same spine."),
):
    """Build consensus ground truth from several annotators' tracking CSVs."""
    from .evaluate import consensus
    from .files import write_all
    from .tables import boxes_csv_text, paper_tracking_csv_text, read_box_table

    def main():
        tables = [read_box_table(p) for p in annotations]
        agreed = consensus(tables, min_votes, match_iom)
        named = any(s for s in agreed.source.tolist())
        text = paper_tracking_csv_text(agreed) if named else boxes_csv_text(agreed, with_stack=False)
        write_all({out: text})
        return agreed

    agreed = _guarded("spine-eval", main)
    typer.echo(f"{len(set(zip(agreed.stack.tolist(), agreed.spine_id.tolist())))} spines agreed by at least "
               f"{min_votes} of {len(annotations)} annotators -> {out}", err=True)


def run_main():
    run_app(prog_name="spine-run")


def eval_main():
    eval_app(prog_name="spine-eval")
