"""Measure an exported model the way users run it: through the runtime, on held-apart data.

``spine-validate MODEL.onnx`` reports

* F1-3D (the paper's metric) on fresh synthetic validation stacks, one
  group per microscope setting (pixel size, z-step, brightness), each run
  through :class:`~spinedet.runtime.SpineDetector` exactly as ``spine-run``
  would, and scored with :func:`~spinedet.runtime.evaluate.f1_3d`;
* per-image F1 (IoM >= 0.5) on the real2d-mdg validation images
  (``real2d-mdg/val`` under :func:`~spinedet.training.data.data_root`:
  ``$SPINEDET_DATA`` or ``../shared/data``), skipped where they are absent;
* the CPU seconds per slice spent in inference for those runs.

Validation seeds are far from the training seeds, so no stack here was
trained on.  ``--calibrate`` first chooses the model's score threshold (its
operating point) on other synthetic stacks (:data:`CALIBRATION_SEED`) and
real2d-mdg val, validates with it and, once validation has succeeded,
writes it into the model card (the only file this command ever writes).
numpy + onnxruntime only.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from spinedet.runtime.cliutil import (Batch, Device, DeviceName, Json, NoShaftCheck, Quiet, Threads, guarded, make_app,
                                      note, run, say, shaft_distance_um)
from spinedet.runtime.contract import ModelCard, card_path
from spinedet.runtime.detector import SpineDetector
from spinedet.runtime.evaluate import f1_2d, f1_3d, scores_from_counts
from spinedet.runtime.postprocess import LINK_THRESHOLD, SCORE_THRESHOLD, above
from spinedet.runtime.stacks import read_image
from spinedet.runtime.tracking import track_confirmed

from .data import REAL2D_MDG, data_root
from .synth import make_stack

#: name -> generator overrides: the microscope settings the card reports separately
SETTINGS = {
    "paper-like 0.1 um, 0.5 um steps": {"pixel_size_um": 0.1, "z_step_um": 0.5},
    "fine 0.07 um, 0.3 um steps": {"pixel_size_um": 0.07, "z_step_um": 0.3},
    "coarse 0.15 um, 1.0 um steps": {"pixel_size_um": 0.15, "z_step_um": 1.0},
    "dim (15-40 photons)": {"pixel_size_um": 0.1, "z_step_um": 0.5, "signal_photons": (15.0, 40.0)},
    "bright (200-500 photons)": {"pixel_size_um": 0.1, "z_step_um": 0.5, "signal_photons": (200.0, 500.0)},
}
VALIDATION_SEED = 9_000_000  # training uses small seeds; these stacks are never trained on
CALIBRATION_SEED = 8_000_000  # --calibrate chooses the score threshold on these, never on the validation stacks
#: score thresholds --calibrate tries (0.5, the first, is the paper's)
THRESHOLDS = tuple(round(SCORE_THRESHOLD + 0.05 * k, 2) for k in range(10))


def _summed(scores: list[dict]) -> dict:
    """Precision, recall and F1 of TP/FP/FN summed over several stacks."""
    return scores_from_counts(*(sum(s[k] for s in scores) for k in ("tp", "fp", "fn")))


def synthetic_f1_3d(detector: SpineDetector, stacks_per_setting: int = 3, shape=(20, 512, 512)) -> dict:
    """F1-3D per microscope setting and over all of them (TP/FP/FN summed over stacks)."""
    out, everything, seconds, slices = {}, [], 0.0, 0
    for k, (name, overrides) in enumerate(SETTINGS.items()):
        scores = []
        for j in range(stacks_per_setting):
            stack = make_stack(VALIDATION_SEED + 100 * k + j, shape=shape, **overrides)
            result = detector.detect(stack.image, voxel_size=stack.voxel_size)
            scores.append(f1_3d(result.table, stack.table))
            seconds += result.timings.get("infer", 0.0)
            slices += len(stack.image)
        out[name] = _summed(scores)
        everything += scores
    out["all settings"] = _summed(everything)
    out["inference_seconds_per_slice"] = seconds / max(slices, 1)
    return out


#: seeds of the stacks ``spine-export --int8`` checks F1-3D on (neither training, calibration nor validation seeds)
F1_CHECK_SEED = 7_500_000
#: the int8 graph's F1-3D on those stacks may be at most this much below the float graph's (5 stacks of 10 slices
#: hold ~100 spines, one spine is ~0.01: a guard against a broken quantisation, not a measurement; the measurement
#: is spine-validate's)
F1_CHECK_TOLERANCE = 0.03


def f1_check(reference_model, candidate_model, slices: int = 10, seed: int = F1_CHECK_SEED, threads=None) -> dict:
    """F1-3D of two models through the runtime on one small synthetic stack per setting, and whether the
    candidate is within :data:`F1_CHECK_TOLERANCE` of the reference (each model at its card's thresholds).

    Stacks are made at the reference's input size (``slices`` deep); returns
    ``{"reference": scores, "candidate": scores, "ok": bool, "summary": str, ...}``.
    """
    reference = SpineDetector(reference_model, threads=threads)
    candidate = SpineDetector(candidate_model, threads=threads)
    shape = (int(slices), *reference.card.input_size)
    found = {"reference": [], "candidate": []}
    for k, overrides in enumerate(SETTINGS.values()):
        stack = make_stack(seed + 100 * k, shape=shape, **overrides)
        for name, detector in (("reference", reference), ("candidate", candidate)):
            found[name].append(f1_3d(detector.detect(stack.image, voxel_size=stack.voxel_size).table, stack.table))
    reference.close()
    candidate.close()
    ref, cand = _summed(found["reference"]), _summed(found["candidate"])
    ok = cand["f1"] >= ref["f1"] - F1_CHECK_TOLERANCE
    summary = (f"F1-3D {cand['f1']:.3f} against the float graph's {ref['f1']:.3f} on {len(SETTINGS)} synthetic stacks "
               f"of {shape[0]} slices (seeds from {seed}); need at most {F1_CHECK_TOLERANCE} less")
    return {"ok": bool(ok), "summary": summary, "reference": ref, "candidate": cand, "seed": seed,
            "stacks": len(SETTINGS), "shape": list(shape), "tolerance": F1_CHECK_TOLERANCE}


def real2d_f1(detector: SpineDetector, root: Path) -> dict | None:
    """Per-image F1 on real2d-mdg val (images read as the runtime reads them, pixel size unknown)."""
    from .labels import load_real2d_mdg

    if not (root / "labels.csv").is_file():
        return None
    images = load_real2d_mdg(root, "val")
    predictions, truths = [], []
    for item in images:
        image = read_image(item.path)
        result = detector.detect(image)
        predictions.append(result.table.boxes)
        truths.append(item.boxes)
    return {**f1_2d(predictions, truths), "images": len(images)}


def threshold_sweep(detector: SpineDetector, stacks_per_setting: int, shape, real_root: Path | None,
                    thresholds=THRESHOLDS, seed: int = CALIBRATION_SEED,
                    link_threshold: float = LINK_THRESHOLD) -> list[dict]:
    """F1 at each score threshold (>= the detector's own): synthetic F1-3D over all settings, real2d-mdg val F1.

    Stacks are tracked with boxes above ``link_threshold`` (which must not be
    below the detector's link threshold).  Runs the model once per stack or
    image at the detector's thresholds and raises them afterwards.  Returns
    one ``{threshold, synthetic, real, score}`` per threshold, ``score``
    being the mean of the F1s there are.
    """
    thresholds = [t for t in thresholds if t >= detector.score_threshold]
    synthetic = {t: [] for t in thresholds}
    for k, overrides in enumerate(SETTINGS.values()):
        for j in range(stacks_per_setting):
            stack = make_stack(seed + 100 * k + j, shape=shape, **overrides)
            found = detector.slice_detections(stack.image, stack.voxel_size)
            for t in thresholds:
                synthetic[t].append(f1_3d(track_confirmed(found, t, link_threshold, detector.link_iom, detector.max_misses), stack.table))
    real = {t: None for t in thresholds}
    if real_root is not None and (real_root / "labels.csv").is_file():
        from .labels import load_real2d_mdg

        images = load_real2d_mdg(real_root, "val")
        found = [detector.slice_detections(read_image(item.path))[0] for item in images]
        for t in thresholds:
            real[t] = f1_2d([boxes for boxes, _ in above(found, t)], [item.boxes for item in images])
    out = []
    for t in thresholds:
        row = {"threshold": t, "synthetic": _summed(synthetic[t]), "real": real[t]}
        f1s = [row["synthetic"]["f1"]] + ([real[t]["f1"]] if real[t] is not None else [])
        row["score"] = float(np.mean(f1s))
        out.append(row)
    return out


def choose_threshold(model, stacks_per_setting: int = 2, shape=(20, 512, 512), real_root: Path | None = None,
                     threads: int | None = None, batch: int = 8, device: str = "cpu",
                     shaft_distance_um: float | None = None) -> tuple[dict, ModelCard]:
    """Choose the model's score threshold on calibration data; return the record and the card that holds it.

    Tracks are built from boxes above :data:`LINK_THRESHOLD` (the paper's
    0.5), which the card records as its ``link_threshold``; the score
    threshold a track's best box must pass is chosen: the one with the best mean of synthetic F1-3D (stacks from
    :data:`CALIBRATION_SEED`, never the validation stacks) and real2d-mdg
    val F1 wins; ties go to the lower threshold.  The card returned is the
    model's with ``score_threshold``, ``link_threshold`` and the sweep under
    ``metrics["score_threshold_calibration"]``; nothing is written.
    shaft_distance_um: as for :class:`SpineDetector` (None: the card's).
    """
    from spinedet.runtime.contract import load_card

    detector = SpineDetector(model, device=device, batch=batch, threads=threads, score_threshold=min(THRESHOLDS),
                             link_threshold=LINK_THRESHOLD, shaft_distance_um=shaft_distance_um)
    sweep = threshold_sweep(detector, stacks_per_setting, shape, real_root)
    best = max(sweep, key=lambda row: (round(row["score"], 4), -row["threshold"]))
    record = {"chosen": best["threshold"], "link_threshold": LINK_THRESHOLD, "seed": CALIBRATION_SEED,
              "stacks_per_setting": stacks_per_setting,
              "shape": list(shape), "real2d_mdg_val": best["real"] is not None,
              "sweep": [{"threshold": r["threshold"], "synthetic_f1_3d": round(r["synthetic"]["f1"], 4),
                         "real2d_mdg_val_f1": None if r["real"] is None else round(r["real"]["f1"], 4)}
                        for r in sweep]}
    card = load_card(model)
    card = replace(card, score_threshold=best["threshold"], link_threshold=LINK_THRESHOLD,
                   metrics={**card.metrics, "score_threshold_calibration": record})
    return record, card


def write_card(model, card: ModelCard) -> None:
    """Replace the model's card with ``card``, atomically (:func:`~spinedet.runtime.files.write_all`)."""
    from spinedet.runtime.files import write_all

    write_all({card_path(model): card.to_json() + "\n"})


def calibrate(model, stacks_per_setting: int = 2, shape=(20, 512, 512), real_root: Path | None = None,
              threads: int | None = None, batch: int = 8, device: str = "cpu") -> dict:
    """Choose the model's score threshold (:func:`choose_threshold`) and write it into its card; return the record."""
    record, card = choose_threshold(model, stacks_per_setting, shape, real_root, threads, batch, device)
    write_card(model, card)
    return record


# --------------------------------------------------------------------------- command line

TOOL = "spine-validate"
app = make_app()


@app.command()
def spine_validate(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX model with its card (.json) beside it.")],
    stacks_per_setting: Annotated[int, typer.Option(min=1, help="Synthetic stacks per microscope setting.")] = 3,
    slices: Annotated[int, typer.Option(min=1, help="Slices per synthetic stack.")] = 20,
    size: Annotated[int, typer.Option(min=1, help="Width = height of the synthetic stacks in pixels.")] = 512,
    real_root: Annotated[Optional[Path], typer.Option(
        help=f"{REAL2D_MDG} folder, its val split is scored where it has labels.csv (default: "
             f"$SPINEDET_DATA/{REAL2D_MDG}, else ../shared/data/{REAL2D_MDG}).")] = None,
    calibrate_first: Annotated[bool, typer.Option(
        "--calibrate", help="First choose the model's score threshold on separate calibration stacks (and "
                            f"{REAL2D_MDG} val); validate with it, then write it into the model card.")] = False,
    no_shaft_check: NoShaftCheck = False,
    device: Device = DeviceName.cpu,
    batch: Batch = 8,
    threads: Threads = None,
    as_json: Json = False,
    quiet: Quiet = False,
):
    """Measure an exported model through the runtime: F1-3D on fresh synthetic stacks per microscope setting, and
    the per-image F1 on real2d-mdg val.

    Writes nothing, except the model card with --calibrate (and only once everything succeeded).
    """
    root = real_root if real_root is not None else data_root() / REAL2D_MDG
    shape = (slices, size, size)

    def main():
        start = time.perf_counter()
        calibration = card = None
        shaft = shaft_distance_um(None, no_shaft_check)  # None: the card's
        detector = SpineDetector(model, device=device.value, batch=batch, threads=threads,
                                 shaft_distance_um=shaft)  # a bad model fails first
        if not (root / "labels.csv").is_file():
            note(TOOL, f"{root}: no labels.csv, {REAL2D_MDG} val is skipped", quiet)
        if calibrate_first:
            say(f"{TOOL}: calibrating the score threshold ({stacks_per_setting} stacks per setting)", quiet)
            calibration, card = choose_threshold(model, stacks_per_setting, shape,
                                                 root if root.is_dir() else None, threads, batch, device.value,
                                                 shaft)
            # the card's thresholds, as the runtime will read them once the card is written
            detector = SpineDetector(model, device=device.value, batch=batch, threads=threads,
                                     score_threshold=card.score_threshold, link_threshold=card.link_threshold,
                                     shaft_distance_um=shaft)
        say(f"{TOOL}: validating at score threshold {detector.score_threshold:g}", quiet)
        results = {"model": str(model), "score_threshold": detector.score_threshold,
                   "link_threshold": detector.link_threshold, "shaft_distance_um": detector.shaft_distance_um,
                   "calibration": calibration,
                   "synthetic_f1_3d": synthetic_f1_3d(detector, stacks_per_setting, shape),
                   "real2d_mdg_val_f1": real2d_f1(detector, root)}
        results["seconds"] = round(time.perf_counter() - start, 1)
        if card is not None:  # validation succeeded: only now may the card change
            write_card(model, card)
            note(TOOL, f"score threshold {card.score_threshold:g} written into {card_path(model)}", quiet)
        return results

    results = guarded(TOOL, main, interrupted="interrupted; the model card was not changed")
    if as_json:
        typer.echo(json.dumps(results))
    else:
        typer.echo(summary(results))


def summary(results: dict) -> str:
    """The readable report of :func:`spine_validate`'s results."""
    def scores(s: dict) -> str:
        return (f"F1 {s['f1']:.4f}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  "
                f"(TP {s['tp']}, FP {s['fp']}, FN {s['fn']})")

    synthetic = results["synthetic_f1_3d"]
    width = max(len(name) for name in [*SETTINGS, "all settings"])
    lines = [f"{results['model']}: score threshold {results['score_threshold']:g}, "
             f"link threshold {results['link_threshold']:g}"
             + (" (calibrated)" if results.get("calibration") else "")
             + (f", shaft check {results['shaft_distance_um']:g} µm" if results.get("shaft_distance_um") is not None
                else "")]
    lines += [f"F1-3D  {name:<{width}}  {scores(synthetic[name])}" for name in [*SETTINGS, "all settings"]]
    real = results["real2d_mdg_val_f1"]
    lines.append(f"{REAL2D_MDG} val ({real['images']} images)  {scores(real)}" if real is not None
                 else f"{REAL2D_MDG} val: skipped (no labels)")
    lines.append(f"inference {synthetic['inference_seconds_per_slice'] * 1000:.1f} ms per slice; "
                 f"{results['seconds']:.1f} s in all")
    return "\n".join(lines)


def main() -> None:
    """``spine-validate`` (exits; see :mod:`spinedet.runtime.cliutil` for the exit codes)."""
    run(app, TOOL)


if __name__ == "__main__":
    main()
