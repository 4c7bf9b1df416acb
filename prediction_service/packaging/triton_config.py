"""Triton model configuration (config.pbtxt) generated from a ModelSignature.

Two ways to serve an artifact in Triton:

* a native backend: ``platform: "onnxruntime_onnx"`` for ONNX, ``platform: "pytorch_libtorch"`` for
  TorchScript (the full Triton image ships both);
* the python backend (``backend: "python"``) running ``triton_python_model.py``, which executes the
  ONNX file with ONNX Runtime. This is what the tritonserver bundled with nvidia-pytriton can run,
  since it ships no onnxruntime backend.

``choose_platform`` picks one from what the backend directory contains.

Tree models (packaging/trees.py) have one artifact, an ONNX graph of ai.onnx.ml TreeEnsemble operators: both
ONNX ways run it (ONNX Runtime implements the ML domain), and ``pytorch_libtorch`` cannot, since a tree
ensemble has no TorchScript form here; ``choose_platform`` never picks it for a version without TorchScript.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from ..signature import ModelSignature, TensorSpec

PYTHON_MODEL_FILE = "model.py"
ONNX_MODEL_FILE = "model.onnx"
TORCHSCRIPT_MODEL_FILE = "model.pt"
WARMUP_DIR = "warmup"
WARMUP_DYNAMIC_DIM = 4
"""Size given to dynamic non-batch dims in warm-up data (Triton's warm-up shapes are fixed)."""


class TritonPlatform(str, Enum):
    ONNXRUNTIME = "onnxruntime_onnx"
    LIBTORCH = "pytorch_libtorch"
    PYTHON_ONNX = "python"
    """The python backend running the ONNX file with ONNX Runtime (triton_python_model.py)."""

    @property
    def artifact_format(self) -> str:
        return "torchscript" if self is TritonPlatform.LIBTORCH else "onnx"

    @property
    def model_file(self) -> str:
        """File name Triton expects inside the version directory."""
        return TORCHSCRIPT_MODEL_FILE if self is TritonPlatform.LIBTORCH else ONNX_MODEL_FILE


# Triton's names for the signature dtypes (model_config.proto DataType).
TRITON_DTYPES: dict[str, str] = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
}


class TritonConfigOptions(BaseModel):
    """How the model is scheduled in Triton (everything config.pbtxt needs besides the tensors)."""

    platform: TritonPlatform = TritonPlatform.PYTHON_ONNX
    max_batch_size: int = Field(32, ge=0)
    """Upper bound from the settings; the signature's own max_batch_size caps it further. 0 = no batching."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes the dynamic batcher aims for; empty = max_batch_size and its half."""
    max_queue_delay_microseconds: int = Field(500, ge=0)
    """Longest a request waits in Triton's dynamic batcher for others to join."""
    instance_count: int = Field(1, ge=1)
    instance_kind: str = Field("KIND_CPU", pattern="^KIND_(CPU|GPU|AUTO)$")
    intra_op_threads: int = Field(1, ge=0)
    """Threads per ONNX Runtime run in the python backend (0 = runtime default)."""
    warmup_batch_sizes: tuple[int, ...] = ()
    """Batch sizes Triton runs (model_warmup) before it reports the model ready; empty = none."""
    warmup_iterations: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _preferred_within_max(self) -> "TritonConfigOptions":
        too_big = [s for s in self.preferred_batch_sizes if s < 1 or s > max(self.max_batch_size, 1)]
        if too_big:
            raise ValueError(f"preferred_batch_sizes {too_big} must be within 1..max_batch_size")
        return self


def choose_platform(backend_directory: Path | None, artifact_formats: set[str]) -> TritonPlatform:
    """The best way to serve the available artifact formats with the backends installed.

    Native backends win when their directory exists (``<backend_directory>/onnxruntime``,
    ``/pytorch``); otherwise the python backend runs the ONNX file.
    """
    installed = set()
    if backend_directory is not None and backend_directory.is_dir():
        installed = {p.name for p in backend_directory.iterdir() if p.is_dir()}
    if "onnx" in artifact_formats and "onnxruntime" in installed:
        return TritonPlatform.ONNXRUNTIME
    if "torchscript" in artifact_formats and "pytorch" in installed:
        return TritonPlatform.LIBTORCH
    if "onnx" in artifact_formats:
        return TritonPlatform.PYTHON_ONNX
    raise ValueError(
        f"no Triton backend can serve artifact formats {sorted(artifact_formats)} with the backends in "
        f"{backend_directory} ({sorted(installed) or 'none'}); export an ONNX artifact"
    )


