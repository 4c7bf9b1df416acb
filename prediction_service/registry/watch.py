"""Registry change notices for the request path: inotify on the directories that cached resolutions read.

Without a watch every request checks its cached resolution with one ``readlink`` of the stage link and one
``stat`` of the version's document, so a promotion by any process is followed by the very next request.
Each of those syscalls lets the event loop drop the GIL and wait to take it back from the run and writer
threads (under load that costs far more than the syscall). With a watch attached to the serving event loop,
a cached resolution checked at the watch's current ``generation`` is reused as it is: any change in a
watched directory (a stage link replaced, a document rewritten, a version deleted) bumps the generation, and
the next request checks again. The kernel queues the event when the change happens, and the loop reads it
before it runs a request that arrives afterwards, so "the next request follows a promotion" still holds for
every process on this host. Writes on another host of a network filesystem raise no inotify event: the
stage watcher bumps the generation on every pass, which bounds what such a write waits to
STAGE_POLL_INTERVAL_SECONDS (REGISTRY_WATCH=false keeps a check per request instead).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

_EVENTS = (flags.CREATE | flags.DELETE | flags.MOVED_TO | flags.MOVED_FROM | flags.CLOSE_WRITE | flags.ATTRIB
           | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR)

_watches: dict[str, RegistryWatch] = {}
"""The watch attached for each registry root (by its real path) in this process."""

_generations = itertools.count(1)
"""Generations are unique in the process, across watches: a resolution cached under a watch since detached
never matches a later watch's generation (each would count up from the same start)."""


class RegistryWatch:
    def __init__(self, root: str, loop: asyncio.AbstractEventLoop):
        self.root = root
        self.generation = next(_generations)
        """Bumped by every change seen in a watched directory (and by ``changed``)."""
        self._loop = loop
        self._inotify = INotify(nonblocking=True)
        self._directories: dict[str, int] = {}
        self._lock = threading.Lock()  # watches are added from worker threads too
        loop.add_reader(self._inotify.fileno(), self._read)

    @property
    def loop_closed(self) -> bool:
        return self._loop.is_closed()

    def changed(self) -> None:
        """Something may have changed that no event reports (a pass of the stage watcher, a write in this
        process that a request in the same turn of the loop must see): every cached resolution checks again."""
        self.generation = next(_generations)

    def covers(self, *directories: str) -> bool:
        """Whether every one of ``directories`` is watched, adding the watches it lacks; False when one
        cannot be (gone, or the inotify watch limit reached): the caller keeps checking per request."""
        for directory in directories:
            if directory in self._directories:
                continue
            with self._lock:
                try:
                    self._directories[directory] = self._inotify.add_watch(directory, _EVENTS)
                except OSError as exc:
                    log.debug("registry watch: cannot watch %s: %s", directory, exc)
                    return False
        return True

    def _read(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            events = []
        if not events:
            return
        self.generation = next(_generations)
        gone = {event.wd for event in events if event.mask & (flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF)}
        if gone or any(event.mask & flags.Q_OVERFLOW for event in events):
            with self._lock:  # a deleted or moved directory is watched again when it is next needed
                self._directories = {d: wd for d, wd in self._directories.items() if wd not in gone}

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.remove_reader(self._inotify.fileno())
        self._inotify.close()


def root_key(root: str | os.PathLike) -> str:
    return os.path.realpath(root)


def attach(root: str | os.PathLike, loop: asyncio.AbstractEventLoop) -> RegistryWatch | None:
    """Watch ``root``'s registry for the serving loop ``loop``; None (a check per request, as without a
    watch) when inotify is not available."""
    key = root_key(root)
    existing = _watches.get(key)
    if existing is not None and not existing.loop_closed:
        return existing
    try:
        watch = RegistryWatch(key, loop)
    except (OSError, NotImplementedError) as exc:
        log.warning("registry watch unavailable (%s): every request checks its stage link and document", exc)
        return None
    _watches[key] = watch
    return watch


def detach(watch: RegistryWatch) -> None:
    if _watches.get(watch.root) is watch:
        del _watches[watch.root]
    watch.close()


def watch_of(key: str) -> RegistryWatch | None:
    """The watch attached for the registry whose ``root_key`` is ``key``, if any (none once its event loop
    is closed: nothing reads its events any more)."""
    watch = _watches.get(key)
    return None if watch is None or watch.loop_closed else watch


def registry_changed() -> None:
    """A write in this process (a stage link moved, a document rewritten, a version deleted): every cached
    resolution checks again, even for a request in the same turn of the event loop as the write."""
    for watch in list(_watches.values()):
        watch.changed()
