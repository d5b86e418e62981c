"""Measure an exported model the way users run it: through the runtime, on held-apart data.

``spine-validate MODEL.onnx`` reports

* F1-3D (the paper's metric) on fresh synthetic validation stacks, one
  group per microscope setting (pixel size, z-step, brightness), each run
  through :class:`~spinedet.runtime.SpineDetector` exactly as ``spine-run``
  would, and scored with :func:`~spinedet.runtime.evaluate.f1_3d`;
* per-image F1 (IoM >= 0.5) on the real2d-mdg validation images
  (``../shared/data/real2d-mdg/val``), skipped where that folder is absent;
* the CPU seconds per slice spent in inference for those runs.

Validation seeds are far from the training seeds, so no stack here was
trained on.  numpy + onnxruntime only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from spinedet.runtime.detector import SpineDetector
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.evaluate import f1_2d, f1_3d, scores_from_counts
from spinedet.runtime.stacks import read_image

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="spine-validate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="ONNX model with its card beside it")
    p.add_argument("--stacks-per-setting", type=int, default=3)
    p.add_argument("--slices", type=int, default=20)
    p.add_argument("--size", type=int, default=512, help="width = height of the synthetic stacks in pixels")
    p.add_argument("--real-root", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"
                                             / "real2d-mdg"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.json and Path(args.json).resolve() == Path(args.model).with_suffix(".json").resolve():
        print(f"spine-validate: error: {args.json}: that is the model's card; write the results elsewhere",
              file=sys.stderr)
        return 2
    try:
        detector = SpineDetector(args.model, batch=args.batch, threads=args.threads)
        start = time.perf_counter()
        results = {"model": args.model,
                   "synthetic_f1_3d": synthetic_f1_3d(detector, args.stacks_per_setting,
                                                      (args.slices, args.size, args.size)),
                   "real2d_mdg_val_f1": real2d_f1(detector, Path(args.real_root))}
        results["seconds"] = round(time.perf_counter() - start, 1)
    except SpineDetError as exc:
        print(f"spine-validate: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
