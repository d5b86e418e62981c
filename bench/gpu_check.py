"""GPU check, ready to run on a machine with an NVIDIA GPU (run by ``bench/gpu_check.sh``; never by CI).

Installs nothing and downloads nothing.  On the slices it makes (synthetic,
plus real2d-mdg val images where ``../shared/data`` exists) it

1. runs the shipped model on onnxruntime's CPU provider: the reference;
2. runs it on onnxruntime's CUDA provider, if this onnxruntime has one
   (``onnxruntime-gpu``): parity with the reference and per-slice latency;
3. builds (or loads) the TensorRT engine of the shipped tensorrt flavour
   for this GPU (``--device trt``'s path: TensorRT for RTX if installed,
   else standard TensorRT), times the build and the first run (JIT), checks
   parity with the reference and measures per-slice latency;

at batches 1, 8 and 16 (median of ``--rounds`` timed rounds after a warm-up).
Prints one JSON object; each part that cannot run says why instead of failing
the rest.  Parity: boxes above 0.5 matched at IoU >= 0.9 with
|dscore| < 0.03 (fp16), as ``spine-export`` checks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from spinedet.runtime.backends import OnnxRuntimeBackend, TensorRTBackend
from spinedet.runtime.contract import load_card
from spinedet.runtime.detector import default_model_path
from spinedet.runtime.errors import SpineDetError

BATCHES = (1, 8, 16)


def slices(card, count: int) -> np.ndarray:
    from spinedet.training.parity import builtin_inputs

    made = builtin_inputs(card.input_size, card.channels, count=count, seed=11)
    from spinedet.training.data import data_root

    real = data_root() / "real2d-mdg"
    if real.is_dir():
        from spinedet.training.data import real2d_samples

        images = [s.model_input(card.channels) for s in real2d_samples("val", real, warn=False)]
        made = np.concatenate([made, np.stack(images)])
    return made.astype(np.float32)


def outputs(backend, data: np.ndarray, batch: int = 8) -> list:
    boxes, scores = [], []
    for k in range(0, len(data), batch):
        b, s = backend.run(data[k:k + batch])
        boxes += list(b)
        scores += list(s)
    return [(b.astype(np.float64), s.astype(np.float64)) for b, s in zip(boxes, scores)]


def latency(backend, data: np.ndarray, rounds: int) -> dict:
    """Median seconds per slice at each batch size, after one warm-up call per size."""
    result = {}
    for b in BATCHES:
        batch = np.ascontiguousarray(np.resize(data, (b, *data.shape[1:])))
        backend.run(batch)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            backend.run(batch)
            times.append(time.perf_counter() - start)
        result[f"batch_{b}"] = round(statistics.median(times) / b, 5)
    return result


def parity(reference, candidate) -> dict:
    from spinedet.training.parity import compare

    r = compare(reference, candidate, 0.03)
    r["fraction"] = r["matched"] / r["detections"] if r["detections"] else 1.0
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--slices", type=int, default=16, help="built-in synthetic slices (real ones are added)")
    p.add_argument("--cache-dir", default=None, help="engine cache (default: ~/.cache/spinedet/engines)")
    p.add_argument("--cpu-latency", action="store_true", help="also time the CPU reference (slow)")
    args = p.parse_args(argv)
    report = {"python": sys.version.split()[0]}
    model = default_model_path("cuda")  # the fp16 onnxruntime flavour (the CPU's default may be the int8 model)
    card = load_card(model)
    data = slices(card, args.slices)
    report["slices"] = int(len(data))
    cpu = OnnxRuntimeBackend(model, card, "cpu")
    reference = outputs(cpu, data)
    report["reference_detections_above_0.5"] = int(sum((s > 0.5).sum() for _, s in reference))
    if args.cpu_latency:
        report["onnxruntime_cpu_s_per_slice"] = latency(cpu, data, max(2, args.rounds // 3))

    try:  # 2. onnxruntime CUDA
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
        cuda = OnnxRuntimeBackend(model, card, "cuda")
        report["onnxruntime_cuda"] = {"parity": parity(reference, outputs(cuda, data)),
                                      "s_per_slice": latency(cuda, data, args.rounds)}
    except SpineDetError as exc:
        report["onnxruntime_cuda"] = {"skipped": str(exc)}

    try:  # 3. the TensorRT engine of the tensorrt flavour
        trt_model = default_model_path("trt")
        trt_card = load_card(trt_model)
        start = time.perf_counter()
        engine = TensorRTBackend(trt_model, trt_card, batch_max=max(BATCHES), cache_dir=args.cache_dir)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        engine.run(data[:1])
        first = time.perf_counter() - start
        report["tensorrt"] = {"module": engine.key.module, "version": engine.key.version, "gpu": list(engine.gpu),
                              "engine": str(engine.engine_path), "targets": engine.key.targets,
                              "built_now": engine.built, "seconds_to_load_or_build": round(loaded, 2),
                              "seconds_first_run": round(first, 2),
                              "parity": parity(reference, outputs(engine, data)),
                              "s_per_slice": latency(engine, data, args.rounds)}
        engine.close()
    except SpineDetError as exc:
        report["tensorrt"] = {"skipped": str(exc)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
