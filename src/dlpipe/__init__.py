"""dlpipe: staged deep-learning pipelines for images, with ONNX export and strict parity."""

__version__ = "0.1.0"
