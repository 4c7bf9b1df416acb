"""Load generators for bench/front_door_bench.py: wrk for HTTP, tritonclient.grpc.aio unary and streaming
closed loops for gRPC, and an aiohttp closed loop that keeps the status and latency of every request."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient

from loadgen import LoadResult
from oip_bench import Target, caller
from triton_bench import closed_loop

Answer = Callable[[], Awaitable[np.ndarray]]
Close = Callable[[], Awaitable[None]]
Opener = Callable[[], Awaitable[tuple[Answer, Close]]]
"""Opens a gRPC client inside the running event loop: (one inference, close)."""


@dataclass(frozen=True)
class HttpTarget:
    label: str
    url: str
    body: bytes
    headers: dict[str, str]
    decode: Callable[[bytes, Mapping[str, str]], object]
    """(response body, response headers) -> the model's output, for the answer check."""


@dataclass
class Figures:
    rps: float  # 2xx responses per second
    p50: float  # ms
    p99: float  # ms
    bad: int = 0  # non-2xx responses, socket errors, failed calls


# ---- HTTP: wrk ------------------------------------------------------------------------------------


def wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(target: HttpTarget, connections: int, seconds: int, work: Path) -> Figures:
    """``wrk -t1 -c{connections} --latency``; the body comes from a file, byte for byte (binary tensors too)."""
    body_path, script_path = work / "wrk-body.bin", work / "wrk.lua"
    body_path.write_bytes(target.body)
    headers = "".join(f'wrk.headers["{key}"] = "{value}"\n' for key, value in target.headers.items())
    script_path.write_text(f'wrk.method = "POST"\n{headers}local f = assert(io.open("{body_path}", "rb"))\n'
                           'wrk.body = f:read("*all")\nf:close()\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script_path),
                          target.url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    requests, duration = re.search(r"(\d+) requests in ([\d.]+\w+),", out).groups()
    non2xx = int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = non2xx + (sum(map(int, socket.groups())) if socket else 0)
    return Figures((int(requests) - non2xx) / (wrk_ms(duration) / 1e3),  # Requests/sec counts non-2xx too
                   wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1]),
                   wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1]), errors)


# ---- gRPC: tritonclient.grpc.aio -----------------------------------------------------------------


class Stream:
    """Requests multiplexed over one bidirectional ModelStreamInfer stream, matched to answers by request id."""

    def __init__(self, url: str, model: str, batch: dict[str, np.ndarray], output: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.inputs = []
        for name, array in batch.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            self.inputs.append(tensor)
        self.model, self.output, self.ids = model, output, itertools.count()
        self.queue: asyncio.Queue[dict | None] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future] = {}
        self.reader = asyncio.create_task(self._read())

    async def _requests(self):
        while (request := await self.queue.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for result, error in self.client.stream_infer(self._requests()):
                if error is not None:  # tritonclient drops an error's request id: fail the oldest request
                    if self.pending:
                        self.pending.pop(next(iter(self.pending))).set_exception(error)
                    continue
                future = self.pending.pop(result.get_response().id, None)
                if future is not None and not future.done():
                    future.set_result(result.as_numpy(self.output))
        finally:  # the stream ended: nobody may wait forever
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(RuntimeError("stream closed"))

    async def call(self) -> np.ndarray:
        if self.reader.done():
            raise RuntimeError("stream closed")
        request_id = str(next(self.ids))
        future = self.pending[request_id] = asyncio.get_running_loop().create_future()
        await self.queue.put({"model_name": self.model, "inputs": self.inputs, "request_id": request_id})
        return await asyncio.wait_for(future, 30)

    async def close(self) -> None:
        await self.queue.put(None)
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.client.close()


def grpc_openers(url: str, model: str, batch: dict[str, np.ndarray], output: str, streams: int,
                 channels: int = 1) -> tuple[Opener, Opener]:
    """(unary: tritonclient calls round-robin over ``channels`` channels, streaming: requests spread over
    ``streams`` streams). Each unary channel has a connection of its own: SO_REUSEPORT spreads connections,
    not calls, over a server's worker processes, and one HTTP/2 connection carries every call of a channel
    (gRPC would also share one connection between channels to the same target unless told not to)."""
    async def unary() -> tuple[Answer, Close]:
        options = {"channel_args": OWN_CONNECTION} if channels > 1 else {}
        pairs = [caller(Target(url, grpcclient, url), batch, [output], binary=False, **options)
                 for _ in range(channels)]
        turn = itertools.cycle([call for _, call in pairs])

        async def answer() -> np.ndarray:
            return (await next(turn)())[output]

        async def close() -> None:
            await asyncio.gather(*(client.close() for client, _ in pairs))
        return answer, close

    async def streaming() -> tuple[Answer, Close]:
        pool = [Stream(url, model, batch, output) for _ in range(streams)]
        turn = itertools.cycle(pool)

        async def close() -> None:
            await asyncio.gather(*(stream.close() for stream in pool))
        return (lambda: next(turn).call()), close
    return unary, streaming


OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1),  # tritonclient's own message limits, kept
                  ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
                  ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE)]


