"""Shadow runs: a copy of a production request on a shadow experiment's challenger, off the response path.

The champion's answer goes back to the caller first; the copy waits in a bounded queue (shed, and counted,
when it is full: shadow work never holds up production). The copies that arrive within ``batch_linger_s`` of
the first waiting one share one model run on the challenger (a run costs far more than a row: one run per
copy cost production more than the copies' rows, and left most copies shed at half capacity). That run
starts once no production prediction is in flight in this worker, in the lowest priority lane, so a
production request that arrives meanwhile joins the next run ahead of it. Shadow copies use the capacity
production leaves idle. The challenger's answer is stored by the request's id for the paired analysis, and
the audit log gets a record marked ``arm=shadow`` (which-version-served lookups skip it: the challenger
answered nobody).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import DeadlineExceeded, Overloaded
from ..execution.batching import batch_rows, merge, merge_signature, split
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

    @property
    def run_key(self) -> tuple:
        """Copies with equal keys can share a model run: same model, challenger, steps and input shapes."""
        return (self.model, self.assignment.shadow_version, self.n_steps, merge_signature(self.arrays))


class ShadowRecorder(Protocol):
    """experiments.ExperimentService, as shadow runs use it."""

    def record_shadows(self, answers: list[ShadowAnswer]) -> list[bool]: ...


class ShadowObserver(Protocol):
    """Monitoring's view of shadow work (monitoring/metrics.py's ServiceMetrics)."""

    def shadow_run(self, model: str, outcomes: Counter[str], latency_s: float) -> None: ...
    """One run of the challenger: how many of its copies agreed, disagreed or failed, and its latency."""

    def shadow_shed(self, model: str, count: int = 1) -> None: ...


ShadowRun = Callable[[str, str, dict[str, np.ndarray], RequestContext, int | None], Awaitable[dict[str, np.ndarray]]]
"""run(model, version, inputs, context, n_steps): the challenger's outputs (ModelServable.run_version)."""


def agreement(champion: np.ndarray | None, challenger: np.ndarray | None) -> str:
    """agree / disagree on the recorded output: the same class (argmax, or the 0.5 threshold of one
    probability), or values within 1e-3 relative for a regression output."""
    if champion is None or challenger is None or champion.shape != challenger.shape:
        return "disagree"
    return "agree" if bool(_agreeing_rows(champion, challenger).all()) else "disagree"


def agreements(champions: list[np.ndarray | None], challenger: np.ndarray | None, sizes: list[int]) -> list[str]:
    """``agreement`` for each copy of a shared run (``sizes``: each copy's rows of ``challenger``), compared
    in one pass over the run's rows: copy by copy, the comparison cost more than the copies' model run."""
    if challenger is None:
        return ["disagree"] * len(champions)
    alike = (0 not in sizes and all(c is not None for c in champions)
             and len({(c.shape[1:], c.dtype.str) for c in champions}) == 1)
    champion = np.concatenate(champions) if alike else None
    if champion is None or champion.shape != challenger.shape:  # copy by copy: some differ in shape or lack it
        return [agreement(c, part) for c, part in zip(champions, _row_slices(challenger, sizes))]
    starts = np.cumsum([0, *sizes[:-1]])
    same = np.logical_and.reduceat(_agreeing_rows(champion, challenger), starts)
    return ["agree" if agree else "disagree" for agree in same.tolist()]


def _agreeing_rows(champion: np.ndarray, challenger: np.ndarray) -> np.ndarray:
    """One bool per row (the batch dim): whether the two answers agree on it."""
    a, b = np.asarray(champion, np.float64), np.asarray(challenger, np.float64)
    if a.ndim >= 2 and a.shape[-1] > 1:
        same = a.argmax(axis=-1) == b.argmax(axis=-1)
    elif np.issubdtype(champion.dtype, np.integer):
        same = a == b
    else:
        same = np.isclose(a, b, rtol=1e-3, atol=1e-6)
    return same.reshape(len(same), -1).all(axis=1) if same.ndim != 1 else same


