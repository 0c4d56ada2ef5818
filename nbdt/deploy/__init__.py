"""Deployment: ONNX export and runtime, pruning, quantisation and their measures."""
