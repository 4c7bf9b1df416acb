"""The lean baseline the front door is measured against: Starlette + orjson + ONNX Runtime behind a
micro-batcher, no features (no auth, metrics, audit, provenance, validation beyond numpy's).

    python bench/lean_server.py --model path/to/model.onnx --port 8200 [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lean_batcher import LeanBatcher


def make_app() -> Starlette:
    batcher = LeanBatcher(os.environ["LEAN_MODEL"])

    async def predict(request) -> Response:
        """``{"instance": row}`` -> ``{"prediction": ...}``; ``{"instances": rows}`` -> ``{"predictions": ...}``."""
        body = orjson.loads(await request.body())
        if "instances" in body:
            out = await batcher.predict(np.asarray(body["instances"], dtype=np.float32))
            content = {"predictions": out}
        else:
            content = {"prediction": (await batcher.predict(np.asarray([body["instance"]], dtype=np.float32)))[0]}
        return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

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
