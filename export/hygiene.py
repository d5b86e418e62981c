"""Checks that an exported graph runs unchanged on onnxruntime and TensorRT.

* no control flow or data-dependent ops that TensorRT rejects or that split
  the network: ``If``, ``Loop``, ``NonZero``, ``ScatterElements``;
* every op is one TensorRT's ONNX parser supports (:data:`TENSORRT_OPS`,
  from the onnx-tensorrt operator support matrix for TensorRT 10);
* ``TopK`` k within TensorRT's limit (3840);
* ``onnx.checker`` passes;
* shape inference gives static shapes except the leading axis, which is
  the batch or derived from it (B x proposals); the graph inputs and outputs
  are named ``B`` there.  The only exception is the index list of
  ``NonMaxSuppression``, whose length is data dependent by definition and
  which is folded back into a fixed-size mask by ``ScatterND``.

``target="tensorrt"`` (the plain-op flavour of the graph, for TensorRT
builders without CUDA plugins such as TensorRT-RTX) is stricter: also no
``NonMaxSuppression`` or ``RoiAlign`` (which the parser turns into a plugin
or has no runner for), no op outside the default ONNX domain (custom or
plugin ops), every ``TopK`` k a constant within the limit, and no
exemption for ``NonMaxSuppression``'s index list in the shape check.
"""

from __future__ import annotations

FORBIDDEN_OPS = {"If", "Loop", "NonZero", "ScatterElements", "Scan", "SequenceConstruct"}
#: further ops the tensorrt target forbids: TensorRT-RTX makes RoiAlign a CUDA plugin and runs no NMS
TENSORRT_FORBIDDEN_OPS = FORBIDDEN_OPS | {"NonMaxSuppression", "RoiAlign"}
TARGETS = ("onnxruntime", "tensorrt")
#: ONNX domains of standard ops ("" and its alias "ai.onnx"); anything else is a custom or plugin op
STANDARD_DOMAINS = {"", "ai.onnx"}

#: ONNX ops (default domain) supported by TensorRT 10.x's ONNX parser (onnx-tensorrt docs/operators.md),
#: restricted to what a detector graph may reasonably contain (QuantizeLinear / DequantizeLinear: an int8 QDQ graph).
TENSORRT_OPS = {
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "CumSum", "DepthToSpace", "Div", "Einsum", "Elu",
    "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "HardSigmoid", "HardSwish",
    "Identity", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax",
    "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "Not", "OneHot", "Or", "Pad",
    "Pow", "PRelu", "QuantizeLinear", "DequantizeLinear", "Range", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "Relu", "Reshape", "Resize", "RoiAlign", "Round", "ScatterND", "Selu", "Shape", "Sigmoid", "Sign",
    "Sin", "Size", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh",
    "Tile", "TopK", "Transpose", "Unsqueeze", "Where", "Xor",
}
TENSORRT_MAX_TOPK = 3840


def check_graph(model, batch_axis_name: str = "B", target: str = "onnxruntime") -> list[str]:
    """Problems found in an ``onnx.ModelProto`` (an empty list means the graph is clean).

    target: ``"onnxruntime"`` or ``"tensorrt"``, the graph flavour whose rules apply (module docstring).
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    strict = target == "tensorrt"
    forbidden = TENSORRT_FORBIDDEN_OPS if strict else FORBIDDEN_OPS
    problems = []
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0]}")
    if strict:
        custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
        problems += [f"custom-domain (plugin) op {op}" for op in custom]
    standard = [n for n in model.graph.node if not strict or n.domain in STANDARD_DOMAINS]
    ops = {n.op_type for n in standard}
    problems += [f"forbidden op {op}" for op in sorted(ops & forbidden)]
    problems += [f"op {op} is not in TensorRT's supported list" for op in sorted(ops - TENSORRT_OPS - forbidden)]
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    for node in model.graph.node:
        if node.op_type == "TopK" and node.input[1] in constants:
            k = int(constants[node.input[1]].reshape(-1)[0])
            if k > TENSORRT_MAX_TOPK:
                problems.append(f"TopK {node.name} has k = {k} > {TENSORRT_MAX_TOPK}")
        elif node.op_type == "TopK" and strict:
            problems.append(f"TopK {node.name} has a k that is not a constant (cannot check k <= {TENSORRT_MAX_TOPK})")
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    island = set() if strict else _nms_island(inferred.graph)
    ends = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    values = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    for value in values:
        if value.name in island or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        for k, dim in enumerate(dims):
            static = dim.HasField("dim_value")
            leading = k == 0 and (dim.dim_param == batch_axis_name or value.name not in ends)
            if not (static or leading):
                problems.append(f"tensor {value.name} has a dynamic dimension {k} "
                                f"({dim.dim_param or 'unknown'})")
                break
    return problems


def _nms_island(graph) -> set:
    """Tensors computed from NonMaxSuppression's output up to (not including) a ScatterND's result."""
    island = {o for n in graph.node if n.op_type == "NonMaxSuppression" for o in n.output}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.op_type == "ScatterND":
                continue
            if any(i in island for i in node.input) and not set(node.output) <= island:
                island |= set(node.output)
                changed = True
    return island
