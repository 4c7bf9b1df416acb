"""The lean baseline the front door is measured against: Starlette + orjson + ONNX Runtime behind a
micro-batcher, no features (no auth, metrics, audit, provenance, validation beyond numpy's).

    python bench/lean_server.py --model path/to/model.onnx --port 8200 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

MAX_BATCH, MAX_DELAY_S = 32, 0.002


def make_app() -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.environ["LEAN_MODEL"], options, providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    queue: asyncio.Queue = asyncio.Queue()

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            deadline = loop.time() + MAX_DELAY_S
            while len(items) < MAX_BATCH and (left := deadline - loop.time()) > 0:
                try:
                    items.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            batch = np.concatenate([x for x, _ in items])
            out = await loop.run_in_executor(None, lambda: session.run([output_name], {input_name: batch})[0])
            for (_, future), row in zip(items, out):
                future.set_result(row)

    async def predict(request) -> Response:
        body = orjson.loads(await request.body())
        future = asyncio.get_running_loop().create_future()
        await queue.put((np.asarray([body["instance"]], dtype=np.float32), future))
        row = await future
        return Response(orjson.dumps({"prediction": row}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(batcher())
        yield
        task.cancel()

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ["LEAN_MODEL"] = args.model
    uvicorn.run("lean_server:make_app", factory=True, host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", access_log=False, app_dir=os.path.dirname(os.path.abspath(__file__)))


if __name__ == "__main__":
    main()
