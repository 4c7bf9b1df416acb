"""The lean gRPC baseline: grpc.aio + the Open Inference Protocol's ModelInfer + ONNX Runtime behind the
same micro-batcher as bench/lean_server.py, no features (no metadata, auth, metrics, audit, validation
beyond numpy's). What a Python gRPC server costs at least, for the front-door bench's ratios.

    python bench/lean_grpc_server.py --model path/to/model.onnx --port 8201
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lean_batcher import LeanBatcher  # noqa: E402


class LeanInference(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: str):
        self.batcher = LeanBatcher(model)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        tensor = request.inputs[0]
        array = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(tensor.shape))
        rows = np.ascontiguousarray(await self.batcher.predict(array), dtype=np.float32)
        output = service_pb2.ModelInferResponse.InferOutputTensor(name=self.batcher.output_name, datatype="FP32",
                                                                  shape=list(rows.shape))
        return service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id, outputs=[output],
                                              raw_output_contents=[rows.tobytes()])


async def serve(model: str, port: int) -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(LeanInference(model), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8201)
    args = parser.parse_args()
    asyncio.run(serve(args.model, args.port))


if __name__ == "__main__":
    main()
