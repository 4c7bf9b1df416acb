"""The naive way to serve the LSTM: FastAPI + PyTorch eager, one request per forward pass, run one at
a time, pydantic-validated lists, default JSON. The yardstick serve_bench.py measures against.

    python bench/naive_baseline.py --store model_store --port 8100
"""

from __future__ import annotations

import argparse
import threading

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from prediction_service.architectures import build_model
from prediction_service.registry import RegistryReader


class Body(BaseModel):
    instance: list[list[float]]


def make_app(store: str, model_name: str) -> FastAPI:
    version = RegistryReader(store).resolve(model_name)
    artifact = version.artifact(("state_dict",))
    model = build_model(version.metadata.architecture, version.metadata.architecture_config)
    model.load_state_dict(torch.load(version.artifact_path(artifact), weights_only=True))
    model.eval()
    lock = threading.Lock()  # one request at a time through the model
    app = FastAPI()

    @app.post("/predict")
    def predict(body: Body):
        with lock, torch.no_grad():
            output = model(torch.tensor([body.instance], dtype=torch.float32))
        return {"model": model_name, "version": version.version, "prediction": output.squeeze().tolist()}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--model", default="lstm-price")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(make_app(args.store, args.model), host="127.0.0.1", port=args.port, log_level="warning")
