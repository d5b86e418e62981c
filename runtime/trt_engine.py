"""TensorRT engines for a spinedet ONNX model: build, cache, validate (no torch here).

An engine is specific to the ONNX file, the TensorRT version, the GPU (name
and compute capability), the precision and the batch profile.  All of these
form the :class:`EngineKey`; the cached file starts with a header recording
the key, and an engine whose header does not match the key wanted now is
rebuilt, never loaded.

File layout: ``MAGIC`` (16 bytes), header length (4 bytes, little endian),
header (UTF-8 JSON of the key), then TensorRT's serialised engine.

The builder follows TensorRT's documented Python API (10.x): an explicit-batch
network parsed from the ONNX file, strongly typed when the parser offers it
(precision comes from the ONNX file itself), one optimisation profile for
batch 1..N, and a persistent timing cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .contract import INPUT_NAME
from .errors import SpineDetError
from .files import file_sha256

MAGIC = b"SPINEDET-TRT-V1\x00"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    batch_min: int
    batch_opt: int
    batch_max: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def batch_profile(batch_max: int) -> tuple[int, int, int]:
    """(min, opt, max) batch sizes of the optimisation profile: 1, the largest power of two <= max, max."""
    if batch_max < 1:
        raise SpineDetError(f"--batch-max must be at least 1, got {batch_max}")
    opt = 1 << (int(batch_max).bit_length() - 1)
    return 1, opt, int(batch_max)


def profile_shapes(input_shape, batch_max: int):
    """The ``(min, opt, max)`` input shapes ``[B, C, H, W]`` of the optimisation profile; input_shape ``(C, H, W)``."""
    c, h, w = input_shape
    return tuple((b, int(c), int(h), int(w)) for b in batch_profile(batch_max))


def make_key(onnx_path, precision: str, batch_max: int, gpu: tuple[str, str], tensorrt_version: str) -> EngineKey:
    """The key for ``onnx_path`` on ``gpu`` = (name, "major.minor")."""
    lo, opt, hi = batch_profile(batch_max)
    return EngineKey(file_sha256(onnx_path), tensorrt_version, gpu[0], gpu[1], precision, lo, opt, hi)


def engine_file(cache_dir, onnx_path, key: EngineKey) -> Path:
    return Path(cache_dir) / f"{Path(onnx_path).stem}-{key.digest()}.engine"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPINEDET_CACHE", Path.home() / ".cache" / "spinedet")) / "engines"


def write_engine(path, key: EngineKey, engine: bytes) -> None:
    """Write header + engine atomically."""
    header = json.dumps(asdict(key), sort_keys=True).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC + struct.pack("<I", len(header)) + header + bytes(engine))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_engine(path, key: EngineKey) -> bytes | None:
    """The engine bytes if ``path`` holds an engine built for exactly ``key``; None if absent, stale or damaged."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        return None
    (length,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start:start + length])
    except (ValueError, UnicodeDecodeError):
        return None
    if header != asdict(key):
        return None
    engine = data[start + length:]
    return engine or None


# --- needs TensorRT -----------------------------------------------------------------------------------------------

def require_tensorrt():
    """The ``tensorrt`` module, or a one-line SpineDetError saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise SpineDetError("TensorRT is not installed: the native engine backend needs an NVIDIA GPU, "
                            "its driver and `pip install tensorrt cuda-python`") from None
    return tensorrt


def require_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise SpineDetError("cuda-python is not installed: the native TensorRT backend needs "
                                "`pip install cuda-python`") from None
    return cudart


def cuda_check(result):
    """Unpack a cuda-python call's ``(error, *values)``, raising SpineDetError on failure."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise SpineDetError(f"CUDA call failed with error {int(error)} ({error})")
    return values[0] if len(values) == 1 else values


def current_gpu() -> tuple[str, str]:
    """(name, "major.minor") of CUDA device 0."""
    cudart = require_cudart()
    props = cuda_check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def build_engine(onnx_path, key: EngineKey, input_shape, timing_cache=None) -> bytes:
    """Build a serialised engine for ``key`` from ``onnx_path`` (TensorRT 10 API); input_shape ``(C, H, W)``."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SpineDetError(f"TensorRT cannot parse the model ({errors})", onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    if key.precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)  # older TensorRT: weakly typed networks
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *profile_shapes(input_shape, key.batch_max))
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise SpineDetError("TensorRT failed to build an engine (see TensorRT's log above)", onnx_path)
    if timing_cache:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(engine)


def load_or_build(onnx_path, precision: str, input_shape, batch_max: int = 16, cache_dir=None):
    """``(engine_bytes, key, path, built)``: the cached engine if it matches, else a freshly built one.

    input_shape: ``(C, H, W)`` of the model input (the card's channels and input size).
    """
    trt = require_tensorrt()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = make_key(onnx_path, precision, batch_max, current_gpu(), trt.__version__)
    path = engine_file(cache_dir, onnx_path, key)
    engine = read_engine(path, key)
    if engine is not None:
        return engine, key, path, False
    engine = build_engine(onnx_path, key, input_shape, cache_dir / f"timing-{key.gpu_name.replace(' ', '_')}.cache")
    write_engine(path, key, engine)
    return engine, key, path, True
