"""spinedet.export: trace trained weights to ONNX and build TensorRT engines (needs the [export] extra)."""
