"""Export to ONNX / OpenVINO, the backends that run it, and generation."""
