"""Command-line tools: ``spine-run`` (detect spines) and ``spine-eval`` (score against ground truth).

Errors, exit codes and the shared options: :mod:`spinedet.runtime.cliutil`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from .cliutil import (Batch, Channel, Device, DeviceName, Json, LinkThreshold, MaxArea, Model, NoShaftCheck, Out,
                      PixelSize, Progress, Quiet, ScoreThreshold, ShaftDistance, Threads, ZStep, fail, guarded,
                      make_app, note, run, say, shaft_distance_um)
from .detector import DEFAULT_BATCH
from .errors import SpineDetError
from .evaluate import MATCH_IOM, MIN_TRACK_SCORE
from .postprocess import MAX_AREA_UM2

run_app = make_app()
eval_app = make_app(subcommands=True)


@run_app.command()
def spine_run(
    stacks: List[Path] = typer.Argument(..., metavar="STACK",
                                        help="TIFF/PNG stacks or images, OME-Zarr folders, CZI/ND2/LIF files, "
                                             "folders of <name>-NN.png slices, or folders of stacks (each stack in "
                                             "it)."),
    out: Out = Path("."),
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
    mip: bool = typer.Option(False, "--mip", help="Detect on the maximum-intensity projection (fast 2D mode)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write a PNG of the projection with numbered boxes."),
    overlay_scores: bool = typer.Option(False, "--overlay-scores",
                                        help="Write each spine's best score in the overlay."),
    rois: bool = typer.Option(False, "--roi", help="Also write Fiji ROIs (<stem>_rois.zip), one per spine per slice."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Run the stacks in parallel on a local Dask cluster of N worker processes "
                                       "(--threads each; default: the CPUs shared out). Needs spinedet[dask]."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", metavar="ADDRESS", help="Run the stacks on the Dask cluster whose scheduler is at "
                                                     "ADDRESS (tcp://host:8786); paths must be valid on its workers."),
    quiet: Quiet = False,
    as_json: Json = False,
):
    """Detect dendritic spines in 3D stacks (or 2D images) and write CSV tables and a JSON summary per input.

    With more than one stack, also batch_summary.csv (a row per stack).
    """
    from . import batch as batching
    from .files import write_all

    if workers is not None and scheduler is not None:
        fail("spine-run", "give --workers or --scheduler, not both")
    parallel = workers is not None or scheduler is not None
    if parallel:
        guarded("spine-run", batching.require_distributed)
    if workers is not None and threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    detector = batching.DetectorOptions(model, device.value, batch, threads, score_threshold, link_threshold,
                                        max_area, shaft_distance_um(shaft_distance, no_shaft_check))
    options = batching.RunOptions(detector, out, channel, pixel_size, z_step, mip, overlay, overlay_scores, rois)
    paths = batching.expand_inputs(stacks)
    stems = batching.assign_stems(paths)
    progress = Progress("spine-run", quiet or not parallel, unit="stacks")
    done: list = []

    def report(outcome):
        progress.close()
        if outcome.error is not None:
            typer.echo(f"spine-run: error: {outcome.error}", err=True)
        else:
            for text in outcome.notes:
                note("spine-run", f"{outcome.path}: {text}", quiet)
            row = outcome.row
            say(f"{outcome.path}: {row['spines']} spines in {row['slices']} slice{'s' if row['slices'] != 1 else ''} "
                f"({row['seconds']:.1f} s) -> {outcome.spines_csv}", quiet)
        done.append(outcome)
        progress(len(done), len(paths))

    def slices_progress(k, path):
        return Progress(path.name if len(paths) == 1 else f"{path.name} ({k + 1}/{len(paths)})", quiet)

    def run_all():
        try:
            if parallel:
                return batching.run_dask(paths, stems, options, workers, scheduler, report)
            return batching.run_serial(paths, stems, options, report, slices_progress)
        finally:
            progress.close()

    try:
        # load the model here first: a bad model or option stops the run (exit 2) before any input is read;
        # a serial run keeps it (batch.detector_for), a parallel one loads it again once per worker
        guarded("spine-run", lambda: detector.load().close() if parallel else batching.detector_for(detector))
        outcomes = guarded("spine-run", run_all)
    finally:
        batching.release_detectors()
    if len(outcomes) > 1:
        target = out / batching.BATCH_SUMMARY
        try:
            write_all({target: batching.batch_csv_text(outcomes)})
        except SpineDetError as exc:
            fail("spine-run", exc, 1)
        say(f"{sum(o.error is None for o in outcomes)} of {len(outcomes)} stacks done -> {target}", quiet)
    if as_json:
        typer.echo(json.dumps({"out": str(out), "stacks": [batching.outcome_record(o) for o in outcomes]}))
    if any(o.error is not None for o in outcomes):
        raise typer.Exit(1)


@eval_app.callback()
def spine_eval(
    ctx: typer.Context,
    gt: Optional[Path] = typer.Option(None, help="Ground truth: a _boxes.csv or the paper's tracking CSV."),
    pred: Optional[Path] = typer.Option(None, help="Detections: a _boxes.csv or the paper's tracking CSV."),
    as_json: Json = False,
    match_iom: float = typer.Option(MATCH_IOM, help="3D IoM at which a detection matches."),
    min_track_score: float = typer.Option(MIN_TRACK_SCORE,
                                          help="A detected track counts if its mean score is at least this."),
    projected: bool = typer.Option(False, "--projected",
                                   help="Score each spine as its z-averaged box in one plane (for spine-run --mip)."),
    quiet: Quiet = False,
):
    """Score detections against ground truth with the paper's F1-3D (and the per-slice F1).

    Subcommand `consensus` builds ground truth from several annotators; `sessions` scores a tracked series
    (spine-track) against ground truth.
    """
    if ctx.invoked_subcommand is not None:
        return
    if gt is None or pred is None:
        fail("spine-eval", "need --gt and --pred (or the subcommand 'consensus'); see --help")
    from . import evaluate
    from .tables import read_box_table

    def main():
        truth, detections = read_box_table(gt), read_box_table(pred)
        notes = []
        if projected:
            truth, detections = evaluate.projected(truth), evaluate.projected(detections)
        elif len(set(detections.z.tolist())) == 1 and len(set(truth.z.tolist())) > 1:
            notes.append(f"every detection lies in slice {detections.z[0]} (a maximum projection, spine-run --mip?) "
                         f"while the ground truth spans slices {truth.z.min()}-{truth.z.max()}: F1-3D compares 3D "
                         "boxes and scores a projection near 0; --projected compares them in the plane")
        scores = evaluate.f1_3d(detections, truth, match_iom, min_track_score)
        scores["per_slice"] = evaluate.f1_2d_tables(detections, truth, MATCH_IOM, 0.0)
        scores["notes"] = notes
        return scores

    s = guarded("spine-eval", main)
    if as_json:
        typer.echo(json.dumps(s))
        return
    for text in s["notes"]:
        note("spine-eval", text, quiet)
    what = "F1 in the plane" if projected else "F1-3D"
    typer.echo(f"{what} {s['f1']:.4f}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  "
               f"(TP {s['tp']}, FP {s['fp']}, FN {s['fn']})")
    p = s["per_slice"]
    typer.echo(f"F1-2D {p['f1']:.4f}  precision {p['precision']:.4f}  recall {p['recall']:.4f}  "
               f"(TP {p['tp']}, FP {p['fp']}, FN {p['fn']}; per slice, IoM >= 0.5)")


@eval_app.command("consensus")
def consensus_command(
    annotations: List[Path] = typer.Argument(..., metavar="CSV", help="One tracking CSV per annotator."),
    min_votes: int = typer.Option(..., "--min-votes", min=1,
                                  help="Annotators that must agree: 1 minimal, majority, all maximal."),
    out: Out = Path("."),
    match_iom: float = typer.Option(MATCH_IOM, help="3D IoM at which two annotators mean the same spine."),
    quiet: Quiet = False,
):
    """Build consensus ground truth from several annotators' tracking CSVs: writes consensus-<K>of<N>.csv in --out."""
    from .evaluate import consensus
    from .files import write_all
    from .tables import boxes_csv_text, paper_tracking_csv_text, read_box_table

    target = out / f"consensus-{min_votes}of{len(annotations)}.csv"

    def main():
        if min_votes > len(annotations):
            raise SpineDetError(f"--min-votes {min_votes} is more than the {len(annotations)} annotators given")
        tables = [read_box_table(p) for p in annotations]
        agreed = consensus(tables, min_votes, match_iom)
        named = any(s for s in agreed.source.tolist())
        text = paper_tracking_csv_text(agreed) if named else boxes_csv_text(agreed, with_stack=False)
        write_all({target: text})
        return agreed

    agreed = guarded("spine-eval", main)
    say(f"{len(set(zip(agreed.stack.tolist(), agreed.spine_id.tolist())))} spines agreed by at least "
        f"{min_votes} of {len(annotations)} annotators -> {target}", quiet)


