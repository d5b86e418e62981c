"""The TensorRT backend's own logic, on a stand-in for TensorRT-RTX and CUDA whose "GPU memory" is host memory.

No GPU runs here (bench/gpu_check.sh is the real check); this exercises everything spinedet itself does
around the engine: the flavour check, engine lookup, buffers, shapes, copies in and out, batches larger
than the profile, the runtime cache saved and loaded again, and the contract checks on what comes back.
"""

import ctypes
import enum
from types import SimpleNamespace

import numpy as np
import pytest

from spinedet.runtime import backends
from spinedet.runtime import trt_engine as te
from spinedet.runtime.contract import load_card
from spinedet.runtime.detector import SpineDetector, default_model_path
from spinedet.runtime.errors import SpineDetError


class FakeCudart:
    """cuda-python's runtime calls spinedet uses: (error, value) tuples, memory from numpy arrays."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self):
        self.memory, self.freed = {}, []

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaGetDeviceProperties(self, index):
        return 0, SimpleNamespace(name=b"NVIDIA RTX A6000", major=8, minor=6)

    def cudaStreamCreate(self):
        return 0, 77

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaMalloc(self, nbytes):
        array = np.zeros(nbytes, np.uint8)
        self.memory[array.ctypes.data] = array
        return 0, array.ctypes.data

    def cudaFree(self, pointer):
        self.freed.append(pointer)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)


class FakeContext:
    """Computes the contract's outputs from the input buffer: one box per slice, its score the slice's mean."""

    def __init__(self, cudart, k):
        self.cudart, self.k, self.addresses, self.shape = cudart, k, {}, None

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer
        return True

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return shape[0] <= 16

    def execute_async_v3(self, stream):
        b = self.shape[0]
        images = np.frombuffer(self.cudart.memory[self.addresses["images"]], np.float32)[:int(np.prod(self.shape))]
        images = images.reshape(self.shape)
        boxes = np.frombuffer(self.cudart.memory[self.addresses["boxes"]], np.float32)[:b * self.k * 4]
        scores = np.frombuffer(self.cudart.memory[self.addresses["scores"]], np.float32)[:b * self.k]
        boxes.reshape(b, self.k, 4)[:] = 0
        boxes.reshape(b, self.k, 4)[:, 0] = [10, 10, 20, 20]
        scores.reshape(b, self.k)[:] = 0
        scores.reshape(b, self.k)[:, 0] = images.reshape(b, -1).mean(axis=1)
        return True


def fake_tensorrt(cudart, k, caches):
    class Cache:
        def __init__(self):
            self.data = b""

        def deserialize(self, data):
            self.data = bytes(data)
            caches.append(("loaded", self.data))

        def serialize(self):
            return self.data + b"+jit"

    class Engine:
        def create_runtime_config(self):
            return SimpleNamespace(create_runtime_cache=Cache, set_runtime_cache=lambda c: True)

        def create_execution_context(self, config=None):
            return FakeContext(cudart, k)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"ENGINE" else None

    def Logger(level):
        return None

    Logger.WARNING, Logger.ERROR = 2, 1
    ComputeCapability = enum.Enum("ComputeCapability", ["SM80", "SM86", "SM89", "SM120"])
    return SimpleNamespace(__name__="tensorrt_rtx", __version__="1.7.1.116", Runtime=Runtime, Logger=Logger,
                           ComputeCapability=ComputeCapability)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """TensorRT-RTX and CUDA stand-ins; the engine 'built' for this GPU is the bytes b"ENGINE"."""
    cudart, caches = FakeCudart(), []
    card = load_card(default_model_path("trt"))
    trt = fake_tensorrt(cudart, card.max_detections, caches)
    monkeypatch.setattr(te, "tensorrt_module", lambda: trt)
    monkeypatch.setattr(te, "cuda_runtime", lambda: cudart)
    built = []

    def build_engine(onnx_path, key, input_shape, module, timing_cache=None):
        built.append(key)
        return b"ENGINE"

    monkeypatch.setattr(te, "build_engine", build_engine)
    monkeypatch.setenv("SPINEDET_CACHE", str(tmp_path / "cache"))
    return SimpleNamespace(cudart=cudart, caches=caches, built=built, card=card)


def test_engine_backend_moves_batches_through_the_gpu_and_keeps_its_runtime_cache(fake_gpu):
    model = default_model_path("trt")
    backend = backends.open_backend(model, fake_gpu.card, "trt", batch_max=4)
    assert backend.device == "trt" and backend.max_batch == 4 and backend.built
    assert backend.key.targets == "SM86" and fake_gpu.built[0].module == "tensorrt_rtx"  # built for this GPU
    batch = np.stack([np.full((2, 512, 512), v, np.float32) for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)])
    boxes, scores = backend.run(batch)  # 6 slices through a profile of 4: two calls
    k = fake_gpu.card.max_detections
    assert boxes.shape == (6, k, 4) and scores.shape == (6, k)
    np.testing.assert_allclose(scores[:, 0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(boxes[:, 0], [[10, 10, 20, 20]] * 6)
    backend.close()
    assert len(fake_gpu.cudart.freed) == 3  # input and both outputs
    cache_file = te.runtime_cache_file(backend.engine_path, backend.gpu)
    assert cache_file.read_bytes() == b"+jit"
    again = backends.open_backend(model, fake_gpu.card, "trt", batch_max=4)
    assert not again.built and len(fake_gpu.built) == 1  # the cached engine
    assert fake_gpu.caches == [("loaded", b"+jit")]  # the JIT work of the first run comes back
    again.close()


def test_detector_runs_the_shipped_tensorrt_flavour_by_default(fake_gpu):
    detector = SpineDetector(device="trt", batch=2)
    assert detector.model_path.name == "spinedet_default_trt.onnx"
    stack = np.random.default_rng(0).integers(0, 1000, (3, 512, 512)).astype(np.uint16)
    result = detector.detect(stack, voxel_size=(0.5, 0.1, 0.1))
    assert result.shape == (3, 512, 512)  # the pipeline ran end to end on the engine's outputs
    detector.close()


def test_an_engine_exported_for_the_default_targets_is_found(fake_gpu, tmp_path):
    model = default_model_path("trt")
    card = fake_gpu.card
    key = te.make_key(model, te.tensorrt_module(), card.precision, 16, ",".join(te.RTX_DEFAULT_TARGETS))
    te.write_engine(te.engine_file(te.default_cache_dir(), model, key), key, b"ENGINE")
    backend = backends.open_backend(model, card, "trt", batch_max=16)
    assert not backend.built and backend.key == key and fake_gpu.built == []
    backend.close()


def test_an_unsupported_gpu_is_one_clear_line(fake_gpu, monkeypatch):
    monkeypatch.setattr(fake_gpu.cudart, "cudaGetDeviceProperties",
                        lambda i: (0, SimpleNamespace(name=b"NVIDIA H200", major=9, minor=0)))
    with pytest.raises(SpineDetError, match=r"NVIDIA H200 \(compute capability 9.0\) is not one TensorRT for RTX "
                                            r"supports.*--device cuda"):
        backends.open_backend(default_model_path("trt"), fake_gpu.card, "trt")


def test_no_driver_is_one_clear_line(fake_gpu, monkeypatch):
    error = type("E", (), {"name": "cudaErrorInsufficientDriver", "__int__": lambda self: 35})()
    monkeypatch.setattr(fake_gpu.cudart, "cudaGetDeviceCount", lambda: (error, None))
    with pytest.raises(SpineDetError, match="no NVIDIA GPU is usable here .cudaErrorInsufficientDriver."):
        backends.open_backend(default_model_path("trt"), fake_gpu.card, "trt")
