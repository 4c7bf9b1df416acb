"""TorchServe handler packed into every .mar that ``torchserve_mar.build_mar`` writes.

It runs inside TorchServe's Python worker, so it imports only torch, numpy, the standard library
and ``ts`` (never ``prediction_service``). It loads the model without pickles: TorchScript through
``torch.jit.load`` or ONNX through onnxruntime.

Wire format (one HTTP request = one element of TorchServe's batch), ``Content-Type: application/json``:

    request:  {"inputs": {"<input name>": <nested list, batch dim first>, ...}}
    response: {"outputs": {"<output name>": <nested list>, ...},
               "batch": {"requests": <requests merged in this run>, "rows": <rows in this run>}}

TorchServe hands the handler every request of a server-side batch at once; the handler stacks the
rows of all valid requests into one tensor per input, runs the model once, and splits the outputs
back per request. A malformed request gets its own 400 without failing the others.
When the archive carries ``warmup.npz``, ``initialize`` runs those batches first (TorchScript optimizes
a graph over its first runs), so the worker reports ready only once it is warm; a batch that fails
fails the worker's start.
TorchScript runs with one intra-op thread per worker (``PS_TORCH_THREADS`` in the worker's
environment changes it): TorchServe scales with workers, and small models gain little from threads.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"
WARMUP_FILE = "warmup.npz"
_JSON = "application/json"


class BatchingTensorHandler(BaseHandler):
    # The only class in this module: TorchServe picks the handler as "the one class defined here".
    # A request that cannot be decoded raises ValueError and gets its own 400.

    def initialize(self, context):
        # BaseHandler.initialize would fall back to pickled eager models; this loads only safe formats.
        self.manifest = context.manifest
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, SIGNATURE_FILE), encoding="utf-8") as fh:
            self.signature = json.load(fh)
        artifact = os.path.join(model_dir, self.manifest["model"]["serializedFile"])
        self.model_format = self.signature["artifact_format"]
        if self.model_format == "torchscript":
            torch.set_num_threads(int(os.environ.get("PS_TORCH_THREADS", "1")))
            self.model = torch.jit.load(artifact, map_location="cpu")
            self.model.eval()
        elif self.model_format == "onnx":
            import onnxruntime  # only needed for ONNX artifacts

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            self.model = onnxruntime.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
        else:
            raise ValueError(f"unsupported artifact format {self.model_format!r}")
        self.input_specs = self.signature["inputs"]
        self.output_specs = self.signature["outputs"]
        self._warm_up(os.path.join(model_dir, WARMUP_FILE), int(self.signature.get("warmup_iterations", 0)))
        self.initialized = True
        logger.info("loaded %s (%s)", artifact, self.model_format)

    def _warm_up(self, path: str, iterations: int) -> None:
        if iterations < 1 or not os.path.exists(path):
            return
        batches: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path, allow_pickle=False) as stored:
            for key in stored.files:
                batch, name = key.split("__", 1)
                batches.setdefault(batch, {})[name] = stored[key]
        started = time.perf_counter()
        for batch in batches.values():
            for _ in range(iterations):
                self._run(batch)
        logger.info("warmed up: %d batches x %d runs in %.0f ms", len(batches), iterations,
                    (time.perf_counter() - started) * 1000)

    def handle(self, data, context):
        self.context = context
        decoded: list[dict[str, np.ndarray] | None] = []
        for idx, request in enumerate(data):
            try:
                decoded.append(self._decode(request))
            except ValueError as exc:
                decoded.append(None)
                context.set_response_status(code=400, phrase="Bad Request", idx=idx)
                context.set_response_content_type(idx, _JSON)
                logger.warning("request %d of the batch rejected: %s", idx, exc)
                data[idx] = {"error": str(exc)}
        valid = [i for i, d in enumerate(decoded) if d is not None]
        responses: list[bytes] = [json.dumps(data[i]).encode() if decoded[i] is None else b"" for i in range(len(data))]
        if valid:
            rows = [decoded[i][self.input_specs[0]["name"]].shape[0] for i in valid]
            merged = {s["name"]: np.concatenate([decoded[i][s["name"]] for i in valid]) for s in self.input_specs}
            outputs = self._run(merged)
            batch_info = {"requests": len(valid), "rows": int(sum(rows))}
            per_request = _split(outputs, rows)
            if len(per_request) != len(valid):
                raise RuntimeError(f"split produced {len(per_request)} results for {len(valid)} requests")
            for i, result in zip(valid, per_request):
                context.set_response_content_type(i, _JSON)
                body = {"outputs": {name: array.tolist() for name, array in result.items()}, "batch": batch_info}
                responses[i] = json.dumps(body, separators=(",", ":")).encode()
        return responses

    def _decode(self, request) -> dict[str, np.ndarray]:
        body = request.get("body") if request.get("body") is not None else request.get("data")
        if isinstance(body, (bytes, bytearray)):
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise ValueError(f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
            raise ValueError('body must be {"inputs": {name: nested list}}')
        inputs = body["inputs"]
        expected = [s["name"] for s in self.input_specs]
        if sorted(inputs) != sorted(expected):
            raise ValueError(f"inputs {sorted(inputs)} do not match the signature's {expected}")
        arrays: dict[str, np.ndarray] = {}
        for spec in self.input_specs:
            try:
                array = np.asarray(inputs[spec["name"]], dtype=spec["dtype"])
            except (ValueError, TypeError) as exc:
                raise ValueError(f"input {spec['name']!r} is not a rectangular {spec['dtype']} array") from exc
            shape = spec["shape"]
            if array.ndim != len(shape) or any(w not in (-1, g) for w, g in zip(shape[1:], array.shape[1:])):
                raise ValueError(f"input {spec['name']!r} has shape {list(array.shape)}, expected {shape}")
            arrays[spec["name"]] = array
        if len({a.shape[0] for a in arrays.values()}) != 1:
            raise ValueError("inputs disagree on the batch size")
        return arrays

    def _run(self, merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.model_format == "onnx":
            results = self.model.run([s["name"] for s in self.output_specs], merged)
        else:
            with torch.inference_mode():
                args = [torch.from_numpy(merged[s["name"]]) for s in self.input_specs]
                out = self.model(*args)
            results = [out] if isinstance(out, torch.Tensor) else list(out)
            results = [r.detach().cpu().numpy() for r in results]
        if len(results) != len(self.output_specs):
            raise RuntimeError(f"model returned {len(results)} outputs, signature declares {len(self.output_specs)}")
        return {spec["name"]: np.asarray(r) for spec, r in zip(self.output_specs, results)}


def _split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    total = sum(rows)
    for name, array in outputs.items():
        if array.shape[0] != total:
            raise RuntimeError(f"output {name!r} has {array.shape[0]} rows for {total} input rows")
    bounds = np.cumsum(rows)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(rows))]
