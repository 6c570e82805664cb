"""ONNX Runtime parity evidence: random quantized CNN zoo, ORT runner, and the parity test."""
