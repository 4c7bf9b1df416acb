"""The /v1 JSON API's codec: a PredictRequest body -> (Selector, tensors); an InferenceResult -> its JSON.

``inputs`` (a batch), ``instances`` (rows), ``instance`` (one row), ``text`` or ``bars`` (rows of
``[o, h, l, c, v]``, or named columns ``{"open": [...], ...}``) become the tensors the data plane takes.
Instances are stacked here; text and bars pass as sent, for the model's own step; the data plane validates
everything against the signature. ``priority`` (1 the highest, 0 the default) and ``n_steps`` go with them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError

from ..errors import InvalidInput
from ..types import InferenceResult, RawInput, Selector
from .schemas import PredictRequest


class DecodedPredict(NamedTuple):
    selector: Selector
    inputs: dict[str, Any]
    priority: int = 0
    """The body's ``priority`` (1 is the highest); 0 when it names none."""
    n_steps: int | None = None
    """The body's ``n_steps``: the first steps of a forecaster's horizon; None: all of them."""


def decode_predict(body: Any, max_rows: int) -> DecodedPredict:
    try:
        request = PredictRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput("request does not match the predict schema",
                           {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]}) from exc
    selector = Selector(request.version, request.stage, request.routing_key)
    priority = request.priority or 0
    if request.text is not None:
        texts = [request.text] if isinstance(request.text, str) else request.text
        if not texts:
            raise InvalidInput("empty batch: text is empty")
        return DecodedPredict(selector, {RawInput.TEXT: texts}, priority, request.n_steps)
    if request.bars is not None:
        # As sent: the model's bars step checks its size from the lists' lengths, then converts rows or named
        # columns to an array and checks columns and finiteness (serving/processing.py), off the event loop when large.
        return DecodedPredict(selector, {RawInput.BARS: request.bars}, priority, request.n_steps)
    if request.inputs is not None:
        return DecodedPredict(selector, request.inputs, priority, request.n_steps)
    rows = [request.instance] if request.instance is not None else request.instances
    if not rows:
        raise InvalidInput("empty batch: instances is empty")
    if len(rows) > max_rows:  # before numpy sees them: a huge batch costs nothing
        raise InvalidInput(f"{len(rows)} instances exceed the limit of {max_rows}",
                           {"rows": len(rows), "max_rows": max_rows})
    return DecodedPredict(selector, _stack_instances(rows), priority, request.n_steps)


def _stack_instances(rows: list[Any]) -> dict[str, Any]:
    if all(isinstance(row, dict) for row in rows):
        names = list(rows[0])
        for row in rows:
            if set(row) != set(names):
                raise InvalidInput("instance keys differ between rows", {"expected": sorted(names),
                                                                         "got": sorted(row)})
        return {name: [row[name] for row in rows] for name in names}
    if any(isinstance(row, dict) for row in rows):
        raise InvalidInput("mix of keyed and bare instances")
    return {RawInput.UNNAMED: rows}


def encode_result(result: InferenceResult) -> dict[str, Any]:
    """orjson serialises the numpy outputs directly (OPT_SERIALIZE_NUMPY in responses.py)."""
    return {
        "model": result.model, "version": result.version, "stage": result.stage, "arm": result.arm,
        "experiment_id": result.experiment_id, "request_id": result.request_id,
        "inference_time_ms": result.inference_time_ms, "outputs": result.outputs,
        "predictions": result.predictions, "provenance": result.provenance.as_dict(),
    }
