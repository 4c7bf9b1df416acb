"""Shadow runs: a copy of a production request on a shadow experiment's challenger, off the response path.

The champion's answer goes back to the caller first; the copy waits in a bounded queue (shed, and counted,
when it is full: shadow work never holds up production) until no production prediction is in flight in
this worker, and then runs in the lowest priority lane, so a production request that arrives meanwhile joins
the next run ahead of it. Shadow copies use the capacity production leaves idle. The challenger's answer is stored by the request's id for
the paired analysis, and the audit log gets a record marked ``arm=shadow`` (which-version-served lookups skip
it: the challenger answered nobody).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import DeadlineExceeded, Overloaded
from ..execution.group_commit import GroupCommit
from ..experiments.service import ShadowAnswer
from ..log_throttle import ThrottledLog
from ..types import SHADOW_ARM, PredictionObserver, PredictionRecord, RequestContext

log = logging.getLogger(__name__)
_failure_log = ThrottledLog(log, 10.0)


@dataclass(frozen=True)
class ShadowJob:
    model: str
    assignment: Any
    """experiments.Assignment with ``shadow_version`` set."""
    request_id: str
    arrays: dict[str, np.ndarray]
    """The champion's pre-processed inputs: the challenger's serving contract is the champion's (checked
    when the experiment is created), so they are its inputs too."""
    output: str
    """The output an experiment records (the model's first)."""
    champion: np.ndarray | None
    """The champion's value of that output, to count agreement."""
    n_steps: int | None = None


class ShadowRecorder(Protocol):
    """experiments.ExperimentService, as shadow runs use it."""

    def record_shadows(self, answers: list[ShadowAnswer]) -> list[bool]: ...


class ShadowObserver(Protocol):
    """Monitoring's view of shadow work (monitoring/metrics.py's ServiceMetrics)."""

    def shadow_run(self, model: str, outcome: str, latency_s: float) -> None: ...

    def shadow_shed(self, model: str) -> None: ...


ShadowRun = Callable[[str, str, dict[str, np.ndarray], RequestContext, int | None], Awaitable[dict[str, np.ndarray]]]
"""run(model, version, inputs, context, n_steps): the challenger's outputs (ModelServable.run_version)."""


def agreement(champion: np.ndarray | None, challenger: np.ndarray | None) -> str:
    """agree / disagree on the recorded output: the same class (argmax, or the 0.5 threshold of one
    probability), or values within 1e-3 relative for a regression output."""
    if champion is None or challenger is None or champion.shape != challenger.shape:
        return "disagree"
    a, b = np.asarray(champion, np.float64), np.asarray(challenger, np.float64)
    if a.ndim >= 2 and a.shape[-1] > 1:
        same = np.array_equal(a.argmax(axis=-1), b.argmax(axis=-1))
    elif np.issubdtype(champion.dtype, np.integer):
        same = np.array_equal(a, b)
    else:
        same = bool(np.allclose(a, b, rtol=1e-3, atol=1e-6))
    return "agree" if same else "disagree"


async def _now() -> None:
    """Never waits: a runner with no production to give way to."""


def _answers_not_written(exc: Exception, count: int) -> None:
    # the experiment misses these samples; serving goes on
    _failure_log.warning(type(exc).__name__, f"could not record {count} shadow answers: {exc!r}")


class ShadowRunner:
    """A bounded queue of shadow jobs and the tasks that run them (started on the first job); their answers
    are written behind them, the answers that finish together in one transaction (group commit)."""

    def __init__(self, run: ShadowRun, recorder: ShadowRecorder, *, queue_size: int, concurrency: int,
                 priority: int, timeout_s: float, until_idle: Callable[[], Awaitable[None]] = _now,
                 observer: ShadowObserver | None = None, audit: PredictionObserver | None = None,
                 write_linger_s: float = 0.0):
        self.run = run
        self.until_idle = until_idle
        """Returns once no production prediction is in flight in this worker: a copy waits for that."""
        self.priority = priority
        """The lowest lane: production requests waiting for the same model run first."""
        self.timeout_s = timeout_s
        self.observer = observer
        self.audit = audit
        self.concurrency = concurrency
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=queue_size)
        self._workers: list[asyncio.Task] = []
        self._writes: GroupCommit[ShadowAnswer, bool] = GroupCommit(recorder.record_shadows,
                                                                    on_error=_answers_not_written,
                                                                    linger_s=write_linger_s)
        self.shed = 0
        self.done = 0

    def submit(self, job: ShadowJob) -> bool:
        """Queue a copy; False (shed) when the queue is full. Never waits."""
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [loop.create_task(self._work(), name=f"shadow-{i}") for i in range(self.concurrency)]
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.shed += 1
            if self.observer is not None:
                self.observer.shadow_shed(job.model)
            return False
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def drain(self) -> None:
        """Until every queued copy has run and its answer is written (tests, and a clean shutdown)."""
        await self._queue.join()
        await self._writes.flush()

    async def close(self) -> None:
        """Stop running copies; the answers of those that ran are written."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self._writes.flush()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.until_idle()  # idle capacity only (the queue behind sheds meanwhile)
                await self._run_one(job)
            except Exception as exc:  # noqa: BLE001 - a shadow run never stops the runner
                _failure_log.warning(type(exc).__name__, f"shadow run of {job.model} failed: {exc!r}")
            finally:
                self._queue.task_done()

    async def _run_one(self, job: ShadowJob) -> None:
        version = job.assignment.shadow_version
        context = RequestContext(request_id=job.request_id, priority=self.priority, protocol="shadow",
                                 deadline=time.monotonic() + self.timeout_s)
        started = time.perf_counter()
        outputs, status, error_code = None, 200, None
        try:
            outputs = await self.run(job.model, version, job.arrays, context, job.n_steps)
        except (DeadlineExceeded, Overloaded):
            # production kept the challenger's queue busy: the copy never ran, which says nothing of the model
            self.shed += 1
            if self.observer is not None:
                self.observer.shadow_shed(job.model)
            return
        except Exception as exc:  # noqa: BLE001 - the challenger's failure is a sample, not a crash
            status, error_code = int(getattr(exc, "status", 500)), getattr(exc, "code", "internal_error")
        latency_ms = (time.perf_counter() - started) * 1000.0
        prediction = None if outputs is None else outputs.get(job.output)
        self._writes.enqueue(ShadowAnswer(job.request_id, job.assignment, latency_ms, status != 200, prediction))
        self.done += 1
        if self.observer is not None:
            outcome = "error" if status != 200 else agreement(job.champion, prediction)
            self.observer.shadow_run(job.model, outcome, latency_ms / 1000.0)
        if self.audit is not None:
            self.audit.observe(PredictionRecord(
                context=context, model=job.model, version=version, stage=None, arm=SHADOW_ARM,
                experiment_id=job.assignment.experiment_id, latency_ms=latency_ms, status=status,
                error_code=error_code, inputs=job.arrays, outputs=outputs))