def _row_slices(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *sizes]).tolist()
    return [array[start:stop] for start, stop in zip(bounds, bounds[1:])]


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
                 write_linger_s: float = 0.0, batch_linger_s: float = 0.0, max_batch_rows: int = 1):
        self.run = run
        self.until_idle = until_idle
        """Returns once no production prediction is in flight in this worker: a copy waits for that."""
        self.priority = priority
        """The lowest lane: production requests waiting for the same model run first."""
        self.timeout_s = timeout_s
        self.observer = observer
        self.audit = audit
        self.concurrency = concurrency
        self.batch_linger_s = batch_linger_s
        """How long the first waiting copy waits for others to share its run."""
        self.max_batch_rows = max_batch_rows
        """Most rows of copies in one run (the batcher's batch size): a full batch starts without lingering."""
        self._queued_rows = 0
        self._batch_full = asyncio.Event()
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
        self._queued_rows += batch_rows(job.arrays)
        if self._queued_rows >= self.max_batch_rows:
            self._batch_full.set()
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
            first = await self._queue.get()
            jobs = [first]
            try:
                await self._linger()
                await self.until_idle()  # idle capacity only (the queue behind sheds meanwhile)
                jobs += self._take(self.max_batch_rows - batch_rows(first.arrays))
                for group in _groups(jobs):
                    await self._run_group(group)
            except Exception as exc:  # noqa: BLE001 - a shadow run never stops the runner
                _failure_log.warning(type(exc).__name__, f"shadow run of {first.model} failed: {exc!r}")
            finally:
                self._queued_rows -= sum(batch_rows(job.arrays) for job in jobs)
                for _ in jobs:
                    self._queue.task_done()

    async def _linger(self) -> None:
        """Up to batch_linger_s for more copies to share the run, unless a batch's worth waits already."""
        if self.batch_linger_s <= 0 or self._queued_rows >= self.max_batch_rows:
            return
        self._batch_full.clear()
        try:
            await asyncio.wait_for(self._batch_full.wait(), self.batch_linger_s)
        except TimeoutError:
            pass

    def _take(self, room: int) -> list[ShadowJob]:
        """The copies waiting now, in order, until they fill ``room`` rows (the last may pass it: the batcher
        runs an oversized batch alone)."""
        taken: list[ShadowJob] = []
        while not self._queue.empty() and room > 0:
            job = self._queue.get_nowait()
            taken.append(job)
            room -= batch_rows(job.arrays)
        return taken

    async def _run_group(self, jobs: list[ShadowJob]) -> None:
        """One run of the challenger on the copies' inputs together; each copy's answer is its rows."""
        first = jobs[0]
        version = first.assignment.shadow_version
        context = RequestContext(request_id=first.request_id, priority=self.priority, protocol="shadow",
                                 deadline=time.monotonic() + self.timeout_s)
        sizes = [batch_rows(job.arrays) for job in jobs]
        started = time.perf_counter()
        run_outputs: dict[str, np.ndarray] | None = None
        answers: list[dict[str, np.ndarray] | None] = [None] * len(jobs)
        status, error_code = 200, None
        try:
            run_outputs = await self.run(first.model, version, merge([job.arrays for job in jobs]), context,
                                         first.n_steps)
            answers = list(split(run_outputs, sizes))
        except (DeadlineExceeded, Overloaded):
            # production kept the challenger's queue busy: the copies never ran, which says nothing of the model
            self.shed += len(jobs)
            if self.observer is not None:
                self.observer.shadow_shed(first.model, len(jobs))
            return
        except Exception as exc:  # noqa: BLE001 - the challenger's failure is a sample, not a crash
            status, error_code = int(getattr(exc, "status", 500)), getattr(exc, "code", "internal_error")
        latency_ms = (time.perf_counter() - started) * 1000.0
        for job, outputs in zip(jobs, answers):
            prediction = None if outputs is None else outputs.get(job.output)
            self._writes.enqueue(ShadowAnswer(job.request_id, job.assignment, latency_ms, status != 200, prediction))
            if self.audit is not None:
                self.audit.observe(PredictionRecord(
                    context=RequestContext(request_id=job.request_id, priority=self.priority, protocol="shadow"),
                    model=job.model, version=version, stage=None, arm=SHADOW_ARM,
                    experiment_id=job.assignment.experiment_id, latency_ms=latency_ms, status=status,
                    error_code=error_code, inputs=job.arrays, outputs=outputs))
        self.done += len(jobs)
        if self.observer is not None:
            if run_outputs is None or status != 200:
                outcomes = Counter({"error": len(jobs)})
            else:
                outcomes = Counter(agreements([job.champion for job in jobs], run_outputs.get(first.output), sizes))
            self.observer.shadow_run(first.model, outcomes, latency_ms / 1000.0)


def _groups(jobs: list[ShadowJob]) -> list[list[ShadowJob]]:
    """The copies that can share a run, each group in arrival order (almost always one group)."""
    groups: dict[tuple, list[ShadowJob]] = {}
    for job in jobs:
        groups.setdefault(job.run_key, []).append(job)
    return list(groups.values())
