"""What a model artifact can be: its file formats and numeric precisions, defined once.

The registry's metadata, the upload API, the registry's checks, the packaging pipeline, the serving
precision setting and the in-process adapters all take these from here, so adding a format or a
precision is one edit that every layer sees.
"""

from __future__ import annotations

from typing import Literal, get_args

ArtifactFormat = Literal["onnx", "torchscript", "state_dict"]
"""onnx: an ONNX graph; torchscript: a ``torch.jit`` archive; state_dict: weights read with
``torch.load(weights_only=True)`` into a model-zoo architecture. None of them runs code from the file."""
Precision = Literal["fp32", "fp16", "int8"]

ARTIFACT_FORMATS: tuple[ArtifactFormat, ...] = get_args(ArtifactFormat)
"""Every format, in the order the in-process adapters prefer them."""
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
DEFAULT_PRECISION: Precision = "fp32"
"""What a version always has, and what serving falls back to when the wanted precision is missing."""
