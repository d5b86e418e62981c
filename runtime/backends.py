"""Inference backends: the only place in spinedet that knows onnxruntime (or TensorRT).

A backend takes a batch ``[B, 1, H, W]`` float32 of normalised slices and
returns ``boxes [B, K, 4]`` and ``scores [B, K]`` as the model contract
(:mod:`spinedet.runtime.contract`) defines them.  Post-processing never knows
which backend ran.

Devices (``device=``):
``cpu``       onnxruntime's CPU provider;
``cuda``      onnxruntime's CUDA provider (needs ``onnxruntime-gpu``);
``tensorrt``  onnxruntime's TensorRT provider, CUDA and CPU as fallback;
``trt``       a native TensorRT engine built from the ONNX file and cached
              (:mod:`spinedet.runtime.trt_engine`; needs ``tensorrt`` and
              ``cuda-python``, no onnxruntime involved);
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


class OnnxRuntimeBackend:
    """Runs an ONNX spine detector with onnxruntime.

    model_path: the ``.onnx`` file; card: its :class:`ModelCard`.
    threads: intra-op threads for the CPU provider (None: onnxruntime's default).
    max_batch: the largest batch the graph accepts (1 for a graph exported with
    a fixed batch of 1, else None for any).
    """

    def __init__(self, model_path, card: ModelCard, device: str = "cpu", threads: int | None = None):
        import onnxruntime

        self.path = Path(model_path)
        self.card = card
        if device not in DEVICES or device == "trt":
            raise SpineDetError(f"unknown onnxruntime device {device!r}; choose one of {', '.join(DEVICES[:4])}")
        available = onnxruntime.get_available_providers()
        if device == "auto":
            device = next(d for d in ("tensorrt", "cuda", "cpu") if _PROVIDERS[d][0] in available)
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

    def run(self, batch: np.ndarray):
        """``batch [B, C, H, W]`` float32 -> ``(boxes [B, K, 4], scores [B, K])`` float32."""
        step = self.max_batch or len(batch)
        boxes, scores = [], []
        for start in range(0, len(batch), step):
            part = np.ascontiguousarray(batch[start:start + step], dtype=np.float32)
            try:
                result = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: part})
            except Exception as exc:
                raise SpineDetError(f"inference failed ({str(exc).strip().splitlines()[0]})", self.path) from None
            boxes.append(np.asarray(result[0], dtype=np.float32))
            scores.append(np.asarray(result[1], dtype=np.float32))
        boxes, scores = np.concatenate(boxes), np.concatenate(scores)
        if boxes.shape[:1] + boxes.shape[2:] != (len(batch), 4) or scores.shape != boxes.shape[:2]:
            raise SpineDetError(f"model returned boxes {boxes.shape} and scores {scores.shape} for a batch of "
                                f"{len(batch)}; the contract is [B, K, 4] and [B, K]", self.path)
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise SpineDetError("model returned NaN or infinite values", self.path)
        return boxes, scores


class TensorRTBackend:
    """Runs a spinedet model as a native TensorRT engine (TensorRT + cuda-python, no onnxruntime).

    The engine comes from the cache or is built once (see
    :func:`spinedet.runtime.trt_engine.load_or_build`); device buffers are
    allocated for ``batch_max`` slices and reused.
    """

    def __init__(self, model_path, card: ModelCard, batch_max: int = 16, cache_dir=None):
        from . import trt_engine

        trt = trt_engine.require_tensorrt()
        self.cudart = cudart = trt_engine.require_cudart()
        self.path, self.card, self.device = Path(model_path), card, "trt"
        self.max_batch = int(batch_max)
        engine_bytes, self.key, self.engine_path, self.built = trt_engine.load_or_build(
            model_path, card.precision, (card.channels, *card.input_size), batch_max, cache_dir)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise SpineDetError("TensorRT could not load the engine", self.engine_path)
        self.context = self.engine.create_execution_context()
        self.stream = trt_engine.cuda_check(cudart.cudaStreamCreate())
        h, w = card.input_size
        k = card.max_detections
        self._shapes = {INPUT_NAME: (card.channels, h, w), OUTPUT_NAMES[0]: (k, 4), OUTPUT_NAMES[1]: (k,)}
        self._buffers = {}
        for name, shape in self._shapes.items():
            nbytes = self.max_batch * int(np.prod(shape)) * 4
            self._buffers[name] = trt_engine.cuda_check(cudart.cudaMalloc(nbytes))
            self.context.set_tensor_address(name, int(self._buffers[name]))

    def run(self, batch: np.ndarray):
        from .trt_engine import cuda_check

        cudart = self.cudart
        boxes, scores = [], []
        for start in range(0, len(batch), self.max_batch):
            part = np.ascontiguousarray(batch[start:start + self.max_batch], dtype=np.float32)
            b = len(part)
            self.context.set_input_shape(INPUT_NAME, part.shape)
            outs = {name: np.empty((b, *self._shapes[name]), np.float32) for name in OUTPUT_NAMES}
            cuda_check(cudart.cudaMemcpyAsync(self._buffers[INPUT_NAME], part.ctypes.data, part.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            if not self.context.execute_async_v3(self.stream):
                raise SpineDetError("TensorRT inference failed", self.path)
            for name, out in outs.items():
                cuda_check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes,
                                                  cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            cuda_check(cudart.cudaStreamSynchronize(self.stream))
            boxes.append(outs[OUTPUT_NAMES[0]])
            scores.append(outs[OUTPUT_NAMES[1]])
        return np.concatenate(boxes), np.concatenate(scores)

    def __del__(self):
        for pointer in getattr(self, "_buffers", {}).values():
            self.cudart.cudaFree(pointer)


def open_backend(model_path, card: ModelCard, device: str = "cpu", threads: int | None = None,
                 batch_max: int = 16):
    """The backend for ``device`` running ``model_path``."""
    if device == "trt":
        return TensorRTBackend(model_path, card, batch_max)
    return OnnxRuntimeBackend(model_path, card, device, threads)
