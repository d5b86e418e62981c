"""Trained weights back out of an exported ONNX graph, to fine-tune a model whose checkpoint is gone.

The shipped default model is an ONNX file; its ``.pt`` checkpoint is not
shipped.  :func:`model_from_onnx` rebuilds the torch detector the graph came
from: named initializers (``backbone.*``, ``rpn_head.*``, ``box_head.*``,
``box_predictor.*``, as the export's ``ExportableDetector``
names its modules) are the weights (a tensor equal to another, zeros say,
is stored once and named again by an ``Identity`` node).  Each frozen
BatchNorm was folded into a ``Mul`` by a scale and an ``Add`` of a bias after
its convolution, and comes back as a BatchNorm that computes exactly that
scale and bias.  Where the backbone's ReLU6 activations were exported as unit
clips (``HardSigmoid``, see the export's ``UnitClip``), the
convolutions after them get their weights divided by 6 again.  The model
config is the card's ``export.model_config`` (recorded by ``spine-export``)
or, for older cards, what the card and the weight shapes state, with the
other fields at their defaults.

Nothing is trusted blindly: the rebuilt model must reproduce the graph's
detections (:func:`~spinedet.training.parity.parity_report`), or it is
refused.  An fp16 graph gives fp16-rounded weights (about 3 significant
digits), which is fine to start training from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spinedet.runtime.contract import load_card
from spinedet.runtime.errors import SpineDetError

from .backbones import relu6_consumers
from .config import ModelConfig
from .model import build_model

#: ExportableDetector module prefix -> FasterRCNN module prefix
PREFIXES = {"backbone.": "backbone.", "rpn_head.": "rpn.head.", "box_head.": "roi_heads.box_head.",
            "box_predictor.": "roi_heads.box_predictor."}


def _torch_key(onnx_name: str) -> str | None:
    """The FasterRCNN state-dict key of an ONNX initializer named after an ExportableDetector module."""
    prefix = next((p for p in PREFIXES if onnx_name.startswith(p)), None)
    return None if prefix is None else PREFIXES[prefix] + onnx_name[len(prefix):]


def _config_from_card(card, weights: dict):
    """The ModelConfig of an exported model: the card's record of it, else card fields + weight shapes."""
    recorded = card.export.get("model_config")
    if recorded:
        return ModelConfig.from_dict(dict(recorded))
    stated = {k: card.export[k] for k in ("backbone", "fpn_channels", "roi_levels", "roi_context_px")
              if k in card.export}
    stated.update(input_size=tuple(card.input_size), pixel_size_um=card.pixel_size_um,
                  low_percentile=card.low_percentile, high_percentile=card.high_percentile,
                  max_detections=card.max_detections, depth_context_um=card.depth_context_um)
    if "box_head.fc7.weight" in weights:
        stated["representation_size"] = int(weights["box_head.fc7.weight"].shape[0])
    if "rpn_head.conv.0.0.weight" in weights:
        stated["fpn_channels"] = int(weights["rpn_head.conv.0.0.weight"].shape[0])
    return ModelConfig(**stated)


def _folded_batchnorms(graph, weights: dict) -> dict:
    """Conv weight name -> (scale, bias) arrays of the ``Mul``/``Add`` pair that follows the convolution."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant_operand(node):
        others = [n for n in node.input if n in weights]
        return weights[others[0]] if len(others) == 1 else None

    folded = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Mul":
            continue
        mul = after[0]
        scale = constant_operand(mul)
        then = consumers.get(mul.output[0], [])
        if scale is None or len(then) != 1 or then[0].op_type != "Add":
            continue
        bias = constant_operand(then[0])
        if bias is not None:
            folded[node.input[1]] = (scale.reshape(-1), bias.reshape(-1))
    return folded


def _batchnorm_after(model) -> dict:
    """Conv weight name -> name of the frozen BatchNorm that directly follows it in module order."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    pairs, last_conv = {}, None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            last_conv = name
        elif isinstance(module, FrozenBatchNorm2d) and last_conv is not None:
            pairs[f"{last_conv}.weight"] = name
            last_conv = None
    return pairs


def _load(onnx_path: Path):
    """``(card, graph, weights, config)`` of an exported model; weights: float32 arrays by initializer name."""
    import onnx
    from onnx import numpy_helper

    if not onnx_path.is_file():
        raise SpineDetError("no such model file", onnx_path)
    card = load_card(onnx_path)
    if card.precision == "int8":
        raise SpineDetError("an int8 model's weights are rounded to 8 bits and cannot be recovered: use the float "
                            f"model it was made from ({card.export.get('checkpoint', 'see its card')})", onnx_path)
    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:
        raise SpineDetError(f"not an ONNX file ({type(exc).__name__})", onnx_path) from None
    weights = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    for node in graph.node:  # equal tensors are stored once and named again by Identity nodes
        if node.op_type == "Identity" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    config = _config_from_card(card, weights)
    proposals = card.export.get("proposals_per_slice")
    if proposals:
        config = replace(config, rpn_post_nms_top_n_test=int(proposals))
    return card, graph, weights, config


def config_from_onnx(onnx_path):
    """The ModelConfig of an exported model (see the module docstring), without rebuilding the model."""
    return _load(Path(onnx_path))[3]


def model_from_onnx(onnx_path, check: bool = True):
    """``(model, config)``: the torch FasterRCNN (eval mode, float32) an exported graph was traced from.

    The config's inference proposals per slice are the export's
    (``card.export['proposals_per_slice']``).  check: run the parity check
    against the graph and raise SpineDetError if the model disagrees.
    """
    onnx_path = Path(onnx_path)
    card, graph, weights, config = _load(onnx_path)
    model = build_model(config, pretrained=False).eval()
    target = model.state_dict()
    state = {}
    for name, value in weights.items():
        key = _torch_key(name)
        if key in target and tuple(target[key].shape) == value.shape:
            state[key] = torch.from_numpy(value)
    bn_of_conv = _batchnorm_after(model)
    for conv_weight, (scale, bias) in _folded_batchnorms(graph, weights).items():
        bn = bn_of_conv.get(_torch_key(conv_weight))
        if bn is None:
            continue
        eps = model.get_submodule(bn).eps  # it computes scale = weight / sqrt(var + eps), bias - mean * scale
        state[f"{bn}.weight"] = torch.from_numpy(scale.copy())
        state[f"{bn}.bias"] = torch.from_numpy(bias.copy())
        state[f"{bn}.running_mean"] = torch.zeros(len(scale))
        state[f"{bn}.running_var"] = torch.full((len(scale),), 1.0 - eps)
    missing = [k for k in target if k not in state]
    if missing:
        raise SpineDetError(f"cannot recover the weights: {len(missing)} tensors are not in the graph "
                            f"(first {missing[0]})", onnx_path)
    model.load_state_dict(state, strict=True)
    sampling = card.export.get("roi_sampling_ratio")
    if sampling:  # exported with another RoI Align sampling than training's (spine-export --roi-sampling)
        model.roi_heads.box_roi_pool.sampling_ratio = int(sampling)
    if any(node.op_type == "HardSigmoid" for node in graph.node):  # exported with unit clips: undo their x 6
        with torch.no_grad():
            for conv in {id(c): c for _, _, c in relu6_consumers(model.backbone)}.values():
                conv.weight.div_(6.0)
    if check:
        from .parity import parity_report

        report = parity_report(model, onnx_path, card, batches=(2,))
        if not report["ok"]:
            raise SpineDetError(f"the recovered weights do not reproduce the graph: {report['summary']}", onnx_path)
    return model, config
