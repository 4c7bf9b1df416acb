"""Model-run threads by request priority: runs led by the highest priority on threads at the process's own
OS scheduling priority, runs led by lower priorities on threads with a higher nice value.

ONNX Runtime (one intra-op thread) and PyTorch run a batch on the calling thread with the GIL released, so
the kernel's scheduler, not the event loop, decides whose run gets a core. On a machine whose cores a flood
of bulk batches keeps busy, a live request's run would otherwise share them evenly with every flood run in
progress. A thread cannot lower its nice value again without privileges, so the two kinds of run have a pool
each instead of one pool whose threads change their priority per run.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor

log = logging.getLogger(__name__)


def _lower_this_thread(nice: int) -> None:
    """Thread initializer: raise the calling thread's nice value by ``nice`` (Linux schedules threads one by
    one; elsewhere the call fails and the thread keeps the process's priority)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as exc:  # pragma: no cover - platforms without per-thread priorities
        log.debug("model-run threads keep the process's priority: %s", exc)


class RunPools:
    """The thread pools model runs take: ``for_priority(level)`` picks one by the priority leading a batch."""

    def __init__(self, name: str, urgent_threads: int, background_threads: int, background_nice: int):
        self.urgent = ThreadPoolExecutor(max_workers=urgent_threads, thread_name_prefix=f"{name}-run")
        """Loads, warm-ups and the runs of priority-1 batches."""
        self.background: Executor = self.urgent
        if background_nice > 0:
            self.background = ThreadPoolExecutor(
                max_workers=background_threads, thread_name_prefix=f"{name}-run-low",
                initializer=_lower_this_thread, initargs=(background_nice,))

    def for_priority(self, level: int) -> Executor:
        """The pool for a batch led by priority ``level`` (1 the highest)."""
        return self.urgent if level <= 1 else self.background

    def shutdown(self) -> None:
        self.urgent.shutdown(wait=False, cancel_futures=True)
        if self.background is not self.urgent:
            self.background.shutdown(wait=False, cancel_futures=True)
