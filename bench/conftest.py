"""Benchmarks, run apart from the test suite (see bench/README.md):

    pytest bench/ --benchmark-only --benchmark-json=bench/results/latest.json

Options: ``--onnx FILE`` (repeatable; default: the shipped models: fp16, int8
where shipped, tensorrt flavour), ``--checkpoint FILE`` (torch weights of the
same model, for the torch-eager reference: a checkpoint, or an exported .onnx
model whose weights are recovered from the graph; skipped without it),
``--threads N`` (CPU threads for both onnxruntime and torch, default 2, recorded
with every result); for bench/test_int8_bench.py ``--int8 FILE`` (default: the
shipped int8 model) and ``--rounds N`` (interleaved rounds, default 8).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def pytest_addoption(parser):
    parser.addoption("--onnx", action="append", default=[], help="ONNX model(s) to time (default: shipped)")
    parser.addoption("--checkpoint", default=None, help="torch checkpoint (or .onnx) of the same model (torch eager)")
    parser.addoption("--threads", type=int, default=2, help="CPU threads for inference")
    parser.addoption("--int8", default=None, help="int8 model for bench/test_int8_bench.py (default: the shipped one)")
    parser.addoption("--rounds", type=int, default=8, help="interleaved rounds in bench/test_int8_bench.py")


@pytest.fixture(scope="session")
def threads(request):
    return request.config.getoption("--threads")


def _model_paths(config):
    from spinedet.runtime.detector import (DEFAULT_INT8_MODEL_NAME, DEFAULT_MODEL_NAME, DEFAULT_TRT_MODEL_NAME,
                                           shipped_model_path)

    shipped = [shipped_model_path(n) for n in (DEFAULT_MODEL_NAME, DEFAULT_INT8_MODEL_NAME, DEFAULT_TRT_MODEL_NAME)]
    return [Path(p) for p in config.getoption("--onnx")] or [p for p in shipped if p.is_file()]


def pytest_generate_tests(metafunc):
    """One benchmark per model given with --onnx (a benchmark fixture measures one thing per test)."""
    if "onnx_model" in metafunc.fixturenames:
        paths = _model_paths(metafunc.config)
        metafunc.parametrize("onnx_model", paths, ids=[p.stem for p in paths])


@pytest.fixture
def onnx_model(request):
    if not request.param.is_file():
        pytest.skip(f"model file {request.param} not found")
    return request.param


@pytest.fixture(scope="session")
def checkpoint(request):
    path = request.config.getoption("--checkpoint")
    if not path or not Path(path).is_file():
        pytest.skip("no --checkpoint given: torch eager reference not measured")
    return Path(path)


@pytest.fixture(scope="session")
def synthetic_stacks(tmp_path_factory):
    """Synthetic 512x512 stacks of 30, 60 and 200 slices written as TIFF, by slice count."""
    from spinedet.training.synth import make_stack, write_stack

    folder = tmp_path_factory.mktemp("stacks")
    out = {}
    for n in (30, 60, 200):
        stack = make_stack(n, shape=(n, 512, 512), pixel_size_um=0.1, z_step_um=0.5)
        write_stack(stack, folder, f"synth{n}")
        out[n] = folder / f"synth{n}.tif"
    return out


def run_measured(args, timeout=1800):
    """Run ``spine-run args`` in a fresh process; return (wall seconds, peak RSS MB, summary dicts)."""
    import json
    import time

    script = ("import re, sys\nfrom spinedet.runtime.cli import run_main\nsys.argv = ['spine-run'] + sys.argv[1:]\n"
              "try:\n    run_main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
              "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
              "print('PEAK_KB', hwm, file=sys.stderr)\nsys.exit(code)\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    peak = int(re.search(r"PEAK_KB (\d+)", done.stderr).group(1)) / 1024
    out = Path(args[args.index("--out") + 1])
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*_summary.json"))]
    return wall, peak, summaries
