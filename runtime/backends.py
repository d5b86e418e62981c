"""Inference backends: the only place in spinedet that knows onnxruntime (or TensorRT).

A backend takes a batch ``[B, C, H, W]`` float32 of normalised slices and
returns ``boxes [B, K, 4]`` (pixels) and ``scores [B, K]`` as the model
contract (:mod:`spinedet.runtime.contract`) defines them.  Post-processing
never knows which backend ran.  Every backend is a :class:`Backend`: it
implements ``_infer`` for one batch it can take, and the base class splits
larger batches and checks what comes back (shapes, NaN) in one place.

Devices (``device=``), the one list: :data:`DEVICES`.
``cpu``       onnxruntime's CPU provider;
``cuda``      onnxruntime's CUDA provider (needs ``onnxruntime-gpu``);
``tensorrt``  onnxruntime's TensorRT provider, CUDA and CPU as fallback;
``trt``       a native TensorRT engine (:mod:`spinedet.runtime.trt_engine`;
              needs ``pip install "spinedet[trt]"``, an NVIDIA GPU and the
              model's tensorrt flavour; no onnxruntime involved);
``auto``      the best of the onnxruntime devices that is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import INPUT_NAME, OUTPUT_NAMES, ModelCard
from .errors import SpineDetError

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
DEVICES = ("auto", "cpu", "cuda", "tensorrt", "trt")


def auto_device() -> str:
    """What ``device="auto"`` runs on: the best onnxruntime provider installed (tensorrt, cuda, else cpu)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return next(d for d in ("tensorrt", "cuda", "cpu") if _PROVIDERS[d][0] in available)


