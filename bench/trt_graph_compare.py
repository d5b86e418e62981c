"""Compare the two export flavours of one model on onnxruntime CPU: parity and latency.

    python bench/trt_graph_compare.py ORT_FLAVOUR.onnx TRT_FLAVOUR.onnx [--threads 2] [--batch 8] [--rounds 7]

Parity: both graphs on the same slices (built-in synthetic slices of a few seeds, and the real2d-mdg val
centre crops when ../shared is there), both outputs through the runtime's post-processing; every detection
of the onnxruntime flavour above 0.5 must find one of the tensorrt flavour with IoU >= 0.9 and
|score difference| < 1e-3 (spinedet.training.parity.compare).  Latency: one session per graph in this
process, ``--threads`` intra-op threads, the two timed alternately (one run each per round) on one batch
of ``--batch`` slices; the median per graph over ``--rounds`` rounds after a warm-up run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from spinedet.training.data import data_root
from spinedet.training.parity import builtin_inputs, compare
from spinedet.runtime.backends import OnnxRuntimeBackend
from spinedet.runtime.contract import load_card

SHARED = data_root() / "real2d-mdg"  # $SPINEDET_DATA or ../shared/data


def real_inputs(size, channels):
    """real2d-mdg val centre crops as model inputs ``(N, C, H, W)`` (each its own depth context); may be empty."""
    from spinedet.training.data import real2d_samples

    crops = []
    for sample in real2d_samples("val", SHARED, warn=False):
        h, w = sample.image.shape
        crops.append(sample.image[(h - size[0]) // 2:(h + size[0]) // 2, (w - size[1]) // 2:(w + size[1]) // 2])
    if not crops:
        return np.zeros((0, channels, *size), np.float32)
    return np.repeat(np.stack(crops)[:, None], channels, axis=1).astype(np.float32)


def outputs(backend, slices, batch):
    out = []
    for k in range(0, len(slices), batch):
        boxes, scores = backend.run(slices[k:k + batch])
        out += [(b.astype(np.float64), s.astype(np.float64)) for b, s in zip(boxes, scores)]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="onnxruntime-flavour ONNX")
    parser.add_argument("candidate", help="tensorrt-flavour ONNX of the same model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    card = load_card(args.reference)
    backends = [OnnxRuntimeBackend(p, load_card(p), "cpu", threads=args.threads)
                for p in (args.reference, args.candidate)]
    sets = {"synthetic": np.concatenate([builtin_inputs(card.input_size, card.channels, seed=s)
                                         for s in range(args.seeds)]),
            "real2d-mdg val": real_inputs(card.input_size, card.channels)}
    for name, slices in sets.items():
        if not len(slices):
            print(f"{name}: absent")
            continue
        ref, cand = (outputs(b, slices, args.batch) for b in backends)
        r = compare(ref, cand, 1e-3)
        worst = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(ref, cand))
        print(f"parity {name} ({len(slices)} slices): {r['matched']}/{r['detections']} boxes above 0.5 matched "
              f"(IoU >= 0.9, |dscore| < 1e-3), max |dscore| of matches {r['max_score_diff']:.2g}, "
              f"unmatched extra {r['unmatched_extra']}; raw outputs max |dscore| {worst:.2g}", flush=True)
    batch = sets["synthetic"][:args.batch]
    if len(batch) < args.batch:
        batch = np.resize(batch, (args.batch, *batch.shape[1:]))
    for b in backends:
        b.run(batch)  # warm-up
    times = [[], []]
    for _ in range(args.rounds):
        for k, b in enumerate(backends):
            start = time.perf_counter()
            b.run(batch)
            times[k].append(time.perf_counter() - start)
    for path, t in zip((args.reference, args.candidate), times):
        print(f"latency {Path(path).name}: median {np.median(t) * 1e3:.0f} ms per batch of {args.batch} "
              f"({args.threads} threads; rounds {', '.join(f'{x * 1e3:.0f}' for x in t)})")


if __name__ == "__main__":
    main()
