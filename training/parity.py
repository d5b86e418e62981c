"""Parity of an exported ONNX graph with the torch model it came from.

Both run on the same slices; both outputs go through the runtime's
post-processing (score threshold, area cap, IoM-NMS); then every torch
detection must find an ONNX detection of the same slice with IoU >= 0.9
(int8: 0.5) and a score within the tolerance (:data:`TOLERANCE`).  Slices: a
few built-in synthetic ones, an all-zero slice, and any the caller adds (e.g.
real validation images), run at batch sizes 1, 3 and 8.

An int8 graph is not the same function to float precision: its boxes move by
a few per cent of their size and its scores by up to ~0.1, so parity only
says it is the same detector; whether it finds spines as well is measured
with F1 (``spine-export --int8`` checks F1-3D against the float graph on
synthetic stacks; ``spine-validate`` measures it on the validation data).
"""

from __future__ import annotations

import numpy as np

from spinedet.runtime.backends import OnnxRuntimeBackend
from spinedet.runtime.boxes import iou
from spinedet.runtime.context import neighbour_projection
from spinedet.runtime.postprocess import filter_detections

from .model import predict

#: (minimal fraction of torch detections matched, maximal |score difference|, minimal IoU of a match) per
#: precision.  int8 (static QDQ, spinedet.export.quantize), measured with bench/int8_parity.py on the shipped
#: model's int8 graph (RoI sampling 1) against torch on 48 built-in slices of seeds 1-6 and 15 real2d-mdg val
#: crops, 1185 torch detections above 0.5: 98.4 % matched at IoU >= 0.5 and |dscore| < 0.1 (92.5 % at IoU >= 0.9;
#: |dscore| median 0.003, 99th percentile 0.11, worst 0.22); 90 % leaves room for other weights and calibrations.
TOLERANCE = {"fp32": (0.99, 1e-3, 0.9), "fp16": (0.95, 3e-2, 0.9), "int8": (0.90, 0.1, 0.5)}
BATCHES = (1, 3, 8)


def builtin_inputs(size, channels: int = 1, count: int = 8, seed: int = 0) -> np.ndarray:
    """``(count, C, H, W)`` model inputs: synthetic two-photon slices (or simple blobs) and one empty slice.

    With two channels the second is each slice's depth context: the maximum
    projection of it and its neighbours above and below.
    """
    try:
        from .data import normalise_stack
        from .synth import make_stack

        slices = normalise_stack(make_stack(seed, shape=(count - 1, *size)).image)
    except Exception:  # the generator is optional: blobs on a line will do
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        slices = np.zeros((count - 1, *size), np.float32)
        for k in range(count - 1):
            for x, y in rng.uniform(16, min(size) - 16, (12, 2)):
                slices[k] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0)
        slices = np.clip(slices + rng.normal(0, 0.03, slices.shape), 0, 1)
    slices = np.concatenate([slices, np.zeros((1, *size), np.float32)]).astype(np.float32)
    if channels == 1:
        return slices[:, None]
    stack = slices[:-1]
    contexts = [neighbour_projection(stack, k, 1) for k in range(len(stack))] + [slices[-1]]
    return np.stack([slices, np.stack(contexts)], axis=1)


def compare(reference, candidate, score_tolerance: float, score_threshold: float = 0.5, min_iou: float = 0.9):
    """Counts of post-processed reference detections matched by the candidate (IoU >= ``min_iou``, close score).

    Reference detections above ``score_threshold`` count; a candidate detection within ``score_tolerance``
    below it may match one (a box the reference scores 0.51 and the candidate 0.49 agrees); ``unmatched_extra``
    counts the candidate's detections above ``score_threshold`` that matched nothing.
    """
    total = matched = 0
    worst = 0.0
    extra = 0
    for (rb, rs), (cb, cs) in zip(reference, candidate):
        rb, rs = filter_detections(rb, rs, score_threshold)
        cb, cs = filter_detections(cb, cs, max(0.0, score_threshold - score_tolerance))
        total += len(rb)
        overlap = iou(rb, cb)
        used = np.zeros(len(cb), dtype=bool)
        for i in range(len(rb)):
            candidates = np.flatnonzero((overlap[i] >= min_iou) & ~used)
            if len(candidates):
                j = candidates[np.argmax(overlap[i, candidates])]
                diff = abs(rs[i] - cs[j])
                worst = max(worst, diff)
                if diff < score_tolerance:
                    matched += 1
                    used[j] = True
        extra += int((~used & (cs > score_threshold)).sum())
    return {"detections": total, "matched": matched, "unmatched_extra": extra, "max_score_diff": worst}


def parity_report(model, onnx_path, card, extra_slices=None, batches=BATCHES, seed: int = 0) -> dict:
    """Compare ``model`` (torch, eval) with ``onnx_path`` on built-in (+ extra) slices at several batch sizes.

    extra_slices: ``(M, H, W)`` normalised slices (lone images: their own depth context).
    seed: of the built-in slices (an int8 graph is checked on others than it was calibrated on).
    """
    fraction, score_tolerance, min_iou = TOLERANCE[card.precision]
    slices = builtin_inputs(card.input_size, card.channels, seed=seed)
    empty = len(slices) - 1  # the built-in set ends with an all-zero slice
    if extra_slices is not None and len(extra_slices):
        extra = np.asarray(extra_slices, np.float32)[:, None]
        slices = np.concatenate([slices, np.repeat(extra, card.channels, axis=1)])
    reference = predict(model, slices)
    backend = OnnxRuntimeBackend(onnx_path, card, "cpu")
    results = {}
    ok = True
    for b in batches:
        candidate = []
        for k in range(0, len(slices), b):
            boxes, scores = backend.run(slices[k:k + b])
            candidate += [(bx.astype(np.float64), sc.astype(np.float64)) for bx, sc in zip(boxes, scores)]
        r = compare(reference, candidate, score_tolerance, min_iou=min_iou)
        r["fraction"] = r["matched"] / r["detections"] if r["detections"] else 1.0
        r["empty_slice_detections"] = int(np.sum(candidate[empty][1] > 0.5))
        ok &= r["fraction"] >= fraction
        results[f"batch_{b}"] = r
    worst = min(r["fraction"] for r in results.values())
    total = max(r["detections"] for r in results.values())
    summary = (f"{worst:.1%} of {total} torch detections matched (IoU >= {min_iou}, |dscore| < {score_tolerance}) at "
               f"batches {', '.join(map(str, batches))}; need {fraction:.0%}")
    return {"ok": bool(ok), "summary": summary, "precision": card.precision, "slices": int(len(slices)),
            **results}