class Backend:
    """What every backend is: ``run(batch)`` gives the contract's outputs for any batch size.

    Subclasses set ``path`` (the model file), ``card``, ``device`` (the
    device that actually runs), ``max_batch`` (the largest batch ``_infer``
    takes; None: any) and implement ``_infer``.
    """

    path: Path
    card: ModelCard
    device: str
    max_batch: int | None = None

    def _infer(self, batch: np.ndarray):
        """``batch [b, C, H, W]`` float32, b <= max_batch -> ``(boxes, scores)`` arrays."""
        raise NotImplementedError

    def run(self, batch: np.ndarray):
        """``batch [B, C, H, W]`` float32 -> ``(boxes [B, K, 4], scores [B, K])`` float32, checked."""
        batch = np.asarray(batch)
        step = self.max_batch or len(batch)
        boxes, scores = [], []
        for start in range(0, len(batch), max(step, 1)):
            b, s = self._infer(np.ascontiguousarray(batch[start:start + step], dtype=np.float32))
            boxes.append(np.asarray(b, dtype=np.float32))
            scores.append(np.asarray(s, dtype=np.float32))
        boxes, scores = np.concatenate(boxes), np.concatenate(scores)
        k = self.card.max_detections
        if boxes.shape != (len(batch), k, 4) or scores.shape != (len(batch), k):
            raise SpineDetError(f"model returned boxes {boxes.shape} and scores {scores.shape} for a batch of "
                                f"{len(batch)}; the contract is [B, {k}, 4] and [B, {k}]", self.path)
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise SpineDetError("model returned NaN or infinite values", self.path)
        return boxes, scores

    def close(self) -> None:
        """Release what the backend holds (GPU memory, caches to save); the backend is not used afterwards."""


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX spine detector with onnxruntime.

    model_path: the ``.onnx`` file; card: its :class:`ModelCard`.
    threads: intra-op threads for the CPU provider (None: onnxruntime's default).
    """

    def __init__(self, model_path, card: ModelCard, device: str = "cpu", threads: int | None = None):
        import onnxruntime

        self.path = Path(model_path)
        self.card = card
        if device not in _PROVIDERS and device != "auto":
            raise SpineDetError(f"unknown onnxruntime device {device!r}; choose one of auto, {', '.join(_PROVIDERS)}")
        available = onnxruntime.get_available_providers()
        if device == "auto":
            device = auto_device()
        if _PROVIDERS[device][0] not in available:
            raise SpineDetError(f"device {device!r} needs onnxruntime with {_PROVIDERS[device][0]} "
                                f"(pip install 'spinedet[gpu]'); this onnxruntime has {', '.join(available)}")
        self.device = device
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options,
                                                        providers=[p for p in _PROVIDERS[device] if p in available])
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SpineDetError(f"not a usable ONNX model ({first_line})", self.path) from None
        self.max_batch = self._check_signature()

    def _check_signature(self) -> int | None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= outputs:
            raise SpineDetError(f"model does not follow the spinedet contract: needs input {INPUT_NAME!r} and "
                                f"outputs {OUTPUT_NAMES}, has {sorted(inputs)} -> {sorted(outputs)}", self.path)
        shape = inputs[INPUT_NAME].shape
        expected = [self.card.channels, *self.card.input_size]
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] not in (expected,):
            raise SpineDetError(f"model input {INPUT_NAME!r} has shape {shape}, the card says "
                                f"[B, {expected[0]}, {expected[1]}, {expected[2]}]", self.path)
        return 1 if shape[0] == 1 else None

    def _infer(self, batch: np.ndarray):
        try:
            boxes, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        except Exception as exc:
            raise SpineDetError(f"inference failed ({str(exc).strip().splitlines()[0]})", self.path) from None
        return boxes, scores


class TensorRTBackend(Backend):
    """Runs a spinedet model's tensorrt flavour as a native TensorRT engine (no onnxruntime).

    The engine comes from the cache or is built once for this GPU
    (:func:`spinedet.runtime.trt_engine.engine_for_this_gpu`); with
    TensorRT-RTX its JIT specialisation for this GPU is kept in a runtime
    cache file beside the engine, saved on :meth:`close`.  GPU memory comes
    from cuda-python (``cudaMalloc``), sized for ``batch_max`` slices and reused.
    """

    def __init__(self, model_path, card: ModelCard, batch_max: int = 16, cache_dir=None):
        from . import trt_engine as te

        self.path, self.card, self.device = Path(model_path), card, "trt"
        if card.export.get("target") != "tensorrt":
            raise SpineDetError("this model is the onnxruntime flavour; TensorRT runs the tensorrt flavour "
                                "(the shipped spinedet_default_trt.onnx, or spine-export --target tensorrt)", self.path)
        trt = te.tensorrt_module()
        self.cudart = cudart = te.cuda_runtime()
        self.gpu = te.current_gpu(cudart)
        self.max_batch = int(batch_max)
        self.module, engine_bytes, self.key, self.engine_path, self.built = te.engine_for_this_gpu(
            model_path, card.precision, (card.channels, *card.input_size), batch_max, cache_dir)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise SpineDetError(f"{trt.__name__} could not load the engine", self.engine_path)
        self._runtime_cache = None
        if te.is_rtx(trt):  # the JIT step's result, kept per GPU
            config = self.engine.create_runtime_config()
            self._runtime_cache = config.create_runtime_cache()
            self._cache_file = te.runtime_cache_file(self.engine_path, self.gpu)
            if self._cache_file.is_file():
                self._runtime_cache.deserialize(self._cache_file.read_bytes())
            config.set_runtime_cache(self._runtime_cache)
            self.context = self.engine.create_execution_context(config)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise SpineDetError(f"{trt.__name__} could not create an execution context", self.engine_path)
        self.stream = te.cuda_check(cudart.cudaStreamCreate(), "creating a CUDA stream")
        h, w = card.input_size
        k = card.max_detections
        self._shapes = {INPUT_NAME: (card.channels, h, w), OUTPUT_NAMES[0]: (k, 4), OUTPUT_NAMES[1]: (k,)}
        self._buffers = {}
        for name, shape in self._shapes.items():
            nbytes = self.max_batch * int(np.prod(shape)) * 4
            self._buffers[name] = te.cuda_check(cudart.cudaMalloc(nbytes), f"allocating GPU memory for {name}")
            self.context.set_tensor_address(name, int(self._buffers[name]))

    def _infer(self, batch: np.ndarray):
        from .trt_engine import cuda_check

        cudart, b = self.cudart, len(batch)
        if not self.context.set_input_shape(INPUT_NAME, batch.shape):
            raise SpineDetError(f"the engine does not take a batch of shape {batch.shape}", self.engine_path)
        outs = {name: np.empty((b, *self._shapes[name]), np.float32) for name in OUTPUT_NAMES}
        cuda_check(cudart.cudaMemcpyAsync(self._buffers[INPUT_NAME], batch.ctypes.data, batch.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "copy to GPU")
        if not self.context.execute_async_v3(int(self.stream)):
            raise SpineDetError("TensorRT inference failed", self.path)
        for name, out in outs.items():
            cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "copy back")
        cuda_check(cudart.cudaStreamSynchronize(self.stream), "TensorRT inference")
        return outs[OUTPUT_NAMES[0]], outs[OUTPUT_NAMES[1]]

    def close(self) -> None:
        """Save the runtime cache (TensorRT-RTX) and free the GPU memory."""
        from .files import write_all

        if self._runtime_cache is not None:
            try:
                write_all({self._cache_file: bytes(self._runtime_cache.serialize())})
            except SpineDetError:
                pass  # a read-only cache folder costs the JIT step next time, nothing else
            self._runtime_cache = None
        for pointer in self._buffers.values():
            self.cudart.cudaFree(pointer)
        self._buffers = {}
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):
        if getattr(self, "_buffers", None) or getattr(self, "_runtime_cache", None) is not None:
            self.close()


def open_backend(model_path, card: ModelCard, device: str = "cpu", threads: int | None = None,
                 batch_max: int = 16) -> Backend:
    """The backend for ``device`` (one of :data:`DEVICES`) running ``model_path``."""
    if device not in DEVICES:
        raise SpineDetError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "trt":
        return TensorRTBackend(model_path, card, batch_max)
    return OnnxRuntimeBackend(model_path, card, device, threads)
