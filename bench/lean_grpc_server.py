"""The lean gRPC baseline: grpc.aio + the Open Inference Protocol's ModelInfer + ONNX Runtime behind the
same micro-batcher as bench/lean_server.py, no features (no metadata, auth, metrics, audit, validation
beyond numpy's). What a Python gRPC server costs at least, for the front-door bench's ratios.

    python bench/lean_grpc_server.py --model path/to/model.onnx --port 8201
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2, service_pb2_grpc

MAX_BATCH, MAX_DELAY_S = 32, 0.002


class LeanInference(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name, self.output_name = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batcher: asyncio.Task | None = None

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + MAX_DELAY_S
            while len(items) < MAX_BATCH and (left := deadline - loop.time()) > 0:
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            batch = np.concatenate([x for x, _ in items])
            out = await loop.run_in_executor(None, lambda: self.session.run([self.output_name],
                                                                            {self.input_name: batch})[0])
            for (_, future), row in zip(items, out):
                future.set_result(row)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        if self.batcher is None:
            self.batcher = asyncio.create_task(self._batch_loop())
        tensor = request.inputs[0]
        array = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(tensor.shape))
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((array, future))
        row = np.ascontiguousarray(await future, dtype=np.float32)[None, ...]
        output = service_pb2.ModelInferResponse.InferOutputTensor(name=self.output_name, datatype="FP32",
                                                                  shape=list(row.shape))
        return service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id, outputs=[output],
                                              raw_output_contents=[row.tobytes()])


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
