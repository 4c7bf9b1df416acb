"""A registered ensemble as Triton entries: an ``ensemble_scheduling`` config over the member models'
entries, and the combiner as a python-backend step (triton_combiner_model.py, shipped in this package).

Triton's ensemble takes the members' model tensors (bars features and token ids are computed by the
service before any backend sees them), routes them to the member steps, and the members' first outputs
to the combiner. Unlike the service's own ensemble path, Triton's needs as many texts as bars windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..signature import ModelSignature
from .triton_config import TRITON_DTYPES, TritonConfigOptions, effective_max_batch_size

COMBINER_MODEL_PATH = Path(__file__).with_name("triton_combiner_model.py")
"""Copied verbatim as the combiner step's model.py."""
ENSEMBLE_OUTPUTS = ("prediction", "confidence", "price", "sentiment_score")
"""The combiner's outputs (float64, one per row), as ensemble/combiners.py names them."""
_PRICE_TENSOR, _SCORES_TENSOR = "_member_price", "_member_probabilities"
"""Internal tensors between the member steps and the combiner step."""


@dataclass(frozen=True)
class TritonMember:
    """A member as Triton serves it: its repository entry and its signature."""

    entry: str
    signature: ModelSignature


def ensemble_max_batch_size(members: list[TritonMember], options: TritonConfigOptions) -> int:
    """What every member batches: Triton refuses an ensemble that batches more than a step."""
    sizes = [effective_max_batch_size(member.signature, options) for member in members]
    if min(sizes) <= 0:
        raise ValueError("a Triton ensemble needs members with a dynamic batch dimension")
    return min(sizes)


def render_combiner_config(entry: str, price: TritonMember, sentiment: TritonMember, combiner_json: str,
                           positive_index: int, negative_index: int, max_batch: int) -> str:
    price_out, scores_out = price.signature.outputs[0], sentiment.signature.outputs[0]
    inputs = [_tensor("price", price_out.dtype, price_out.row_shape),
              _tensor("probabilities", scores_out.dtype, scores_out.row_shape)]
    outputs = [_tensor(name, "float64", (1,)) for name in ENSEMBLE_OUTPUTS]
    return "\n".join([
        f'name: "{entry}"', 'backend: "python"', f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(inputs) + "\n]", "output [\n" + ",\n".join(outputs) + "\n]",
        "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]",
        _parameter("combiner", combiner_json), _parameter("positive_index", str(positive_index)),
        _parameter("negative_index", str(negative_index)),
    ]) + "\n"


def render_ensemble_config(entry: str, price: TritonMember, sentiment: TritonMember, combiner_entry: str,
                           max_batch: int) -> str:
    """``platform: "ensemble"``: inputs are the members' inputs, outputs the combiner's."""
    inputs = [_tensor(spec.name, spec.dtype, spec.row_shape)
              for spec in price.signature.inputs + sentiment.signature.inputs]
    outputs = [_tensor(name, "float64", (1,)) for name in ENSEMBLE_OUTPUTS]
    steps = [
        _step(price.entry, {spec.name: spec.name for spec in price.signature.inputs},
              {price.signature.outputs[0].name: _PRICE_TENSOR}),
        _step(sentiment.entry, {spec.name: spec.name for spec in sentiment.signature.inputs},
              {sentiment.signature.outputs[0].name: _SCORES_TENSOR}),
        _step(combiner_entry, {"price": _PRICE_TENSOR, "probabilities": _SCORES_TENSOR},
              {name: name for name in ENSEMBLE_OUTPUTS}),
    ]
    return "\n".join([
        f'name: "{entry}"', 'platform: "ensemble"', f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(inputs) + "\n]", "output [\n" + ",\n".join(outputs) + "\n]",
        "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}",
    ]) + "\n"


def _step(model: str, input_map: dict[str, str], output_map: dict[str, str]) -> str:
    maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in input_map.items()]
    maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in output_map.items()]
    return f'    {{\n      model_name: "{model}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }"


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> str:
    dims = dims or (1,)
    return (f'  {{\n    name: "{name}"\n    data_type: {TRITON_DTYPES[dtype]}\n'
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")


def _parameter(key: str, value: str) -> str:
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(value)} }}\n}}'


