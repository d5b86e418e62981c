"""TensorRT engines for a spinedet ONNX model: build, cache and find them (no torch here).

Two TensorRT Python modules can build and run an engine; whichever is
installed is used, TensorRT for RTX first:

``tensorrt_rtx``  TensorRT for RTX (``pip install "spinedet[trt]"``): builds
                  ahead of time on any machine, with or without a GPU, for a
                  list of compute capabilities (:data:`RTX_DEFAULT_TARGETS`:
                  Ampere, Ada and Blackwell RTX GPUs); loading the engine on
                  the user's GPU specialises it there (a JIT step whose result
                  a runtime cache file keeps).
``tensorrt``      standard TensorRT (datacenter GPUs): builds on the GPU it
                  will run on.

Engines are built from the model's *tensorrt flavour* (``spine-export
--target tensorrt``: no NonMaxSuppression, RoiAlign or plugins).  An engine
depends on the ONNX file, the module and its version, the GPUs it targets,
the precision and the batch profile: together the :class:`EngineKey`.  A
cached engine file starts with a header recording its key; one whose header
does not match the key wanted is never loaded.

File layout: ``MAGIC`` (16 bytes), header length (4 bytes, little endian),
header (UTF-8 JSON of the key), then TensorRT's serialised engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from .contract import INPUT_NAME, OUTPUT_NAMES
from .errors import SpineDetError
from .files import file_sha256, write_all

MAGIC = b"SPINEDET-TRT-V2\x00"
MODULES = ("tensorrt_rtx", "tensorrt")
#: compute capabilities a TensorRT-RTX engine is built for when no GPU says which: Ampere (RTX 30xx, A-series
#: such as the paper's A6000), Ada (RTX 40xx), Blackwell (RTX 50xx).  Turing (SM75) cannot run the graph's
#: fp32 matrix products in TensorRT-RTX 1.7 ("FP32 GEMM is not supported"), so it is left out.
RTX_DEFAULT_TARGETS = ("SM80", "SM86", "SM89", "SM120")
WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on.

    targets: for TensorRT-RTX, the compute capabilities it was built for
    (``"SM80,SM86"``); for standard TensorRT, the GPU it was built on
    (``"NVIDIA RTX A6000 8.6"``).
    """

    onnx_sha256: str
    module: str
    version: str
    targets: str
    precision: str
    batch_min: int
    batch_opt: int
    batch_max: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def batch_profile(batch_max: int) -> tuple[int, int, int]:
    """(min, opt, max) batch sizes of the optimisation profile: 1, the largest power of two <= max, max."""
    if batch_max < 1:
        raise SpineDetError(f"--batch must be at least 1, got {batch_max}")
    opt = 1 << (int(batch_max).bit_length() - 1)
    return 1, opt, int(batch_max)


def profile_shapes(input_shape, batch_max: int):
    """The ``(min, opt, max)`` input shapes ``[B, C, H, W]`` of the optimisation profile; input_shape ``(C, H, W)``."""
    c, h, w = input_shape
    return tuple((b, int(c), int(h), int(w)) for b in batch_profile(batch_max))


def make_key(onnx_path, module, precision: str, batch_max: int, targets: str) -> EngineKey:
    """The key of an engine of ``onnx_path`` built by ``module`` (the imported TensorRT module) for ``targets``."""
    lo, opt, hi = batch_profile(batch_max)
    return EngineKey(file_sha256(onnx_path), module.__name__, module.__version__, targets, precision, lo, opt, hi)


def engine_file(cache_dir, onnx_path, key: EngineKey) -> Path:
    return Path(cache_dir) / f"{Path(onnx_path).stem}-{key.digest()}.engine"


def default_cache_dir() -> Path:
    """``$SPINEDET_CACHE/engines``, by default ``~/.cache/spinedet/engines``."""
    return Path(os.environ.get("SPINEDET_CACHE", Path.home() / ".cache" / "spinedet")) / "engines"


def write_engine(path, key: EngineKey, engine: bytes) -> None:
    """Write header + engine all-or-nothing."""
    header = json.dumps(asdict(key), sort_keys=True).encode()
    write_all({Path(path): MAGIC + struct.pack("<I", len(header)) + header + bytes(engine)})


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


# --- the TensorRT and CUDA modules -------------------------------------------------------------------------------

def tensorrt_module():
    """The TensorRT module to use: ``tensorrt_rtx`` if installed, else ``tensorrt``; one clear line if neither."""
    import importlib

    for name in MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise SpineDetError("TensorRT is not installed: pip install 'spinedet[trt]' (TensorRT for RTX; it builds engines "
                        "on any machine and runs them on RTX GPUs), or NVIDIA's tensorrt package for datacenter GPUs")


def is_rtx(module) -> bool:
    return module.__name__ == "tensorrt_rtx"


def cuda_runtime():
    """cuda-python's CUDA runtime bindings, or one clear line saying how to get them."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise SpineDetError("running a TensorRT engine needs cuda-python: pip install 'spinedet[trt]'") from None
    return cudart


def cuda_check(result, what: str = "CUDA call"):
    """Unpack a cuda-python call's ``(error, *values)``, raising SpineDetError on failure."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        name = getattr(error, "name", str(error))
        raise SpineDetError(f"{what} failed: {name} ({int(error)})")
    return values[0] if len(values) == 1 else (values or None)


