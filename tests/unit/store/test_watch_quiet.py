"""ResumingWatch's bookkeeping of quiet and lagging streams, against a scripted store.

The real-etcd cases (a stopped member, a member without a leader, compaction) are in
tests/integration/store/test_watch_freshness.py. A member that has lost its leader but still
answers progress requests (for the three election timeouts before it cancels the stream) is hard
to hold on a real cluster, so its logic is checked here: answering is not enough, the stream
must reach the revision the store had when it was asked.
"""

from __future__ import annotations

import threading
import time

from haagent.store.client import WatchBatch, WatchEvent
from haagent.store.watch import ResumingWatch


class ScriptedStream:
    def __init__(self, store: "ScriptedStore", endpoint: str, start: int, on_response):
        self.store, self.endpoint, self.start, self.on_response = store, endpoint, start, on_response
        self.closed = False

    def request_progress(self) -> None:
        member_rev = self.store.member_rev.get(self.endpoint)
        if member_rev is not None and not self.closed:  # None: a stopped member answers nothing
            self.on_response(WatchBatch((), member_rev))

    def close(self) -> None:
        self.closed = True


class ScriptedStore:
    timeout = 0.1
    endpoints = ("a", "b", "c")

    def __init__(self, rev: int, member_rev: dict[str, int | None]):
        self.rev = rev
        self.member_rev = member_rev
        self.opened: list[ScriptedStream] = []
        self.lock = threading.Lock()

    def revision(self, key: str = "\0") -> int:
        return self.rev

    def open_watch(self, prefix, start, on_response, *, after=None):
        i = (self.endpoints.index(after) + 1) % len(self.endpoints) if after else 0
        stream = ScriptedStream(self, self.endpoints[i], start, on_response)
        with self.lock:
            self.opened.append(stream)
        return stream


class Handler:
    def __init__(self):
        self.events: list[WatchEvent] = []

    def on_events(self, events):
        self.events += events

    def on_resync(self, kvs, revision):
        raise AssertionError("no resync expected")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_member_that_answers_but_lags_behind_is_left():
    # member a answers every progress request, but with revision 5; the store is at 6
    store = ScriptedStore(6, {"a": 5, "b": 6, "c": 6})
    watch = ResumingWatch(store, "/p/", Handler(), 6, quiet_after=0.3).start()  # has seen up to 5
    try:
        wait_until(lambda: len(store.opened) >= 2, 2, "the lagging stream was kept")
        lagging, moved = store.opened[0], store.opened[1]
        assert lagging.endpoint == "a" and lagging.closed
        assert moved.endpoint == "b" and moved.start == 6  # from last seen + 1
        wait_until(lambda: watch.confirmed_at is not None, 2, "the caught-up stream was never confirmed")
    finally:
        watch.stop()


def test_a_silent_member_is_left_for_the_next_endpoint():
    store = ScriptedStore(5, {"a": None, "b": 5, "c": 5})  # a answers nothing at all
    watch = ResumingWatch(store, "/p/", Handler(), 6, quiet_after=0.3).start()
    try:
        wait_until(lambda: len(store.opened) >= 2, 2, "the silent stream was kept")
        assert [s.endpoint for s in store.opened[:2]] == ["a", "b"]
    finally:
        watch.stop()


def test_a_healthy_quiet_stream_is_kept_and_confirmed():
    store = ScriptedStore(9, {"a": 9, "b": 9, "c": 9})  # writes elsewhere: the store is past our events
    watch = ResumingWatch(store, "/p/", Handler(), 6, quiet_after=0.3).start()
    try:
        time.sleep(1.5)  # five quiet bounds
        assert len(store.opened) == 1 and watch.restarts == 0
        assert watch.confirmed_at is not None and time.monotonic() - watch.confirmed_at < 0.3
    finally:
        watch.stop()


def test_progress_confirms_but_never_moves_the_resume_point():
    store = ScriptedStore(9, {"a": 9, "b": 9, "c": 9})
    watch = ResumingWatch(store, "/p/", Handler(), 6).start()
    try:
        wait_until(lambda: watch.confirmed_at is not None, 2, "never confirmed")
        assert watch.last_seen == 5  # a later resume must start at 6, whatever progress said
    finally:
        watch.stop()
