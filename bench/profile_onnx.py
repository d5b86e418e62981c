"""Profile an ONNX model with onnxruntime's profiler; print time per node type.

    python bench/profile_onnx.py MODEL.onnx [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime


def profile(model, batch=8, threads=2, runs=3):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = [batch] + [int(d) for d in session.get_inputs()[0].shape[1:]]
    data = np.random.default_rng(0).random(shape, dtype=np.float32) ** 4
    for _ in range(runs):
        session.run(None, {name: data})
    events = json.load(open(session.end_profiling()))
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e6 / runs
    return per_op


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    per_op = profile(args.model, args.batch, args.threads)
    total = sum(per_op.values())
    print(f"| node type | s per batch of {args.batch} | share |")
    print("|---|---|---|")
    for op, seconds in per_op.most_common(8):
        print(f"| {op} | {seconds:.3f} | {seconds / total:.0%} |")


if __name__ == "__main__":
    main()
