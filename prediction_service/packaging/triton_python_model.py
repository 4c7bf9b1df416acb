"""Triton python-backend model that runs the version's ONNX file with ONNX Runtime.

Copied verbatim as ``<entry>/<version>/model.py`` into the Triton model repository; it imports only
numpy, onnxruntime and Triton's ``triton_python_backend_utils`` (present inside the backend stub), never
this package. Triton's dynamic batcher hands ``execute`` several requests at once: their inputs are
concatenated along the batch dim, run once, and the outputs split back by each request's row count.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class _BadRequest(Exception):
    """A request this model cannot run (reported to that request's caller, not raised into Triton)."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        onnx_path = os.path.join(version_dir, parameters.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        threads = int(parameters.get("intra_op_threads", "1"))
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [t["name"] for t in config["input"]]
        # The model may declare a scalar-per-row tensor as dims [1] + reshape []; ONNX wants the model's rank.
        self.input_ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        self.output_names = [t["name"] for t in config["output"]]
        self.output_dtypes = {
            t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]
        }

    def execute(self, requests):
        try:
            arrays_per_request = [self._inputs_of(request) for request in requests]
        except _BadRequest as exc:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        if not self.batched:
            return [self._run_one(arrays) for arrays in arrays_per_request]
        rows = [next(iter(arrays.values())).shape[0] for arrays in arrays_per_request]
        merged = {
            name: np.concatenate([arrays[name] for arrays in arrays_per_request], axis=0)
            for name in self.input_names
        }
        try:
            outputs = self.session.run(self.output_names, merged)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime errors become per-request Triton errors
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        if any(out.shape[0] != sum(rows) for out in outputs):
            error = pb_utils.TritonError("model returned a different number of rows than it was given")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for count in rows:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + count], dtype=self.output_dtypes[name]))
                for name, out in zip(self.output_names, outputs)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses

    def _inputs_of(self, request):
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise _BadRequest(f"missing input {name!r}")
            array = tensor.as_numpy()
            rank = self.input_ranks.get(name)
            if rank is not None and array.ndim == rank + 1 and array.shape[-1] == 1:
                array = array.reshape(array.shape[:-1])
            arrays[name] = array
        return arrays

    def _run_one(self, arrays):
        try:
            outputs = self.session.run(self.output_names, arrays)
        except Exception as exc:  # noqa: BLE001 - see execute
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime failed: {exc}"))
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(out, dtype=self.output_dtypes[name]))
            for name, out in zip(self.output_names, outputs)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self.session = None
