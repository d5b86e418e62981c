"""TensorRT engines: keys, headers and profiles; a real TensorRT-RTX build of the shipped model's tensorrt
flavour on this CPU; and the clear one-line failures where TensorRT, a GPU or the right flavour is missing."""

import dataclasses
import hashlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from spinedet.runtime.backends import OnnxRuntimeBackend
from spinedet.runtime.cli import run_app
from spinedet.runtime.contract import load_card
from spinedet.runtime.detector import SpineDetector, default_model_path, shipped_model_path
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.trt_engine import (MAGIC, RTX_DEFAULT_TARGETS, EngineKey, batch_profile, build_cached,
                                         engine_file, make_key, profile_shapes, read_engine, tensorrt_module,
                                         write_engine)

RTX = SimpleNamespace(__name__="tensorrt_rtx", __version__="1.7.1.116")


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"graph bytes")
    return path


def key_for(onnx_file, **change):
    key = make_key(onnx_file, RTX, "fp16", 16, "SM80,SM86")
    return dataclasses.replace(key, **change)


def _gpu_here() -> bool:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    error, count = cudart.cudaGetDeviceCount()
    return int(error) == 0 and count > 0


def test_profile_covers_batch_1_to_max():
    assert batch_profile(16) == (1, 16, 16)
    assert batch_profile(12) == (1, 8, 12)
    assert batch_profile(1) == (1, 1, 1)
    assert profile_shapes((1, 512, 512), 8) == ((1, 1, 512, 512), (8, 1, 512, 512), (8, 1, 512, 512))
    assert profile_shapes((2, 256, 256), 6)[2] == (6, 2, 256, 256)  # a model with depth context
    with pytest.raises(SpineDetError):
        batch_profile(0)


def test_key_changes_with_every_ingredient(onnx_file):
    base = key_for(onnx_file)
    assert base.onnx_sha256 == hashlib.sha256(b"graph bytes").hexdigest()
    assert (base.module, base.version) == ("tensorrt_rtx", "1.7.1.116")
    variants = [key_for(onnx_file, version="1.8.0"), key_for(onnx_file, module="tensorrt"),
                key_for(onnx_file, targets="SM89"), key_for(onnx_file, precision="fp32"),
                key_for(onnx_file, batch_max=8)]
    assert len({base.digest()} | {v.digest() for v in variants}) == 6
    onnx_file.write_bytes(b"other graph")
    assert key_for(onnx_file).onnx_sha256 != base.onnx_sha256


def test_engine_round_trip_and_stale_engines_are_refused(onnx_file, tmp_path):
    key = key_for(onnx_file)
    path = engine_file(tmp_path, onnx_file, key)
    write_engine(path, key, b"ENGINE")
    assert path.read_bytes().startswith(MAGIC)
    assert read_engine(path, key) == b"ENGINE"
    assert read_engine(path, key_for(onnx_file, version="1.8.0")) is None  # another TensorRT
    assert read_engine(path, key_for(onnx_file, targets="SM120")) is None  # other GPUs
    path.write_bytes(b"garbage")
    assert read_engine(path, key) is None
    assert read_engine(tmp_path / "absent.engine", key) is None
    other = tmp_path / "n.onnx"
    other.write_bytes(b"another graph")
    assert engine_file(tmp_path, onnx_file, key) != engine_file(tmp_path, other, make_key(other, RTX, "fp16", 16,
                                                                                          "SM80,SM86"))
    assert isinstance(key, EngineKey)


def test_without_tensorrt_the_failure_is_one_clear_line(monkeypatch, blob_model):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # neither module can be imported
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(SpineDetError, match=r"TensorRT is not installed: pip install 'spinedet\[trt\]'"):
        tensorrt_module()


@pytest.fixture(scope="module")
def shipped_trt():
    path = default_model_path("trt")
    if not path.is_file():
        pytest.skip(f"no shipped tensorrt flavour at {path}")
    return path


