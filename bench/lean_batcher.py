"""The micro-batcher both lean baselines share (bench/lean_server.py, bench/lean_grpc_server.py): requests of
any number of rows are queued and run by ONNX Runtime on one thread, one run at a time; a run takes what is
queued when it starts (up to MAX_BATCH rows), so batches form while a run is busy and a lone request never
waits for company (what the service's adaptive batching does, with none of its features)."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort

MAX_BATCH = 32


class LeanBatcher:
    def __init__(self, model: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name, self.output_name = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """The model's outputs for ``rows`` (a batch: first axis)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, future))
        return await future

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            rows = len(items[0][0])
            while rows < MAX_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
                rows += len(items[-1][0])
            batch = np.concatenate([x for x, _ in items])
            out = await loop.run_in_executor(None, lambda: self.session.run([self.output_name],
                                                                            {self.input_name: batch})[0])
            ends = np.cumsum([len(x) for x, _ in items])
            for (_, future), part in zip(items, np.split(out, ends[:-1])):
                future.set_result(part)
