"""spine-run from file to written CSVs: slices per second, the split by stage, and peak memory.

Each run is a fresh process (``run_measured``), so peak RSS is the run's own.
30, 60 and 200 slices show whether the cost per slice stays flat.  A
2048x2048x40 uint16 stack exercises the tiling path.
"""

import numpy as np
import pytest
import tifffile

from conftest import run_measured

STAGES = ("read", "infer", "postprocess", "track")


@pytest.mark.parametrize("slices", (30, 60, 200))
def test_spine_run_synthetic_stack(benchmark, synthetic_stacks, onnx_model, threads, tmp_path, slices):
    model = onnx_model
    results = []

    def run():
        out = tmp_path / f"out{len(results)}"
        results.append(run_measured([synthetic_stacks[slices], "--model", model, "--out", out, "--quiet",
                                     "--threads", threads]))

    benchmark.group = "end to end"
    benchmark.name = f"spine-run {slices} slices 512x512"
    benchmark.pedantic(run, rounds=3 if slices < 200 else 1, iterations=1)
    wall, peak, (summary,) = results[-1]
    benchmark.extra_info.update({
        "slices": slices, "threads": threads, "model": str(model), "peak_rss_mb": round(peak, 1),
        "stage_seconds": summary["seconds"], "spines": summary["n_spines"],
        "seconds_per_slice": [round(r[0] / slices, 4) for r in results]})


def test_spine_run_large_tiled_stack(benchmark, onnx_model, threads, tmp_path):
    path = tmp_path / "large.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, shape=(40, 2048, 2048), dtype=np.uint16, imagej=True,
                     resolution=(10, 10), metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"})
    data = tifffile.memmap(path)
    for z in range(40):
        data[z] = rng.integers(100, 300, (2048, 2048), dtype=np.uint16)
    data.flush()
    del data
    results = []

    def run():
        results.append(run_measured([path, "--model", onnx_model, "--out", tmp_path / "out", "--quiet",
                                     "--threads", threads]))

    benchmark.group = "end to end"
    benchmark.name = "spine-run 40 slices 2048x2048 uint16 (tiled)"
    benchmark.pedantic(run, rounds=1, iterations=1)
    wall, peak, (summary,) = results[-1]
    benchmark.extra_info.update({"slices": 40, "threads": threads, "peak_rss_mb": round(peak, 1),
                                 "stack_mb": round(40 * 2048 * 2048 * 2 / 2 ** 20), "stage_seconds":
                                 summary["seconds"]})