def effective_max_batch_size(signature: ModelSignature, options: TritonConfigOptions) -> int:
    """Triton's max_batch_size: the smaller of the settings' and the signature's; 0 if any batch dim is fixed."""
    if options.max_batch_size == 0:
        return 0
    if any(spec.shape[0] != -1 for spec in signature.inputs + signature.outputs):
        return 0  # a fixed leading dim is part of the model's shape, not a batch Triton may vary
    return min(options.max_batch_size, signature.max_batch_size)


def render_config(model_name: str, signature: ModelSignature, options: TritonConfigOptions) -> str:
    """config.pbtxt text for ``model_name`` (the Triton repository entry name)."""
    max_batch = effective_max_batch_size(signature, options)
    lines = [f'name: "{model_name}"']
    if options.platform is TritonPlatform.PYTHON_ONNX:
        lines.append('backend: "python"')
    else:
        lines.append(f'platform: "{options.platform.value}"')
    lines.append(f"max_batch_size: {max_batch}")
    lines.append(_tensor_block("input", signature.inputs, max_batch > 0))
    lines.append(_tensor_block("output", signature.outputs, max_batch > 0))
    if max_batch > 0:
        preferred = options.preferred_batch_sizes or _default_preferred(max_batch)
        lines.append(
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {', '.join(str(s) for s in preferred)} ]\n"
            f"  max_queue_delay_microseconds: {_queue_delay_us(signature, options)}\n"
            "}"
        )
    lines.append(
        "instance_group [\n"
        f"  {{\n    count: {options.instance_count}\n    kind: {options.instance_kind}\n  }}\n"
        "]"
    )
    if options.platform is TritonPlatform.PYTHON_ONNX:
        lines.append(_parameter("onnx_file", ONNX_MODEL_FILE))
        lines.append(_parameter("intra_op_threads", str(options.intra_op_threads)))
    if options.warmup_batch_sizes and max_batch > 0:
        lines.append(_warmup_block(signature, options, max_batch))
    return "\n".join(lines) + "\n"


def warmup_files(signature: ModelSignature) -> dict[str, bytes]:
    """``<entry>/warmup/<file>`` contents: one row per input, raw and row-major (Triton repeats it per
    batch element). The rows are the same synthetic inputs the in-process warm-up uses."""
    row = signature.synthetic_inputs(1, dynamic_dim=WARMUP_DYNAMIC_DIM)
    return {_warmup_file(index): row[spec.name][0].tobytes() for index, spec in enumerate(signature.inputs)}


def _warmup_file(index: int) -> str:
    return f"input_{index}"  # not the tensor name: it becomes a file name


def _warmup_block(signature: ModelSignature, options: TritonConfigOptions, max_batch: int) -> str:
    entries = []
    for size in sorted({min(size, max_batch) for size in options.warmup_batch_sizes}):
        inputs = []
        for index, spec in enumerate(signature.inputs):
            dims = [WARMUP_DYNAMIC_DIM if d == -1 else d for d in spec.row_shape] or [1]
            inputs.append(
                "    inputs {\n"
                f'      key: "{spec.name}"\n'
                "      value: {\n"
                f"        data_type: {TRITON_DTYPES[spec.dtype]}\n"
                f"        dims: [ {', '.join(str(d) for d in dims)} ]\n"
                f'        input_data_file: "{_warmup_file(index)}"\n'
                "      }\n"
                "    }"
            )
        entries.append(
            "  {\n"
            f'    name: "batch_{size}"\n'
            f"    batch_size: {size}\n" + "\n".join(inputs) + "\n"
            f"    count: {options.warmup_iterations}\n"
            "  }"
        )
    return "model_warmup [\n" + ",\n".join(entries) + "\n]"


def _queue_delay_us(signature: ModelSignature, options: TritonConfigOptions) -> int:
    """The model's own batch delay when its signature sets one, else the options' (the server's)."""
    if signature.batch_delay_ms is not None:
        return int(round(signature.batch_delay_ms * 1000))
    return options.max_queue_delay_microseconds


def _tensor_block(kind: str, specs: list[TensorSpec], batched: bool) -> str:
    entries = []
    for spec in specs:
        dims = spec.row_shape if batched else spec.shape
        # A scalar per row (shape [-1]) is dims [ 1 ] with reshape to [] so clients send [batch].
        reshape = ""
        if not dims:
            dims, reshape = (1,), "\n    reshape: { shape: [ ] }"
        entries.append(
            "  {\n"
            f'    name: "{spec.name}"\n'
            f"    data_type: {TRITON_DTYPES[spec.dtype]}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]{reshape}\n"
            "  }"
        )
    return f"{kind} [\n" + ",\n".join(entries) + "\n]"


def _parameter(key: str, value: str) -> str:
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def _default_preferred(max_batch: int) -> list[int]:
    # Small preferred sizes (1, 2) would dispatch lone requests at once and defeat batching.
    return sorted({s for s in (max_batch // 2, max_batch) if s >= 2}) or [max_batch]