def current_gpu(cudart) -> tuple[str, int, int]:
    """``(name, major, minor)`` of CUDA device 0; one clear line when there is no usable GPU or driver."""
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or not count:
        reason = getattr(error, "name", str(error)) if int(error) != 0 else "no CUDA device"
        raise SpineDetError(f"no NVIDIA GPU is usable here ({reason}): a TensorRT engine runs on an NVIDIA GPU with "
                            "its driver installed; use --device cpu")
    props = cuda_check(cudart.cudaGetDeviceProperties(0), "reading the GPU's properties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), int(props.major), int(props.minor)


def gpu_targets(module, gpu: tuple[str, int, int]) -> str:
    """The key's ``targets`` for an engine built on and for ``gpu``."""
    name, major, minor = gpu
    if not is_rtx(module):
        return f"{name} {major}.{minor}"
    sm = f"SM{major}{minor}"
    if sm not in module.ComputeCapability.__members__:
        raise SpineDetError(f"the GPU {name} (compute capability {major}.{minor}) is not one TensorRT for RTX "
                            "supports (RTX GPUs from Ampere on); use --device cuda (onnxruntime) instead")
    return sm


# --- building --------------------------------------------------------------------------------------------------

def build_engine(onnx_path, key: EngineKey, input_shape, module, timing_cache=None) -> bytes:
    """A serialised engine for ``key`` from ``onnx_path``; input_shape ``(C, H, W)``.

    A strongly typed network (the precision is in the ONNX file), one
    optimisation profile for batch ``key.batch_min..key.batch_max``.  With
    TensorRT-RTX, the compute capabilities of ``key.targets`` (no GPU needed);
    with standard TensorRT, the current GPU and a persistent timing cache.
    """
    trt = module
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        hint = (" (TensorRT needs the model's tensorrt flavour: spine-export --target tensorrt)"
                if "RoiAlign" in errors or "NonMaxSuppression" in errors else "")
        raise SpineDetError(f"TensorRT cannot parse the model{hint}: {errors}", onnx_path)
    names = {network.get_input(i).name for i in range(network.num_inputs)} | \
            {network.get_output(i).name for i in range(network.num_outputs)}
    if names != {INPUT_NAME, *OUTPUT_NAMES}:
        raise SpineDetError(f"model does not follow the spinedet contract (tensors {sorted(names)})", onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if is_rtx(trt):
        targets = key.targets.split(",")
        config.num_compute_capabilities = len(targets)
        for k, target in enumerate(targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, target), k)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *profile_shapes(input_shape, key.batch_max))
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None and not is_rtx(trt):  # TensorRT-RTX keeps no timing cache without a GPU
        data = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise SpineDetError(f"{trt.__name__} {trt.__version__} failed to build an engine for {key.targets}", onnx_path)
    if cache is not None:
        write_all({Path(timing_cache): bytes(config.get_timing_cache().serialize())})
    return bytes(engine)


def build_cached(onnx_path, precision: str, input_shape, batch_max: int = 16, cache_dir=None, targets=None):
    """``(engine bytes, key, path, built)``: the engine of ``onnx_path`` for ``targets``, from the cache or built.

    targets: TensorRT-RTX compute capabilities (default :data:`RTX_DEFAULT_TARGETS`); standard TensorRT builds
    for the current GPU only.
    """
    trt = tensorrt_module()
    if targets is None:
        targets = ",".join(RTX_DEFAULT_TARGETS) if is_rtx(trt) else gpu_targets(trt, current_gpu(cuda_runtime()))
    key = make_key(onnx_path, trt, precision, batch_max, targets)
    return _cached(onnx_path, key, input_shape, trt, Path(cache_dir) if cache_dir else default_cache_dir())


def engine_for_this_gpu(onnx_path, precision: str, input_shape, batch_max: int = 16, cache_dir=None):
    """``(module, engine bytes, key, path, built)`` for running on this machine's GPU.

    An engine already built for the default TensorRT-RTX targets (by
    ``spine-export --engine``) is used when this GPU is among them; otherwise
    one is built for this GPU alone (seconds) and cached.
    """
    trt = tensorrt_module()
    gpu = current_gpu(cuda_runtime())
    here = gpu_targets(trt, gpu)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if is_rtx(trt) and here in RTX_DEFAULT_TARGETS:
        key = make_key(onnx_path, trt, precision, batch_max, ",".join(RTX_DEFAULT_TARGETS))
        engine = read_engine(engine_file(cache_dir, onnx_path, key), key)
        if engine is not None:
            return trt, engine, key, engine_file(cache_dir, onnx_path, key), False
    key = make_key(onnx_path, trt, precision, batch_max, here)
    return (trt, *_cached(onnx_path, key, input_shape, trt, cache_dir))


def _cached(onnx_path, key: EngineKey, input_shape, trt, cache_dir: Path):
    path = engine_file(cache_dir, onnx_path, key)
    engine = read_engine(path, key)
    if engine is not None:
        return engine, key, path, False
    timing = cache_dir / f"timing-{key.targets.replace(' ', '_').replace(',', '_')}.cache"
    engine = build_engine(onnx_path, key, input_shape, trt, timing)
    write_engine(path, key, engine)
    return engine, key, path, True


def runtime_cache_file(engine_path: Path, gpu: tuple[str, int, int]) -> Path:
    """Where TensorRT-RTX's runtime cache (its JIT work for this GPU) of an engine is kept."""
    name, major, minor = gpu
    return engine_path.with_name(f"{engine_path.stem}-{name.replace(' ', '_')}-{major}{minor}.runtime-cache")
