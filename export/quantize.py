"""int8 static quantisation of an exported detector, for onnxruntime's CPU provider.

:func:`quantize_graph` turns the float32 onnxruntime flavour of a detector,
exported with its ReLU6s as plain ``Clip(0, 6)`` (``unit_clips=False``:
onnxruntime's quantiser handles ``Clip`` and ``Relu``, not the ``HardSigmoid``
unit clips), into a QDQ graph:

* onnxruntime's quantisation pre-processing first (shape inference, basic
  graph optimisation);
* weights int8, per output channel (symmetric) in a 7-bit range (``reduce_range``:
  x86 CPUs without VNNI multiply uint8 by int8 with ``VPMADDUBSW``, whose
  16-bit pair sums saturate with full-range weights; onnxruntime advises the
  reduced range there: on such a CPU it halved the boxes whose score crossed
  0.85 against the float graph, 43 to 22 of 1,400, at the same speed);
  activations uint8, per tensor (asymmetric), their ranges the min / max seen
  on the calibration slices (:data:`CALIBRATION_SLICES` of them);
* every op in the backbone, FPN, RPN head and box head (:data:`QUANTISED_SCOPES`)
  quantised, ``Clip``, ``Relu``, ``Add``, ``Resize`` and ``MaxPool`` included, so
  that int8 tensors flow from one convolution to the next without a float
  round trip (quantising only ``Conv``/``Gemm`` leaves Q/DQ pairs between float
  activations and gains little); also the ``Concat`` that stacks the two
  ``RoiAlign`` outputs (RoI and surroundings) for the box head;
* float32 stays: the input normalisation, the box predictor's two small
  ``Gemm`` s (class logits and box deltas, the inputs of the softmax and of box
  decoding), box decoding, both NMS and ``RoiAlign`` with its coordinates.

Calibration slices are either the built-in synthetic ones
(:func:`builtin_calibration`) or slices of TIFF/PNG stacks or images the user
names (:func:`calibration_from_files`), read with
:func:`~spinedet.runtime.stacks.open_stack` and turned into model inputs as
the runtime does (:func:`~spinedet.runtime.detector.model_tiles`).
"""

from __future__ import annotations

import collections
import math
import tempfile
from pathlib import Path

import numpy as np

from spinedet.runtime.contract import INPUT_NAME, ModelCard, intensity_range
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.files import file_sha256

#: ONNX node-name prefixes (the ExportableDetector modules they were traced from) whose ops are quantised
QUANTISED_SCOPES = ("/backbone/", "/rpn_head/", "/box_head/")
#: calibration slices unless told otherwise (the issue's measurements: about 10 are enough)
CALIBRATION_SLICES = 10
#: seed of the built-in calibration slices (spinedet.training.parity.builtin_inputs)
CALIBRATION_SEED = 0


def builtin_calibration(card: ModelCard, count: int = CALIBRATION_SLICES) -> tuple[np.ndarray, dict]:
    """``count`` built-in synthetic model inputs ``(count, C, H, W)`` and their description for the card."""
    from spinedet.training.parity import builtin_inputs

    slices = builtin_inputs(card.input_size, card.channels, count=count + 1, seed=CALIBRATION_SEED)[:count]
    return slices, {"source": "built-in synthetic slices (spinedet.training.parity.builtin_inputs)",
                    "seed": CALIBRATION_SEED, "slices": int(len(slices))}


