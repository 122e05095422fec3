"""ONNX export, metadata, parity validation and onnxruntime-only prediction."""
