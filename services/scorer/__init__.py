"""ONNX Runtime scorer service: model repository, sessions, xdrec Predict and the KServe v2 protocol."""
