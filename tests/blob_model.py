"""A small but real ONNX spine detector for tests, built with onnx.helper.

It follows the spinedet model contract (input ``images [B, 1, H, W]``,
outputs ``boxes [B, K, 4]``, ``scores [B, K]``) and computes its answer from
the pixels: every local intensity maximum brighter than ``min_peak`` (in
normalised units) is a detection, boxed by a square of half-width
``half_box`` px around it, with the peak's normalised intensity times
``score_scale`` as score.
A tiny ramp over pixel positions breaks ties, so a plateau (intensities
clipped at 1 by normalisation) gives one peak, at its top-left pixel.
Bright round blobs on a dark background are therefore found where they are.

``depth_context_um > 0`` makes a two-channel model (``[B, 2, H, W]``) that
looks for its peaks in the *context* channel only, so a blob in one slice is
found in every slice whose neighbour projection holds it: a direct test that
the runtime feeds the right context.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def build_blob_model(path, size=(128, 128), k: int = 20, half_box: float = 6.0, window: int = 9,
                     min_peak: float = 0.3, pixel_size_um: float = 0.1, batch=None, card_extra=None,
                     score_scale: float = 1.0, depth_context_um: float = 0.0) -> Path:
    """Write the ONNX file and its card (same stem, .json) to ``path``; return the ONNX path."""
    import onnx
    from onnx import TensorProto, helper

    h, w = size
    pad = window // 2
    b = "B" if batch is None else batch
    channels = 2 if depth_context_um > 0 else 1
    source = "images" if channels == 1 else "plane"
    nodes = [] if channels == 1 else [helper.make_node("Slice", ["images", "second", "third", "channel_axis"],
                                                       ["plane"])]
    nodes += [
        helper.make_node("Add", [source, "ramp"], ["ramped"]),
        helper.make_node("MaxPool", ["ramped"], ["pooled"], kernel_shape=[window, window], strides=[1, 1],
                         pads=[pad, pad, pad, pad]),
        helper.make_node("Equal", ["ramped", "pooled"], ["is_max"]),
        helper.make_node("Greater", [source, "min_peak"], ["bright"]),
        helper.make_node("And", ["is_max", "bright"], ["is_peak"]),
        helper.make_node("Where", ["is_peak", source, "zero"], ["peak_map"]),
        helper.make_node("Reshape", ["peak_map", "flat_shape"], ["flat"]),
        helper.make_node("TopK", ["flat", "k"], ["peaks", "index"], axis=1, largest=1, sorted=1),
        helper.make_node("Mul", ["peaks", "score_scale"], ["scores"]),
        helper.make_node("Div", ["index", "width"], ["row"]),
        helper.make_node("Mod", ["index", "width"], ["col"]),
        helper.make_node("Cast", ["row"], ["y"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["col"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "half_pixel"], ["cx"]),
        helper.make_node("Add", ["y", "half_pixel"], ["cy"]),
        helper.make_node("Sub", ["cx", "half_box"], ["x0"]),
        helper.make_node("Sub", ["cy", "half_box"], ["y0"]),
        helper.make_node("Add", ["cx", "half_box"], ["x1"]),
        helper.make_node("Add", ["cy", "half_box"], ["y1"]),
    ]
    for name in ("x0", "y0", "x1", "y1"):
        nodes.append(helper.make_node("Unsqueeze", [name, "last_axis"], [name + "_u"]))
    nodes.append(helper.make_node("Concat", ["x0_u", "y0_u", "x1_u", "y1_u"], ["boxes"], axis=2))
    ramp = -2.5e-7 * np.arange(h * w, dtype=np.float32)  # > float32 spacing at 1.0
    inits = [
        helper.make_tensor("ramp", TensorProto.FLOAT, [1, 1, h, w], ramp.tolist()),
        helper.make_tensor("min_peak", TensorProto.FLOAT, [], [min_peak]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("score_scale", TensorProto.FLOAT, [], [score_scale]),
        helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, h * w]),
        helper.make_tensor("k", TensorProto.INT64, [1], [k]),
        helper.make_tensor("width", TensorProto.INT64, [], [w]),
        helper.make_tensor("half_pixel", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("half_box", TensorProto.FLOAT, [], [half_box]),
        helper.make_tensor("last_axis", TensorProto.INT64, [1], [2]),
    ]
    if channels > 1:
        inits += [helper.make_tensor("second", TensorProto.INT64, [1], [1]),
                  helper.make_tensor("third", TensorProto.INT64, [1], [2]),
                  helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(
        nodes, "blob_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, channels, h, w])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [b, k, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, k])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    card = {"input_size": [h, w], "pixel_size_um": pixel_size_um, "max_detections": k, "tile_overlap_px": 32,
            "name": "blob-test", "metrics": {}, "depth_context_um": depth_context_um, **(card_extra or {})}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def blob_image(shape, centres, sigma: float = 2.5, amplitude: float = 1000.0, background: float = 100.0,
               noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A float32 ``(Y, X)`` image with Gaussian blobs at ``centres`` [(x, y), ...] in pixels."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    image = np.full(shape, background, dtype=np.float32)
    for x, y in centres:
        image += amplitude * np.exp(-((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2) / (2 * sigma ** 2))
    if noise:
        image += np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    return image
