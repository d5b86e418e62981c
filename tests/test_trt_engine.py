"""The TensorRT engine cache, without TensorRT: keys, headers, profiles and the clear failure."""

import dataclasses

import pytest

from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.trt_engine import (EngineKey, batch_profile, engine_file, make_key, profile_shapes,
                                         read_engine, require_tensorrt, write_engine)


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"graph bytes")
    return path


def key_for(onnx_file, **change):
    key = make_key(onnx_file, "fp16", 16, ("NVIDIA H100", "9.0"), "10.12.0")
    return dataclasses.replace(key, **change)


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
    import hashlib

    assert base.onnx_sha256 == hashlib.sha256(b"graph bytes").hexdigest()
    variants = [key_for(onnx_file, tensorrt_version="10.13.0"), key_for(onnx_file, gpu_name="NVIDIA H200"),
                key_for(onnx_file, compute_capability="8.6"), key_for(onnx_file, precision="fp32"),
                key_for(onnx_file, batch_max=8)]
    digests = {base.digest()} | {v.digest() for v in variants}
    assert len(digests) == 6
    onnx_file.write_bytes(b"other graph")
    assert key_for(onnx_file).onnx_sha256 != base.onnx_sha256


def test_engine_round_trip_and_stale_engines_are_refused(onnx_file, tmp_path):
    key = key_for(onnx_file)
    path = engine_file(tmp_path, onnx_file, key)
    write_engine(path, key, b"ENGINE")
    assert read_engine(path, key) == b"ENGINE"
    assert read_engine(path, key_for(onnx_file, tensorrt_version="10.13.0")) is None  # other TensorRT
    assert read_engine(path, key_for(onnx_file, gpu_name="NVIDIA A6000")) is None  # other GPU
    path.write_bytes(b"garbage")
    assert read_engine(path, key) is None
    assert read_engine(tmp_path / "absent.engine", key) is None


def test_keys_of_different_models_give_different_files(onnx_file, tmp_path):
    other = tmp_path / "n.onnx"
    other.write_bytes(b"another graph")
    a, b = key_for(onnx_file), make_key(other, "fp16", 16, ("NVIDIA H100", "9.0"), "10.12.0")
    assert engine_file(tmp_path, onnx_file, a) != engine_file(tmp_path, other, b)
    assert isinstance(a, EngineKey)


def test_without_tensorrt_the_failure_is_one_clear_line():
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(SpineDetError, match="TensorRT is not installed"):
        require_tensorrt()


def test_trt_device_without_tensorrt(blob_model):
    from spinedet.runtime.detector import SpineDetector

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(SpineDetError, match="TensorRT is not installed"):
        SpineDetector(blob_model, device="trt")
