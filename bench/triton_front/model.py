"""Front-door candidate: tritonserver parses HTTP and gRPC (C++), the service's guarded path runs here.

A Triton python-backend model (``bench/triton_front_bench.py`` writes it into a repository entry) whose stub
process holds one whole service (``serving.service.Service``: registry, in-process adapter and its batcher,
audit log, experiments, metrics) on an event loop of its own thread. Triton's dynamic batcher hands
``execute`` the requests that arrived together; each goes through the same ``RequestPipeline.run`` as the
service's own doors (key, admission, version access, A/B arm, deadline, audit, provenance) concurrently on
that loop, so the service's batcher merges them into one model run. The key and routing key come from the
HTTP headers tritonserver forwards into the request's parameters (``--http-header-forward-pattern``);
provenance travels as the BYTES output ``served_by`` ("model:version:stage"), because this backend's
responses carry no parameters.

What it cannot keep: tritonserver reads the whole body before the key is checked here, and its own queue
(not the service's admission) decides what waits; errors reach the client with Triton's status codes.
"""

import asyncio
import json
import sys
import threading


def _own_stdlib_first() -> None:
    """The stub embeds the system's libpython but may find another build's standard library first (that of
    the interpreter on PATH): its compiled extensions (ssl, sqlite3) then fail to load. Put the library
    directories of the libpython this process runs first."""
    with open("/proc/self/maps") as maps:
        libpython = next((line.split()[-1] for line in maps if "/libpython3" in line), None)
    if libpython is None:
        return
    prefix = libpython.split("/lib/")[0]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    own = [f"{prefix}/lib/{version}/lib-dynload", f"{prefix}/lib/{version}"]
    sys.path[:0] = [path for path in own if path not in sys.path]


_own_stdlib_first()

import numpy as np
import triton_python_backend_utils as pb_utils

PROVENANCE_OUTPUT = "served_by"
# The backend's error codes; it has none for an unauthenticated or forbidden call: those become INVALID_ARG.
_TRITON_CODES = {400: "INVALID_ARG", 401: "INVALID_ARG", 403: "INVALID_ARG", 404: "NOT_FOUND", 422: "INVALID_ARG",
                 429: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}


class TritonPythonModel:
    def initialize(self, args):
        from prediction_service.serving.service import Service
        from prediction_service.settings import Settings

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.served_model = parameters["served_model"]
        self.input_names = [t["name"] for t in config["input"]]
        self.output_dtypes = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]
                              if t["name"] != PROVENANCE_OUTPUT}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="service-loop", daemon=True)
        self.thread.start()
        self.service = Service(Settings())
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(timeout=120)

    def finalize(self):
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def execute(self, requests):
        decoded = [self._decoded(request) for request in requests]
        batch = asyncio.run_coroutine_threadsafe(self._serve_all(decoded), self.loop).result()
        return [self._response(answer) for answer in batch]

    def _decoded(self, request):
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        return inputs, json.loads(request.parameters() or "{}")

    async def _serve_all(self, decoded):
        return await asyncio.gather(*(self._serve(inputs, parameters) for inputs, parameters in decoded),
                                    return_exceptions=True)

    async def _serve(self, inputs, parameters):
        from prediction_service.types import InferenceRequest, Selector

        service = self.service
        key = service.authorize_predict(parameters.get("x-api-key"), "triton")
        context = service.request_context(key, None, "triton-front")
        selector = Selector(routing_key=parameters.get("x-routing-key"))

        async def decode():
            return InferenceRequest(selector, inputs, None, None, None, int(parameters.get("priority", 0) or 0))

        return await service.pipeline.run(self.served_model, context, decode, lambda result: result)

    def _response(self, answer):
        if isinstance(answer, BaseException):
            status = int(getattr(answer, "status", 500))
            code = getattr(pb_utils.TritonError, _TRITON_CODES.get(status, "INTERNAL"), None)
            message = getattr(answer, "message", None) or repr(answer)
            error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
            return pb_utils.InferenceResponse(error=error)
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array, dtype=self.output_dtypes.get(name, array.dtype)))
                   for name, array in answer.outputs.items()]
        served_by = f"{answer.model}:{answer.version}:{answer.stage or ''}".encode()
        rows = next(iter(answer.outputs.values())).shape[0]
        tensors.append(pb_utils.Tensor(PROVENANCE_OUTPUT, np.full((rows, 1), served_by, dtype=np.object_)))
        return pb_utils.InferenceResponse(output_tensors=tensors)
