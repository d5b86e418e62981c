"""Build a TensorRT (or TensorRT-RTX) engine from an exported ONNX graph and report time, memory and size.

    python bench/trt_build.py MODEL.onnx [--batches 1 8 16] [--out MODEL.engine]

Standalone (no spinedet import): runs in any environment with ``tensorrt_rtx`` or ``tensorrt``.
TensorRT-RTX builds on a machine without a GPU (it cannot run the engine there), which makes this a CPU
check that a graph parses and builds: a strongly typed network (the precision is the ONNX file's), one
optimisation profile on the input ``images`` for the given batch sizes (min, opt, max), no other flags.
Prints the parser's errors and the build result; exit status 1 when it does not build.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def load_tensorrt():
    try:
        import tensorrt_rtx as trt
    except ImportError:
        import tensorrt as trt
    return trt


def build(path, batches=(1, 8, 16), input_name="images"):
    """``(serialised engine or None, parser errors, build seconds)`` for the ONNX file at ``path``."""
    trt = load_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        return None, [str(parser.get_error(i)) for i in range(parser.num_errors)], 0.0
    shape = tuple(network.get_input(0).shape)[1:]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *[(b, *shape) for b in batches])
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    return engine, [], time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batches", type=int, nargs=3, default=[1, 8, 16], metavar=("MIN", "OPT", "MAX"))
    parser.add_argument("--out", default=None, help="write the engine here")
    args = parser.parse_args(argv)
    trt = load_tensorrt()
    engine, errors, seconds = build(args.model, tuple(args.batches))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{trt.__name__} {trt.__version__}: {args.model}")
    for e in errors:
        print(f"  parser error: {e}")
    if engine is None:
        print(f"  no engine (build {seconds:.1f} s, peak RSS {peak_mb:.0f} MB)")
        return 1
    if args.out:
        with open(args.out, "wb") as f:
            f.write(engine)
    print(f"  built in {seconds:.1f} s, peak RSS {peak_mb:.0f} MB, engine {engine.nbytes / 1e6:.1f} MB "
          f"(profile batch {'/'.join(map(str, args.batches))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
