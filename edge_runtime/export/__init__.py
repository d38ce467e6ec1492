"""Layer 4: the model leaves the box: ONNX export and onnxruntime sessions."""