async def run_grpc(open_: Opener, label: str, concurrency: int, seconds: float, warmup: float) -> Figures:
    call, close = await open_()
    try:
        phase = await closed_loop(label, call, concurrency, seconds, warmup)
    finally:
        await close()
    return Figures(phase.throughput, phase.percentile(50), phase.percentile(99), phase.errors)


# ---- overload: aiohttp, latency by status --------------------------------------------------------


@dataclass
class OverloadRound:
    goodput: float  # 2xx/s
    rejected: float  # 429 + 503 per second
    rejection_p50: float
    rejection_p99: float
    accepted_p99: float
    others: dict[int, int]  # any other status (-1: connection error), reported loudly

    def line(self) -> str:
        flag = f"   !! OTHER STATUSES {self.others}" if self.others else ""
        return (f"goodput {self.goodput:7.1f}/s  rejected {self.rejected:7.1f}/s  p50 {self.rejection_p50:6.2f} "
                f"p99 {self.rejection_p99:6.2f} ms  accepted p99 {self.accepted_p99:7.2f} ms{flag}")


async def status_loop(url: str, body: bytes, connections: int, seconds: float, warmup: float) -> tuple[LoadResult, list[float]]:
    """triton_bench.closed_loop over aiohttp calls that record (status, latency) of every request: returns
    loadgen's LoadResult (statuses, 2xx latencies) and the latencies of the 429/503 rejections."""
    records: list[tuple[float, int, float]] = []
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        async def call() -> None:
            started, clock = time.monotonic(), time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = -1
            records.append((started, status, (time.perf_counter() - clock) * 1000.0))

        measured_from = time.monotonic() + warmup
        phase = await closed_loop(url, call, connections, seconds, warmup)
    result, rejected = LoadResult(url, phase.seconds), []
    for started, status, latency in records:
        if started >= measured_from:
            result.statuses[status] += 1
            if 200 <= status < 300:
                result.latencies_ms.append(latency)
            elif status in (429, 503):
                rejected.append(latency)
    return result, rejected


def overload_round(url: str, body: bytes, connections: int, seconds: float, warmup: float) -> OverloadRound:
    result, rejected = asyncio.run(status_loop(url, body, connections, seconds, warmup))
    good = sum(n for status, n in result.statuses.items() if 200 <= status < 300)
    others = {s: n for s, n in result.statuses.items() if not (200 <= s < 300 or s in (429, 503))}
    rejection = [float(np.percentile(rejected, q)) if rejected else float("nan") for q in (50, 99)]
    return OverloadRound(good / result.seconds, len(rejected) / result.seconds, *rejection,
                         result.percentile(99), others)
