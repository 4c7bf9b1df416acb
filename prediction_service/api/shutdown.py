"""SIGTERM / SIGINT flip readiness before uvicorn starts its graceful shutdown.

uvicorn installs its own signal handlers before the app's lifespan starts; ``readiness_on_signal``
wraps them so the first signal sets ``service.shutting_down`` (readiness answers 503 on every door from
then on), keeps serving for ``drain_seconds`` (``SERVER_SHUTDOWN_DRAIN_SECONDS``: time for load
balancers to notice), then calls ``on_drain`` (the gRPC door stops taking calls and lets in-flight ones
finish) and hands over to uvicorn, which stops accepting, lets in-flight requests finish
(``SERVER_SHUTDOWN_GRACE_SECONDS``) and runs the lifespan shutdown (audit flush). A second signal
during the drain hands over at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..serving.service import Service

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def readiness_on_signal(service: Service, drain_seconds: float = 0.0,
                        on_drain: Callable[[], None] | None = None) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread (e.g. an app run by a test client)
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    drained = False

    def hand_over(sig: int, frame) -> None:
        nonlocal drained
        if on_drain is not None and not drained:
            drained = True
            on_drain()
        handler = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:  # nobody else handles it: behave as if we were not here
            signal.signal(sig, handler)
            signal.raise_signal(sig)

    def handle(sig: int, frame) -> None:
        first = not service.shutting_down
        service.shutting_down = True
        if first and drain_seconds > 0 and callable(previous[sig]):
            log.info("received %s: readiness is now false; serving %.1f s more before draining",
                     signal.Signals(sig).name, drain_seconds)
            timer = threading.Timer(drain_seconds, hand_over, args=(sig, None))
            timer.daemon = True
            timer.start()
            return
        if first:
            log.info("received %s: readiness is now false; draining", signal.Signals(sig).name)
        hand_over(sig, frame)

    for sig in SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, handler)
