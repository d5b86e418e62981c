"""How far an int8 graph is from the torch model it came from: the measurement behind ``TOLERANCE["int8"]``.

    python bench/int8_parity.py INT8.onnx --source models/spinedet_default.onnx [--seeds 1 2 3 4 5 6]

The torch model is the source's weights (a checkpoint, or an exported model whose
weights are recovered) with the int8 card's proposals and RoI sampling. Slices:
built-in synthetic ones of the given seeds (seed 0 is what the built-in
calibration uses) and, where the real data is, the real2d-mdg val centre crops
(their own depth context). Prints one JSON object: for every (IoU, score
tolerance) pair, the fraction of torch detections above 0.5 the int8 graph
matches (``spinedet.training.parity.compare``), and the |score difference|
quantiles of the IoU >= 0.5 matches.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from spinedet.runtime.backends import OnnxRuntimeBackend
from spinedet.runtime.contract import load_card
from spinedet.training.data import data_root, real2d_samples
from spinedet.training.model import predict
from spinedet.training.parity import builtin_inputs, compare


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the int8 graph (card beside it)")
    p.add_argument("--source", required=True, help="the float model it was made from (.pt or exported .onnx)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from spinedet.training.checkpoints import load_model

    card = load_card(args.model)
    model, _ = load_model(args.source)
    model.rpn._post_nms_top_n["testing"] = int(card.export.get("proposals_per_slice", 300))
    model.roi_heads.box_roi_pool.sampling_ratio = int(card.export.get("roi_sampling_ratio", 2))
    slices = np.concatenate([builtin_inputs(card.input_size, card.channels, seed=s) for s in args.seeds])
    real = real2d_samples("val", data_root() / "real2d-mdg", warn=False)
    if real:
        slices = np.concatenate([slices, np.stack([s.model_input(card.channels)[:, :card.input_size[0],
                                                                                  :card.input_size[1]]
                                                   for s in real])]).astype(np.float32)
    reference = predict(model.eval(), slices)
    backend = OnnxRuntimeBackend(args.model, card, "cpu", args.threads)
    candidate = []
    for k in range(0, len(slices), 8):
        boxes, scores = backend.run(slices[k:k + 8])
        candidate += [(b.astype(np.float64), s.astype(np.float64)) for b, s in zip(boxes, scores)]
    table = {}
    for min_iou in (0.5, 0.7, 0.9):
        for tolerance in (0.03, 0.05, 0.1, 1.0):
            r = compare(reference, candidate, tolerance, min_iou=min_iou)
            table[f"iou>={min_iou} |dscore|<{tolerance}"] = round(r["matched"] / max(r["detections"], 1), 4)
    loose = compare(reference, candidate, 1.0, min_iou=0.5)
    diffs = _score_differences(reference, candidate)
    print(json.dumps({"model": args.model, "slices": int(len(slices)), "real_crops": len(real),
                      "torch_detections_above_0.5": loose["detections"], "matched_fraction": table,
                      "abs_score_difference_quantiles": {q: round(float(np.quantile(diffs, float(q))), 4)
                                                         for q in ("0.5", "0.9", "0.99", "1.0")}}, indent=1))
    return 0


def _score_differences(reference, candidate):
    from spinedet.runtime.boxes import iou
    from spinedet.runtime.postprocess import filter_detections

    out = []
    for (rb, rs), (cb, cs) in zip(reference, candidate):
        rb, rs = filter_detections(rb, rs, 0.5)
        cb, cs = filter_detections(cb, cs, 0.0)
        if len(rb) and len(cb):
            overlap = iou(rb, cb)
            for i in range(len(rb)):
                j = int(np.argmax(overlap[i]))
                if overlap[i, j] >= 0.5:
                    out.append(abs(rs[i] - cs[j]))
    return np.array(out)


if __name__ == "__main__":
    sys.exit(main())
