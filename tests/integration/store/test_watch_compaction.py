"""A watch that resumes from a revision etcd has compacted away reloads the prefix and goes on."""

from __future__ import annotations

import threading
import time

from haagent.store.client import EtcdStore
from haagent.store.watch import ResumingWatch


class Recorder:
    def __init__(self):
        self.events, self.resyncs = [], []
        self.changed = threading.Event()

    def on_events(self, events):
        self.events += events
        self.changed.set()

    def on_resync(self, kvs, revision):
        self.resyncs.append(({kv.key: kv.value for kv in kvs}, revision))
        self.changed.set()


def test_resuming_from_a_compacted_revision_resyncs(etcd1):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    try:
        first = store.put("/w/a", "1")
        store.put("/w/b", "1")
        store.delete("/w/a")
        now = store.put("/w/c", "1")
        store.call("compact", lambda c: c.compact(now, physical=True))
        rec = Recorder()
        watch = ResumingWatch(store, "/w/", rec, first).start()  # from before the compaction
        try:
            deadline = time.monotonic() + 10
            while not rec.resyncs and time.monotonic() < deadline:
                rec.changed.wait(0.2)
            assert rec.resyncs, "no resync after a compacted start revision"
            kvs, revision = rec.resyncs[0]
            assert kvs == {"/w/b": b"1", "/w/c": b"1"} and revision >= now
            later = store.put("/w/d", "1")  # and it watches on from there
            deadline = time.monotonic() + 10
            while not any(e.revision == later for e in rec.events) and time.monotonic() < deadline:
                rec.changed.wait(0.2)
            assert [e.key for e in rec.events if e.revision == later] == ["/w/d"]
        finally:
            watch.stop()
    finally:
        store.close()
