"""The embedded default backend: ONNX Runtime for ``.onnx``, PyTorch for TorchScript and state dicts."""

from __future__ import annotations

from .inprocess import InProcessAdapter


class SimpleAdapter(InProcessAdapter):
    name = "simple"  # serves every format (InProcessAdapter.formats)
