"""PyTorch -> served artifacts: ``export`` (TorchScript, ONNX + ORT-optimised copy), ``variants`` (fp16, int8),
``validation`` (numeric parity vs PyTorch), ``benchmark``, and ``pipeline`` (the whole run, then register)."""
