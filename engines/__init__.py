"""Export Molmo2 to ONNX, build TensorRT engines with manifests, inspect and benchmark them."""
