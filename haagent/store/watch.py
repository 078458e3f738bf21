"""Watches that survive disconnects and server restarts, and a watch-fed prefix cache.

etcd3's watches die on any disconnect and are never re-created. ``ResumingWatch`` re-watches from
``last_seen + 1`` so that every event is delivered exactly once, in revision order. If the
revision it needs was compacted away it reloads the prefix and tells the handler to resync.

A stream on a member cut off from quorum is cancelled by that member (the store requires a
leader on every call), and re-established through the store's endpoint failover. A caller that
finds the cache behind one of its own writes can also ``restart()`` it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol

import etcd3.events as etcd_events
import etcd3.exceptions as etcd_exc

from haagent.errors import StoreCompacted, StoreError
from haagent.log import get_logger
from haagent.store.client import KV, EtcdStore

log = get_logger("haagent.watch")


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # put or delete
    key: str
    value: bytes
    revision: int  # mod_revision of the change
    create_revision: int
    lease: int = 0


class WatchHandler(Protocol):
    def on_events(self, events: list[WatchEvent]) -> None: ...

    def on_resync(self, kvs: list[KV], revision: int) -> None: ...


class ResumingWatch:
    """A prefix watch that resumes from the last seen revision until stopped."""

    def __init__(self, store: EtcdStore, prefix: str, handler: WatchHandler, start_revision: int,
                 *, retry_interval: float = 0.2, max_retry_interval: float = 2.0):
        self.store = store
        self.prefix = prefix
        self.handler = handler
        self.last_seen = start_revision - 1
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.restarts = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # serialises delivery: the handler never runs twice at once
        self._generation = 0
        self._cancel: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._supervise, name=f"watch:{prefix}", daemon=True)

    def start(self) -> "ResumingWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if self._cancel:
            self._cancel()

    def _supervise(self) -> None:
        delay = self.retry_interval
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._establish()
                delay = self.retry_interval
            except StoreCompacted:
                self._resync()
                continue
            except StoreError as exc:
                log.debug("watch_establish_failed", prefix=self.prefix, error=str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry_interval)
                continue
            self._wake.wait()  # set when the stream dies or on stop
            if not self._stop.is_set():
                self.restarts += 1
                self._stop.wait(self.retry_interval)

    def restart(self) -> None:
        """Re-establish the stream from the last seen revision (e.g. it looks quiet)."""
        log.warning("watch_restarted", prefix=self.prefix, last_seen=self.last_seen)
        self._wake.set()

    def _establish(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            start = self.last_seen + 1
        if self._cancel:
            self._cancel()
        self._cancel = self.store.add_watch(self.prefix, start, lambda r: self._on_response(generation, r))
        log.debug("watch_established", prefix=self.prefix, start_revision=start)

    def _resync(self) -> None:
        try:
            kvs, revision = self.store.get_prefix(self.prefix)
        except StoreError as exc:
            log.debug("watch_resync_failed", prefix=self.prefix, error=str(exc))
            self._stop.wait(self.retry_interval)
            return
        with self._lock:
            self.last_seen = revision
            self.handler.on_resync(kvs, revision)
        log.warning("watch_resynced", prefix=self.prefix, revision=revision)

    def _on_response(self, generation: int, response: object) -> None:
        if isinstance(response, BaseException):
            with self._lock:
                stale = generation != self._generation
            if not stale:
                if isinstance(response, etcd_exc.RevisionCompactedError):
                    self._resync()
                log.debug("watch_stream_died", prefix=self.prefix, error=repr(response))
                self._wake.set()
            return
        events = []
        with self._lock:
            if generation != self._generation:
                return  # a late response from a stream we already replaced
            for ev in response.events:  # type: ignore[attr-defined]
                if ev.mod_revision <= self.last_seen:
                    continue  # already delivered before a resume
                kind = "delete" if isinstance(ev, etcd_events.DeleteEvent) else "put"
                events.append(WatchEvent(kind, ev.key.decode(), ev.value, ev.mod_revision,
                                         ev.create_revision, ev.lease))
            if events:
                self.last_seen = max(self.last_seen, events[-1].revision)
                self.handler.on_events(events)


class PrefixCache:
    """A local copy of every key under a prefix, kept current by a ResumingWatch.

    ``snapshot()`` returns a consistent dict and the revision it reflects; ``wait_for(rev)``
    blocks until the cache has caught up with a revision (e.g. one of our own writes).
    """

    def __init__(self, store: EtcdStore, prefix: str, on_change: Callable[[list[WatchEvent]], None] | None = None):
        self.store = store
        self.prefix = prefix
        self.on_change = on_change
        self._data: dict[str, KV] = {}
        self.revision = 0
        self._cond = threading.Condition()
        self._watch: ResumingWatch | None = None

    def start(self) -> "PrefixCache":
        kvs, revision = self.store.get_prefix(self.prefix)
        self.on_resync(kvs, revision)
        self._watch = ResumingWatch(self.store, self.prefix, self, revision + 1).start()
        return self

    def stop(self) -> None:
        if self._watch:
            self._watch.stop()

    def restart(self) -> None:
        """Watch again from the last revision seen: for a caller that found the cache behind."""
        if self._watch:
            self._watch.restart()

    def on_resync(self, kvs: list[KV], revision: int) -> None:
        with self._cond:
            self._data = {kv.key: kv for kv in kvs}
            self.revision = revision
            self._cond.notify_all()
        if self.on_change:
            self.on_change([])

    def on_events(self, events: list[WatchEvent]) -> None:
        with self._cond:
            for ev in events:
                if ev.kind == "delete":
                    self._data.pop(ev.key, None)
                else:
                    prev = self._data.get(ev.key)
                    self._data[ev.key] = KV(ev.key, ev.value, ev.create_revision, ev.revision,
                                            (prev.version + 1) if prev else 1, ev.lease)
                self.revision = max(self.revision, ev.revision)
            self._cond.notify_all()
        if self.on_change:
            self.on_change(events)

    def snapshot(self) -> tuple[dict[str, KV], int]:
        with self._cond:
            return dict(self._data), self.revision

    def get(self, key: str) -> KV | None:
        with self._cond:
            return self._data.get(key)

    def wait_for(self, revision: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.revision >= revision, timeout)