@eval_app.command("sessions")
def sessions_command(
    gt: Path = typer.Option(..., "--gt", help="Ground-truth series: its NAME_observations.csv (NAME_s<k>_boxes.csv "
                                              "beside it), its prefix, or its folder."),
    pred: Path = typer.Option(..., "--pred", help="spine-track's output: NAME_observations.csv, prefix or folder."),
    as_json: Json = False,
    match_iom: float = typer.Option(MATCH_IOM, help="3D IoM at which a detection is a true spine, per session."),
    quiet: Quiet = False,
):
    """Score a tracked series: true same-spine pairs in consecutive sessions linked, false links, gained/lost.

    See spinedet.runtime.evaluate_sessions for the definitions.
    """
    from .evaluate_sessions import score_series
    from .session_reports import read_series

    s = guarded("spine-eval", lambda: score_series(read_series(gt), read_series(pred), match_iom))
    if as_json:
        typer.echo(json.dumps(s))
        return

    def ratio(value):
        return "n/a" if value is None else f"{value:.4f}"

    typer.echo(f"linking accuracy {ratio(s['linking_accuracy'])}  ({s['linked_pairs']} of {s['detected_pairs']} true "
               f"pairs in consecutive sessions whose spines were both detected; pair recall "
               f"{ratio(s['pair_recall'])} of all {s['true_pairs']})")
    typer.echo(f"links {s['links']}: correct {s['correct_links']}, false {s['false_links']}, half-matched "
               f"{s['half_matched_links']}, spurious {s['spurious_links']} "
               f"(link precision {ratio(s['link_precision'])})")
    for key in ("gained", "lost"):
        t = s[key]
        error = "n/a" if t["error"] is None else f"{100 * t['error']:.1f} %"
        typer.echo(f"{key} {t['pred']} (true {t['true']}, error {error})")


def run_main():
    run(run_app, "spine-run")


def eval_main():
    run(eval_app, "spine-eval")
