"""JSON bodies validated into pydantic models by routes that admit the caller before reading them.

FastAPI reads a declared body parameter whole before it runs any dependency, so a route with one
checks the API key only after an unauthenticated caller has sent (and the worker has buffered) all of
it. Routes that take a body therefore declare none: the key dependency runs on the headers, then the
route reads its body here under its own limit, and documents it with ``json_body_openapi``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..settings import LimitSettings
from .body import parse_json, read_body, require_json

Model = TypeVar("Model", bound=BaseModel)


async def read_model(request: Request, model: type[Model], limits: LimitSettings) -> Model:
    """The body (at most ``limits.max_request_bytes``) as ``model``."""
    require_json(request)
    return parse_model(model, await read_body(request, limits), limits)


def parse_model(model: type[Model], body: bytes | memoryview, limits: LimitSettings) -> Model:
    """Validate a JSON body into ``model``. A missing or invalid one is 422 ``invalid_request`` and
    malformed JSON 400, as they were when FastAPI parsed the body."""
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    value = parse_json(body, limits)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from exc


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` that documents the body a route reads itself: the model's schema, definitions
    inlined (an operation's schema cannot point at ``$defs`` of its own)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            target = inline(definitions[node["$ref"].rsplit("/", 1)[-1]]) if "$ref" in node else {}
            return {**target, **{key: inline(value) for key, value in node.items() if key != "$ref"}}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
