"""The int8 model against the shipped fp16 model and torch eager, interleaved in one run, with ratios.

Two benchmarks (pytest-benchmark records one timing per test; the per-model
medians and their ratios are in ``extra_info``):

* latency per slice at batch 8, 512 x 512: int8 (onnxruntime CPU), shipped
  fp16 (onnxruntime CPU) and torch eager (same weights as the fp16 model, in
  its own process, see test_latency.TorchWorker), the three timed one after
  the other within every round, in an order that alternates between rounds, so
  that other load on the machine hits all of them alike;
* spine-run end to end on a 60-slice 512 x 512 stack, a fresh process per run
  (peak RSS from VmHWM), int8 and fp16 alternating.

    pytest bench/test_int8_bench.py --benchmark-only --threads 2 [--int8 M_int8.onnx] [--rounds 8] \
        [--onnx OTHER.onnx ...]   # further models timed in the same rounds
"""

import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_measured
from spinedet.runtime.backends import OnnxRuntimeBackend
from spinedet.runtime.contract import load_card
from spinedet.runtime.detector import DEFAULT_INT8_MODEL_NAME, shipped_model_path
from test_latency import PAPER_SECONDS_PER_SLICE, TorchWorker, slices

BATCH = 8


@pytest.fixture(scope="module")
def int8_model(request):
    path = Path(request.config.getoption("--int8") or shipped_model_path(DEFAULT_INT8_MODEL_NAME))
    if not path.is_file():
        pytest.skip(f"no int8 model at {path}: make one with spine-export MODEL --int8, pass --int8")
    return path


def _orders(names, rounds):
    return [names if r % 2 == 0 else names[::-1] for r in range(rounds)]


def test_int8_fp16_torch_latency_interleaved(benchmark, int8_model, threads, request):
    rounds = request.config.getoption("--rounds")
    fp16 = shipped_model_path()
    card = load_card(fp16)
    data = slices(BATCH, card.input_size, card.channels)
    backends = {"int8": OnnxRuntimeBackend(int8_model, load_card(int8_model), "cpu", threads),
                "fp16": OnnxRuntimeBackend(fp16, card, "cpu", threads)}
    for extra in request.config.getoption("--onnx"):  # further models to time in the same rounds, by file name
        backends[Path(extra).name] = OnnxRuntimeBackend(extra, load_card(extra), "cpu", threads)
    steps = {name: (lambda b=b: b.run(data)) for name, b in backends.items()}
    worker = None
    try:
        torch_source = request.config.getoption("--checkpoint") or str(fp16)
        worker = TorchWorker(torch_source, BATCH, threads)
        steps["torch eager"] = worker.step
    except Exception:  # no torch here: the two ONNX models alone
        pass
    for step in steps.values():
        step()  # warm-up
    times = {name: [] for name in steps}
    order = iter(_orders(list(steps), rounds))

    def one_round():
        for name in next(order):
            start = time.perf_counter()
            steps[name]()
            times[name].append((time.perf_counter() - start) / BATCH)

    try:
        benchmark.group = "int8 vs fp16 vs torch, batch 8"
        benchmark.name = f"one interleaved round ({', '.join(steps)})"
        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    finally:
        if worker is not None:
            worker.close()
    median = {name: float(np.median(v)) for name, v in times.items()}
    benchmark.extra_info.update({
        "threads": threads, "batch": BATCH, "rounds": rounds, "int8_model": str(int8_model), "fp16_model": str(fp16),
        "s_per_slice_median": {k: round(v, 4) for k, v in median.items()},
        "over_fp16": {k: round(v / median["fp16"], 3) for k, v in median.items()},
        "s_per_slice_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "int8_over_fp16": round(median["int8"] / median["fp16"], 3),
        "int8_over_torch": round(median["int8"] / median["torch eager"], 3) if "torch eager" in median else None,
        "int8_over_paper_gpu": round(median["int8"] / PAPER_SECONDS_PER_SLICE, 3)})


@pytest.fixture(scope="module")
def stack60(tmp_path_factory):
    """The 60-slice stack of test_end_to_end (same seed and settings), written as TIFF."""
    from spinedet.training.synth import make_stack, write_stack

    folder = tmp_path_factory.mktemp("stack60")
    write_stack(make_stack(60, shape=(60, 512, 512), pixel_size_um=0.1, z_step_um=0.5), folder, "synth60")
    return folder / "synth60.tif"


def test_int8_fp16_end_to_end(benchmark, int8_model, stack60, threads, tmp_path):
    models = {"int8": int8_model, "fp16": shipped_model_path()}
    runs = {name: [] for name in models}
    order = iter(_orders(list(models), 3))

    def one_round():
        for name in next(order):
            out = tmp_path / f"{name}{len(runs[name])}"
            wall, peak, (summary,) = run_measured([stack60, "--model", models[name], "--out", out,
                                                   "--quiet", "--threads", threads])
            runs[name].append({"wall_s": round(wall, 2), "peak_rss_mb": round(peak), "stages": summary["seconds"],
                               "spines": summary["n_spines"], "precision": summary["model_precision"]})

    benchmark.group = "int8 vs fp16 end to end"
    benchmark.name = "spine-run 60 slices 512x512, int8 and fp16 alternating"
    benchmark.pedantic(one_round, rounds=3, iterations=1)
    wall = {k: float(np.median([r["wall_s"] for r in v])) for k, v in runs.items()}
    peak = {k: float(np.median([r["peak_rss_mb"] for r in v])) for k, v in runs.items()}
    benchmark.extra_info.update({"threads": threads, "slices": 60, "runs": runs, "wall_s_median": wall,
                                 "peak_rss_mb_median": peak, "int8_over_fp16_wall": round(wall["int8"] / wall["fp16"], 3),
                                 "int8_over_fp16_peak_rss": round(peak["int8"] / peak["fp16"], 3)})
