"""Inference backends with one interface: torch (transformers), onnxruntime, tensorrt."""
