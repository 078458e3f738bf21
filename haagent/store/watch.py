"""Watches that survive disconnects, compaction and silent members, and a watch-fed prefix cache.

``ResumingWatch`` re-watches from ``last_seen + 1`` so that every event is delivered exactly once,
in revision order. If the revision it needs was compacted away it reloads the prefix (get_prefix,
then watch from that read's revision + 1) and tells the handler ``on_resync``.

A watch stream can go wrong without ending. Two defences:

- **require-leader**: every stream carries ``hasleader`` metadata, so a member that loses its
  leader (cut off from quorum) cancels it after three election timeouts and the watch moves on.
- **the quiet bound** (``quiet_after``, by default ``QUIET_TIMEOUTS`` x the store timeout, 3 s for
  the default 1 s): every probe interval (the store timeout) the watch reads the store's revision
  R through the store's own failover (a linearizable read) and asks its stream for a progress
  notification. A stream that answers nothing for ``quiet_after`` (a stopped or half-open
  member), or that has not delivered through an R read ``quiet_after`` ago (a member that still
  answers but has fallen behind), is abandoned; the watch resumes on the next endpoint from
  ``last_seen + 1``. A dead stream's cache therefore catches up within about ``quiet_after`` +
  one probe interval + the time to open a stream.

``confirmed_at`` is the monotonic time of the newest probe (or resync read) that the cache had
caught up with: every write that completed before it is in the cache. Progress notifications only
ever confirm freshness; the resume point moves with events and resyncs alone (etcd without the fix
for etcd #15220, such as Debian's 3.4.23, may send a requested progress notification ahead of
queued events: that can make ``confirmed_at`` early by those events' delivery time, never lose one).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from haagent.config import EtcdEndpoint
from haagent.errors import StoreCompacted, StoreError
from haagent.log import get_logger
from haagent.store.client import KV, EtcdStore, WatchBatch, WatchEvent, WatchStream

__all__ = ["PrefixCache", "QUIET_TIMEOUTS", "ResumingWatch", "WatchEvent", "WatchHandler"]

log = get_logger("haagent.watch")

JOURNAL_MAX = 100_000  # changed keys a PrefixCache remembers for ``changes`` (a reader further behind reads all)
QUIET_TIMEOUTS = 3  # the quiet bound in store timeouts: a probe's read may itself take one or two


class WatchHandler(Protocol):
    def on_events(self, events: list[WatchEvent]) -> None: ...

    def on_resync(self, kvs: list[KV], revision: int) -> None: ...


class ResumingWatch:
    """A prefix watch that resumes from the last seen revision until stopped.

    The handler is called on the stream's thread or the watch's own, never twice at once.
    ``confirmed_at`` starts as given (when the caller's view at ``start_revision - 1`` was read),
    else None: not confirmed until the first probe.
    """

    def __init__(self, store: EtcdStore, prefix: str, handler: WatchHandler, start_revision: int,
                 *, retry_interval: float = 0.2, max_retry_interval: float = 2.0,
                 quiet_after: float | None = None, confirmed_at: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.prefix = prefix
        self.handler = handler
        self.last_seen = start_revision - 1  # the resume point: events and resyncs only
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.quiet_after = quiet_after if quiet_after is not None else QUIET_TIMEOUTS * store.timeout
        self.probe_every = min(store.timeout, self.quiet_after / 3)
        self.clock = clock
        self.confirmed_at = confirmed_at
        self.restarts = 0
        self._watched_through = self.last_seen  # also moved by progress notifications
        self._probes: list[tuple[float, int]] = []  # (sent at, store revision) not yet delivered through
        self._last_probe = float("-inf")
        self._stream: WatchStream | None = None
        self._last_heard = 0.0
        self._ended: StoreError | None = None  # how the current stream ended, if it did
        self._restart = threading.Event()  # no lock: a handler may ask from inside a delivery
        self._needs_resync = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # serialises delivery: the handler never runs twice at once
        self._generation = 0
        self._thread = threading.Thread(target=self._supervise, name=f"watch:{prefix}", daemon=True)

    @property
    def endpoint(self) -> EtcdEndpoint | None:
        """The endpoint the current stream is on (None between streams)."""
        stream = self._stream
        return stream.endpoint if stream is not None else None

    def start(self) -> "ResumingWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._drop_stream()

    def restart(self) -> None:
        """Leave the current stream for the next endpoint, from the last seen revision (for a
        caller that found the cache behind one of its own writes)."""
        log.warning("watch_restart_requested", prefix=self.prefix, last_seen=self.last_seen)
        self._restart.set()
        self._wake.set()

    # -- the supervisor thread: opens streams, probes, notices dead and quiet ones --------------

    def _supervise(self) -> None:
        delay = self.retry_interval
        leave: EtcdEndpoint | None = None  # the endpoint of the last stream abandoned: try the next one first
        while not self._stop.is_set():
            if self._needs_resync and not self._resync():
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry_interval)
                continue
            if self._stream is None:
                try:
                    self._establish(leave)
                except StoreCompacted:
                    self._needs_resync = True
                    continue
                except StoreError as exc:
                    log.debug("watch_establish_failed", prefix=self.prefix, error=str(exc))
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.max_retry_interval)
                    continue
                delay = self.retry_interval
            if self.clock() - self._last_probe >= self.probe_every:
                self._probe()
            self._wake.wait(self.probe_every / 2)
            self._wake.clear()
            if self._stop.is_set():
                return
            reason = self._why_leave()
            if reason is None:
                continue
            leave = self.endpoint if reason != "compacted" else None  # a compacted member is fine
            self._drop_stream()
            self.restarts += 1
            if reason == "compacted":
                self._needs_resync = True
            else:
                self._stop.wait(self.retry_interval)

    def _why_leave(self) -> str | None:
        """Why the current stream must be replaced, or None to keep it."""
        now = self.clock()
        with self._lock:
            ended, self._ended = self._ended, None
            oldest_probe = self._probes[0][0] if self._probes else None
        if isinstance(ended, StoreCompacted):
            log.warning("watch_compacted", prefix=self.prefix, last_seen=self.last_seen,
                        compact_revision=ended.compact_revision)
            return "compacted"
        if ended is not None:
            log.info("watch_stream_ended", prefix=self.prefix, endpoint=str(self.endpoint), error=str(ended))
            return "ended"
        if self._restart.is_set():
            self._restart.clear()
            return "restart"
        silent = now - self._last_heard
        behind = now - oldest_probe if oldest_probe is not None else 0.0
        if silent >= self.quiet_after or behind >= self.quiet_after:
            log.warning("watch_quiet", prefix=self.prefix, endpoint=str(self.endpoint),
                        silent_s=round(silent, 3), behind_s=round(behind, 3), last_seen=self.last_seen)
            return "quiet"
        return None

    def _establish(self, leave: EtcdEndpoint | None) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            start = self.last_seen + 1
            self._probes.clear()  # the new stream is judged by its own probes
        stream = self.store.open_watch(self.prefix, start, lambda r: self._on_response(generation, r),
                                       after=leave)
        if self._stop.is_set():  # stop() gave up waiting for us: do not leave a stream behind
            stream.close()
            return
        with self._lock:
            self._stream = stream
            self._last_heard = self.clock()
        self._last_probe = float("-inf")  # probe the new stream at once
        log.debug("watch_established", prefix=self.prefix, endpoint=str(stream.endpoint), start_revision=start)

    def _drop_stream(self) -> None:
        with self._lock:
            self._generation += 1  # late responses of the old stream are ignored
            stream, self._stream = self._stream, None
            self._ended = None
        if stream is not None:
            stream.close()

    def _probe(self) -> None:
        """Read the store's revision, then ask the stream to show it got that far."""
        self._last_probe = sent = self.clock()
        try:
            revision = self.store.revision(self.prefix)
        except StoreError as exc:  # no quorum reachable: nothing can be confirmed, nothing to chase
            log.debug("watch_probe_failed", prefix=self.prefix, error=str(exc))
            return
        with self._lock:
            stream = self._stream
            if revision <= self._watched_through:
                self._confirm(sent)
            else:
                self._probes.append((sent, revision))
        if stream is not None:
            stream.request_progress()

    def _confirm(self, at: float) -> None:
        if self.confirmed_at is None or at > self.confirmed_at:
            self.confirmed_at = at

    def _resync(self) -> bool:
        sent = self.clock()
        try:
            kvs, revision = self.store.get_prefix(self.prefix)
        except StoreError as exc:
            log.debug("watch_resync_failed", prefix=self.prefix, error=str(exc))
            return False
        with self._lock:
            self.last_seen = self._watched_through = revision
            self._probes.clear()
            self.handler.on_resync(kvs, revision)
            self._confirm(sent)
            self._needs_resync = False
        log.warning("watch_resynced", prefix=self.prefix, revision=revision)
        return True

    # -- the stream's thread --------------------------------------------------------------------

    def _on_response(self, generation: int, response: WatchBatch | StoreError) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a late response from a stream we already replaced
            self._last_heard = self.clock()
            if isinstance(response, StoreError):
                self._ended = response
                self._wake.set()
                return
            events = [ev for ev in response.events if ev.revision > self.last_seen]
            if response.progress:
                # NOTE: a progress revision confirms freshness but never moves the resume point:
                # without etcd's fix for #15220 it can overtake queued events.
                self._watched_through = max(self._watched_through, response.revision)
            elif events:
                self.last_seen = events[-1].revision
                self._watched_through = max(self._watched_through, self.last_seen)
                self.handler.on_events(events)
            while self._probes and self._probes[0][1] <= self._watched_through:
                self._confirm(self._probes.pop(0)[0])


class PrefixCache:
    """A local copy of every key under a prefix, kept current by a ResumingWatch.

    ``snapshot()`` returns a consistent dict and the revision it reflects; ``wait_for(rev)``
    says whether the cache caught up with a revision (e.g. one of our own writes) in time.
    ``confirmed_at`` (monotonic) is when the cache was last known current: every write that
    completed before it is in the cache; ``stale(max_age)`` is True when that is too long ago.
    """

    def __init__(self, store: EtcdStore, prefix: str, on_change: Callable[[list[WatchEvent]], None] | None = None,
                 *, quiet_after: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.prefix = prefix
        self.on_change = on_change
        self.quiet_after = quiet_after if quiet_after is not None else QUIET_TIMEOUTS * store.timeout
        self.clock = clock
        self._data: dict[str, KV] = {}
        self.revision = 0
        # The keys changed since the last resync, in order (``changes``): a reader that keeps its
        # own view up to date reads only those. Bounded: a reader that far behind reads it all.
        self._generation = 0
        self._journal: list[str] = []
        self._journal_base = 0
        self._cond = threading.Condition()
        self._watch: ResumingWatch | None = None

    def start(self) -> "PrefixCache":
        sent = self.clock()
        kvs, revision = self.store.get_prefix(self.prefix)
        self.on_resync(kvs, revision)
        self._watch = ResumingWatch(self.store, self.prefix, self, revision + 1, quiet_after=self.quiet_after,
                                    confirmed_at=sent, clock=self.clock).start()
        return self

    def stop(self) -> None:
        if self._watch:
            self._watch.stop()

    @property
    def watch(self) -> ResumingWatch | None:
        return self._watch

    def restart(self) -> None:
        """Watch again from the last revision seen, on the next endpoint: for a caller that found
        the cache behind one of its own writes."""
        if self._watch:
            self._watch.restart()

    @property
    def confirmed_at(self) -> float | None:
        """Monotonic time when the cache was last known current (None before start)."""
        return self._watch.confirmed_at if self._watch else None

    def stale(self, max_age: float | None = None) -> bool:
        """Whether the cache was last known current more than ``max_age`` seconds ago (by
        default the quiet bound, after which a healthy watch would have moved on)."""
        confirmed = self.confirmed_at
        limit = self.quiet_after if max_age is None else max_age
        return confirmed is None or self.clock() - confirmed > limit

    def on_resync(self, kvs: list[KV], revision: int) -> None:
        with self._cond:
            self._data = {kv.key: kv for kv in kvs}
            self.revision = revision
            self._generation += 1
            self._journal_base += len(self._journal)
            self._journal = []
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
                    version = ev.version or ((prev.version + 1) if prev else 1)
                    self._data[ev.key] = KV(ev.key, ev.value, ev.create_revision, ev.revision, version, ev.lease)
                self.revision = max(self.revision, ev.revision)
                self._journal.append(ev.key)
            if len(self._journal) > JOURNAL_MAX:
                self._journal_base += len(self._journal)
                self._journal = []
            self._cond.notify_all()
        if self.on_change:
            self.on_change(events)

    def snapshot(self) -> tuple[dict[str, KV], int]:
        with self._cond:
            return dict(self._data), self.revision

    def changes(self, cursor: tuple[int, int] | None) -> tuple[dict[str, KV] | None, dict[str, KV | None], int,
                                                               tuple[int, int]]:
        """What changed since ``cursor`` (None, or what an earlier call returned):
        ``(None, {key: KV, or None when deleted}, revision, cursor)``; or, when the changes since
        then are not known (a first call, a resync since, a reader too far behind),
        ``(every KV by key, {}, revision, cursor)``. One consistent state at ``revision``."""
        with self._cond:
            end = self._journal_base + len(self._journal)
            now = (self._generation, end)
            if cursor is None or cursor[0] != self._generation or cursor[1] < self._journal_base:
                return dict(self._data), {}, self.revision, now
            changed = dict.fromkeys(self._journal[cursor[1] - self._journal_base:])
            return None, {k: self._data.get(k) for k in changed}, self.revision, now

    def get(self, key: str) -> KV | None:
        with self._cond:
            return self._data.get(key)

    def wait_for(self, revision: int, timeout: float) -> bool:
        """True when the cache has reached ``revision`` (within ``timeout`` seconds), else False."""
        with self._cond:
            return self._cond.wait_for(lambda: self.revision >= revision, timeout)