def test_the_tensorrt_flavour_is_shipped_beside_the_default(shipped_trt):
    onnx = pytest.importorskip("onnx")
    from spinedet.export.hygiene import check_graph

    card, default = load_card(shipped_trt), load_card(shipped_model_path())
    assert card.export["target"] == "tensorrt" and card.precision == default.precision
    # the same model: thresholds, metrics and what it was trained as carry over
    assert (card.score_threshold, card.link_threshold, card.metrics) == \
           (default.score_threshold, default.link_threshold, default.metrics)
    assert card.export["model_config"] == default.export["model_config"]
    assert check_graph(onnx.load(str(shipped_trt)), target="tensorrt") == []
    assert shipped_trt.stat().st_size < 20e6


def test_the_two_shipped_flavours_agree_on_onnxruntime(shipped_trt, shared_data_or_none):
    """Boxes above 0.5 at IoU >= 0.9 and |dscore| < 1e-3, >= 99 %, on built-in synthetic slices and real images."""
    from spinedet.training.parity import builtin_inputs, compare

    card = load_card(shipped_trt)
    slices = builtin_inputs(card.input_size, card.channels, count=8, seed=3)
    if shared_data_or_none is not None:
        from spinedet.training.data import real2d_samples

        real = real2d_samples("val", shared_data_or_none / "real2d-mdg", warn=False)[:6]
        slices = np.concatenate([slices, np.stack([s.model_input(card.channels) for s in real])])
    runs = {}
    for name, path in (("onnxruntime", shipped_model_path()), ("tensorrt", shipped_trt)):
        backend = OnnxRuntimeBackend(path, load_card(path), "cpu")
        boxes, scores = backend.run(slices)
        runs[name] = [(b.astype(np.float64), s.astype(np.float64)) for b, s in zip(boxes, scores)]
    r = compare(runs["onnxruntime"], runs["tensorrt"], 1e-3)
    assert r["detections"] > 50 and r["matched"] / r["detections"] >= 0.99, r


def test_tensorrt_rtx_builds_the_shipped_engine_on_this_machine(shipped_trt, tmp_path):
    """TensorRT for RTX builds engines ahead of time without a GPU: the real build (3 s), cached and then reused."""
    pytest.importorskip("tensorrt_rtx", reason="pip install 'spinedet[trt]' brings TensorRT for RTX")
    card = load_card(shipped_trt)
    engine, key, path, built = build_cached(shipped_trt, card.precision, (card.channels, *card.input_size), 8, tmp_path)
    assert built and key.module == "tensorrt_rtx" and key.targets == ",".join(RTX_DEFAULT_TARGETS)
    assert (key.batch_min, key.batch_opt, key.batch_max) == (1, 8, 8)
    assert len(engine) > 1e6 and read_engine(path, key) == engine
    again = build_cached(shipped_trt, card.precision, (card.channels, *card.input_size), 8, tmp_path)
    assert again[3] is False and again[0] == engine  # from the cache


def test_the_onnxruntime_flavour_is_not_built(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="pip install 'spinedet[trt]' brings TensorRT for RTX")
    path = shipped_model_path()
    card = load_card(path)
    with pytest.raises(SpineDetError, match="needs the model's tensorrt flavour: spine-export --target tensorrt"):
        build_cached(path, card.precision, (card.channels, *card.input_size), 2, tmp_path)


def test_trt_device_is_one_clear_line_without_a_gpu(good_stack_path, tmp_path):
    if _gpu_here():
        pytest.skip("an NVIDIA GPU is usable here: bench/gpu_check.sh runs the engine")
    result = CliRunner().invoke(run_app, [str(good_stack_path), "--device", "trt", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("spine-run: error: ")
    assert "no NVIDIA GPU is usable here" in line or "TensorRT is not installed" in line or "cuda-python" in line
    assert not (tmp_path / "o").exists()


def test_trt_device_refuses_the_onnxruntime_flavour(blob_model):
    with pytest.raises(SpineDetError, match="this model is the onnxruntime flavour"):
        SpineDetector(blob_model, device="trt")
