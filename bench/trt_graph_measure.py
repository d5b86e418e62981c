"""Measurements behind the tensorrt export flavour's two constants (spinedet.export.graph).

    python bench/trt_graph_measure.py [--model models/spinedet_default.onnx] [--seeds 4] [--dense-seeds 2]

For every slice (real2d-mdg val centre crops when ../shared is there, built-in synthetic slices of a few
seeds, and dense synthetic slices: 3 dendrites, 0.8 spines per µm) it runs the model's torch weights
(recovered from the ONNX file) eagerly through ExportableDetector(target="tensorrt") and records the
two NMS problems of the graph:

* RPN: all candidates (per-level top-k, decoded, clipped, small ones masked).  Greedy NMS per level
  (torchvision's batched NMS) gives the survivors; ``rank_needed`` is the position, among all candidates
  best first, of the last of the ``post_nms_top_n`` survivors the graph keeps, i.e. the fewest candidates
  the dense NMS must look at to be exact.  ``rpn_iterations`` is the fewest cluster-NMS iterations that
  reproduce greedy NMS on the best ``rpn_candidates``.
* box head: ``box_iterations``, the same for the detector's own NMS over all proposals.

Prints one line per slice and a summary; no files are written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision

from spinedet.export import graph
from spinedet.export.graph import ExportableDetector, cluster_nms
from spinedet.training.data import data_root

SHARED = data_root() / "real2d-mdg"  # $SPINEDET_DATA or ../shared/data


def iterations_to_greedy(boxes, valid, reference, threshold, groups=None, limit=64):
    """Fewest cluster-NMS iterations whose keep mask equals ``reference`` (and stays so one more)."""
    for t in range(1, limit):
        keep = cluster_nms(boxes, valid, threshold, t, groups)
        if torch.equal(keep, reference) and torch.equal(cluster_nms(boxes, valid, threshold, t + 1, groups), keep):
            return t
    return None


def greedy(boxes, scores, valid, threshold, groups=None):
    """Greedy keep mask [N] (float) of one image's candidates, already sorted best first."""
    mask = torch.zeros(len(scores))
    index = torch.nonzero(valid).flatten()
    if groups is None:
        kept = torchvision.ops.nms(boxes[index], scores[index], threshold)
    else:
        kept = torchvision.ops.batched_nms(boxes[index], scores[index], groups[index], threshold)
    mask[index[kept]] = 1
    return mask


class Recorder:
    """Wraps the detector's two NMS steps to record their inputs (batch of one)."""

    def __init__(self, detector):
        self.rpn, self.box = [], []
        rpn_nms = detector._proposals_dense_nms

        def recording_rpn(boxes, scores, offsets):
            self.rpn.append((boxes[0].clone(), scores[0].clone(), offsets[0].clone()))
            return rpn_nms(boxes, scores, offsets)

        detector._proposals_dense_nms = recording_rpn
        original = graph.cluster_nms

        def recording_nms(boxes, valid, threshold, iterations=graph.CLUSTER_NMS_ITERATIONS, groups=None):
            if groups is None:
                self.box.append((boxes[0].clone(), valid[0].clone()))
            return original(boxes, valid, threshold, iterations, groups)

        graph.cluster_nms = recording_nms


def slices_to_measure(size, channels, seeds, dense_seeds):
    from spinedet.training.parity import builtin_inputs
    from spinedet.runtime.context import neighbour_projection
    from spinedet.training.data import normalise_stack, real2d_samples
    from spinedet.training.synth import make_stack

    out = []
    for sample in real2d_samples("val", SHARED, warn=False):
        h, w = sample.image.shape
        crop = sample.image[(h - size[0]) // 2:(h + size[0]) // 2, (w - size[1]) // 2:(w + size[1]) // 2]
        out.append((f"real {sample.name}", np.repeat(crop[None], channels, axis=0)))
    for seed in range(seeds):
        for k, x in enumerate(builtin_inputs(size, channels, seed=seed)):
            out.append((f"synth seed {seed} slice {k}", x))
    for seed in range(dense_seeds):
        stack = normalise_stack(make_stack(1000 + seed, shape=(7, *size), dendrite_count=3, spines_per_um=0.8).image)
        for k in range(len(stack)):
            x = stack[k][None] if channels == 1 else np.stack([stack[k], neighbour_projection(stack, k, 1)])
            out.append((f"dense seed {seed} slice {k}", x))
    return out


def main(argv=None):
    from spinedet.training.recover import model_from_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "models/spinedet_default.onnx"))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--dense-seeds", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=None, help="RPN candidates (default: the graph's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, config = model_from_onnx(args.model)
    detector = ExportableDetector(model, config.input_size, channels=config.in_channels, target="tensorrt",
                                  rpn_candidates=args.candidates).eval()
    recorder = Recorder(detector)
    post, m = detector.post_nms_top_n, detector.rpn_candidates
    print(f"proposals {post}, RPN candidates {m} of {sum(min(detector.pre_nms_top_n, n) for n in detector.level_sizes)}"
          f", RPN IoU {detector.rpn_nms}, box IoU {detector.box_nms}")
    rows = []
    for name, x in slices_to_measure(config.input_size, config.in_channels, args.seeds, args.dense_seeds):
        recorder.rpn.clear()
        recorder.box.clear()
        with torch.inference_mode():
            detector(torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)))
        boxes, scores, offsets = recorder.rpn[0]
        top, order = scores.topk(len(scores))
        boxes, offsets = boxes[order], offsets[order]
        valid = top >= 0
        full = greedy(boxes, top, valid, detector.rpn_nms, offsets)
        survivors = torch.nonzero(full).flatten()
        rank_needed = int(survivors[post - 1]) + 1 if len(survivors) >= post else int(valid.sum())
        ref = full[:m]
        rpn_t = iterations_to_greedy(boxes[None, :m], valid[None, :m], ref[None], detector.rpn_nms, offsets[None, :m])
        exact = len(survivors) < post and int(valid.sum()) <= m or rank_needed <= m
        b_boxes, b_valid = recorder.box[0]
        b_scores = -torch.arange(len(b_valid), dtype=torch.float32)  # already sorted best first
        b_ref = greedy(b_boxes, b_scores, b_valid, detector.box_nms)
        box_t = iterations_to_greedy(b_boxes[None], b_valid[None], b_ref[None], detector.box_nms)
        rows.append((rank_needed, rpn_t, box_t, exact, int(b_ref.sum())))
        print(f"{name:28s} rpn: valid {int(valid.sum()):5d} survivors {len(survivors):5d} rank_needed {rank_needed:5d}"
              f" iterations {rpn_t} exact {exact} | box: candidates {int(b_valid.sum()):3d} kept {int(b_ref.sum()):3d}"
              f" iterations {box_t}", flush=True)
    rank, rpn_t, box_t, exact, _ = (np.array(c) for c in zip(*rows))
    print(f"\n{len(rows)} slices: rank_needed median {np.median(rank):.0f}, p95 {np.percentile(rank, 95):.0f}, "
          f"max {rank.max()} ({rank.max() / post:.2f} x proposals); "
          f"exact with {m} candidates: {exact.sum()}/{len(rows)}")
    print(f"iterations to greedy: RPN max {rpn_t.max()} (median {np.median(rpn_t):.0f}), "
          f"box head max {box_t.max()} (median {np.median(box_t):.0f})")


if __name__ == "__main__":
    main()
