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
"""

from __future__ import annotations

FORBIDDEN_OPS = {"If", "Loop", "NonZero", "ScatterElements", "Scan", "SequenceConstruct"}

#: ONNX ops (default domain) supported by TensorRT 10.x's ONNX parser (onnx-tensorrt docs/operators.md),
#: restricted to what a detector graph may reasonably contain.
TENSORRT_OPS = {
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "CumSum", "DepthToSpace", "Div",
    "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND",
    "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish",
    "Identity", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "Not",
    "OneHot", "Or", "Pad", "Pow", "PRelu", "Range", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "Relu", "Reshape", "Resize", "RoiAlign", "Round", "ScatterND",
    "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where", "Xor",
}
TENSORRT_MAX_TOPK = 3840


def check_graph(model, batch_axis_name: str = "B") -> list[str]:
    """Problems found in an ``onnx.ModelProto`` (an empty list means the graph is clean)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    problems = []
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0]}")
    ops = {n.op_type for n in model.graph.node}
    problems += [f"forbidden op {op}" for op in sorted(ops & FORBIDDEN_OPS)]
    problems += [f"op {op} is not in TensorRT's supported list" for op in sorted(ops - TENSORRT_OPS - FORBIDDEN_OPS)]
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
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    island = _nms_island(inferred.graph)
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