def calibration_from_files(paths, card: ModelCard, count: int = CALIBRATION_SLICES) -> tuple[np.ndarray, dict]:
    """Model inputs from the user's stacks or images, made as the runtime makes them; and their description.

    The slices are spread evenly over the files and, within a stack, over its
    depth; each is normalised with its stack's intensity range (the card's
    percentiles), given its depth context, resampled to the model's pixel size
    and tiled like ``spine-run`` does; of a tiled slice the tile with the most
    signal (highest mean) is taken.  Any problem with a file (unreadable, not an
    image, blank, an unusable pixel size) is a one-line SpineDetError naming it.
    """
    from spinedet.runtime.context import neighbour_projection, reach_slices
    from spinedet.runtime.detector import model_tiles
    from spinedet.runtime.stacks import open_stack
    from spinedet.runtime.voxels import check_scale

    paths = [Path(p) for p in paths]
    if not paths:
        raise SpineDetError("no calibration files given")
    per_file = max(1, math.ceil(count / len(paths)))
    inputs, described = [], []
    for path in paths:
        with open_stack(path) as stack:
            voxel = stack.voxel_size
            check_scale(voxel, stack.shape[1:], card)
            low, high = intensity_range(stack, card)
            if high <= low:
                raise SpineDetError(f"image is blank: every pixel is {low:g}; nothing to calibrate on", path)
            picks = np.unique(np.linspace(0, len(stack) - 1, num=min(per_file, len(stack))).round().astype(int))
            reach = reach_slices(card.depth_context_um, voxel.z_um) if card.channels > 1 else None
            for k in picks:
                context = None if reach is None else [neighbour_projection(stack, int(k), reach)]
                try:
                    tiles, _, _ = model_tiles([stack[int(k)]], card, voxel.x_um, (low, high), context)
                except SpineDetError as exc:
                    raise exc.with_path(path) from None
                inputs.append(max(tiles, key=lambda t: float(t[0].mean())))
            described.append({"file": path.name, "sha256": file_sha256(path) if path.is_file() else None,
                              "slices": [int(k) for k in picks]})
    inputs = np.stack(inputs[:max(count, len(paths))]).astype(np.float32)
    return inputs, {"source": "user files, normalised and tiled as spine-run does", "files": described,
                    "slices": int(len(inputs))}


def quantize_graph(fp32_path, out_path, inputs: np.ndarray) -> dict:
    """Write the int8 QDQ graph of ``fp32_path`` (float32, ``Clip`` activations) to ``out_path``.

    inputs: ``(N, C, H, W)`` calibration model inputs.  Returns what was done, for the card.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration inputs, one slice per run."""

        def __init__(self, inputs):
            self._items = iter([{INPUT_NAME: np.ascontiguousarray(x[None], dtype=np.float32)} for x in inputs])

        def get_next(self):
            return next(self._items, None)

    with tempfile.TemporaryDirectory(prefix="spine-quantize-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        graph = onnx.load(str(prepared)).graph
        nodes = [n for n in graph.node if n.name.startswith(QUANTISED_SCOPES)]
        if not nodes:
            raise SpineDetError("no backbone, RPN or box head nodes found to quantise (not an exported detector?)",
                                fp32_path)
        producers = {output: n for n in graph.node for output in n.output}
        # the box head's input: the RoI and its surroundings pooled, stacked on the channels.  Stacked in uint8
        # (each RoiAlign's output quantised first) it moves a quarter of the bytes of float32
        nodes += [n for n in graph.node if n.op_type == "Concat" and n.input
                  and all(getattr(producers.get(i), "op_type", None) == "RoiAlign" for i in n.input)]
        quantize_static(str(prepared), str(out_path), Reader(inputs), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=sorted({n.op_type for n in nodes}), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                        nodes_to_quantize=[n.name for n in nodes], calibrate_method=CalibrationMethod.MinMax,
                        calibration_providers=["CPUExecutionProvider"])
    written = onnx.load(str(out_path)).graph
    ops = collections.Counter(n.op_type for n in written.node)
    return {"format": "QDQ (onnxruntime.quantization.quantize_static after quant_pre_process)",
            "weights": "int8 in a 7-bit range (reduce_range), per output channel, symmetric",
            "activations": "uint8, per tensor, asymmetric",
            "calibration_method": "MinMax",
            "quantised": "backbone, FPN, RPN head, box head and its pooled input (" +
                         ", ".join(sorted({n.op_type for n in nodes})) + ")",
            "float": "input normalisation, box predictor (class logits, box deltas), box decoding, NMS, RoiAlign",
            "quantize_nodes": int(ops["QuantizeLinear"]), "dequantize_nodes": int(ops["DequantizeLinear"])}
