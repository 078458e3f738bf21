"""A watch on a member that stops answering, or that loses its leader, is noticed and left.

The watched member is stopped with SIGSTOP: its stream stays open and says nothing, the case
require-leader alone cannot catch (a stopped member cancels nothing). gRPC keepalive would end
the stream after about 8 s; the watch must leave it within its quiet bound (3 x the store
timeout) and catch up on the next endpoint.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

import pytest
from store_helpers import raft_leader

from haagent.errors import StoreError
from haagent.store.client import EtcdStore
from haagent.store.watch import PrefixCache, ResumingWatch

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

TIMEOUT = 0.5
QUIET = 3 * TIMEOUT
SLACK = 2.0  # re-establishing on the next endpoint, a busy machine; keepalive would need ~8 s


def a_follower(cluster):
    leader = raft_leader(cluster)
    assert leader is not None
    return next(m for m in cluster.members if m is not leader)


@contextmanager
def stopped(member):
    """SIGSTOP a member (its sockets stay open and silent) and SIGCONT it afterwards."""
    os.kill(member.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(member.proc.pid, signal.SIGCONT)


def watched_first(cluster, member):
    """A store whose first endpoint (where its watches start) is ``member``."""
    others = [m.endpoint for m in cluster.members if m is not member]
    return EtcdStore([member.endpoint, *others], timeout=TIMEOUT)


def writer_avoiding(cluster, member):
    return EtcdStore([m.endpoint for m in cluster.members if m is not member], timeout=1)


def test_cache_leaves_a_silent_member_within_the_quiet_bound(etcd3):
    victim = a_follower(etcd3)
    store, writer = watched_first(etcd3, victim), writer_avoiding(etcd3, victim)
    cache = PrefixCache(store, "/q/").start()
    try:
        assert cache.wait_for(writer.put("/q/before", "1"), 5)  # the stream is up, on the victim
        assert cache.watch.endpoint == store.endpoints[0]
        assert not cache.stale(QUIET)
        with stopped(victim):
            rev = writer.put("/q/after", "2")
            t0 = time.monotonic()
            caught_up = cache.wait_for(rev, QUIET + SLACK)
            took = time.monotonic() - t0
            assert caught_up, f"cache stuck at {cache.revision} after {took:.1f}s, the store is at {rev}"
            data, _ = cache.snapshot()
            assert {k: v.value for k, v in data.items()} == {"/q/before": b"1", "/q/after": b"2"}
            # and on the new endpoint the cache is confirmed current again
            deadline = time.monotonic() + QUIET + SLACK
            while cache.stale(QUIET):
                assert time.monotonic() < deadline, "the cache never became fresh again"
                time.sleep(0.05)
    finally:
        cache.stop()
        store.close()
        writer.close()


def test_confirmed_at_stops_advancing_while_the_stream_is_silent(etcd3):
    victim = a_follower(etcd3)
    store = watched_first(etcd3, victim)
    cache = PrefixCache(store, "/q/", quiet_after=60).start()  # never leaves: only freshness is tested
    try:
        assert cache.wait_for(store.put("/q/up", "1"), 5)  # the stream is up, on the victim
        assert cache.watch.endpoint == store.endpoints[0]
        deadline = time.monotonic() + 5
        first = cache.confirmed_at
        while cache.confirmed_at == first:  # a healthy, quiet stream is confirmed again and again
            assert time.monotonic() < deadline, "a healthy stream was never confirmed"
            time.sleep(0.05)
        with stopped(victim):
            writer_avoiding(etcd3, victim).put("/q/x", "1")  # the store moves on without the victim
            time.sleep(TIMEOUT)  # any confirmation in flight lands
            frozen = cache.confirmed_at
            time.sleep(4 * TIMEOUT)
            assert cache.confirmed_at == frozen, "a silent stream's cache was confirmed current"
            assert cache.stale(3 * TIMEOUT)
    finally:
        cache.stop()
        store.close()


def test_a_member_without_a_leader_cancels_the_stream(etcd3):
    """require-leader on the watch stream: with its peers gone the member ends our stream (after
    3 election timeouts) although it keeps answering on it."""
    watched = etcd3.members[0]
    store = EtcdStore([watched.endpoint], timeout=TIMEOUT)
    cache = PrefixCache(store, "/q/", quiet_after=60).start()  # only the server may end the stream
    try:
        assert cache.wait_for(store.put("/q/a", "1"), 5)
        for m in etcd3.members[1:]:
            m.kill()
        deadline = time.monotonic() + 8  # 3-4 election timeouts of 0.5 s, then the cancel
        while cache.watch.restarts == 0:
            assert time.monotonic() < deadline, "the leaderless member kept our stream open"
            time.sleep(0.1)
        assert cache.stale(3 * TIMEOUT)  # nothing can confirm it without a quorum
    finally:
        cache.stop()
        store.close()


def test_a_resume_from_a_compacted_revision_resyncs_the_cache(etcd3):
    victim = a_follower(etcd3)
    store, writer = watched_first(etcd3, victim), writer_avoiding(etcd3, victim)
    resyncs: list[int] = []

    class Cache(PrefixCache):
        def on_resync(self, kvs, revision):
            super().on_resync(kvs, revision)
            resyncs.append(revision)

    writer.put("/k/gone", "1")
    cache = Cache(store, "/k/").start()
    try:
        assert cache.wait_for(writer.put("/k/kept", "1"), 5)  # the stream is up, on the victim
        assert cache.watch.endpoint == store.endpoints[0]
        assert len(resyncs) == 1  # the initial load
        with stopped(victim):  # the stream is stuck before these writes
            writer.delete("/k/gone")
            writer.put("/k/kept", "2")
            writer.put("/k/new", "1")
            now = writer.put("/other/x", "1")
            writer.call("compact", lambda c: c.compact(now, physical=True))
            deadline = time.monotonic() + QUIET + SLACK
            while len(resyncs) < 2:
                assert time.monotonic() < deadline, "no resync after resuming from a compacted revision"
                time.sleep(0.05)
            assert cache.wait_for(now, 2)
            fresh, _ = writer.get_prefix("/k/")
            data, _ = cache.snapshot()
            assert data == {kv.key: kv for kv in fresh}
            later = writer.put("/k/later", "1")  # and it watches on from the resync
            assert cache.wait_for(later, 5)
            assert cache.get("/k/later").value == b"1"
    finally:
        cache.stop()
        store.close()
        writer.close()


def test_a_bare_watch_is_confirmed_by_progress_alone(etcd1):
    """No write under the prefix: progress answers still confirm the watch (writes elsewhere)."""
    store = EtcdStore(etcd1.endpoints, timeout=TIMEOUT)

    class Quiet:
        def on_events(self, events):
            raise AssertionError(f"unexpected events {events}")

        def on_resync(self, kvs, revision):
            raise AssertionError("unexpected resync")

    watch = ResumingWatch(store, "/nothing-here/", Quiet(), store.revision() + 1).start()
    try:
        for i in range(5):
            store.put("/elsewhere", str(i))  # the store's revision moves past the watch's last event
        written = time.monotonic()
        deadline = written + 5
        while (watch.confirmed_at or 0) < written:
            assert time.monotonic() < deadline, "progress notifications never confirmed the watch"
            time.sleep(0.05)
        assert watch.restarts == 0
    finally:
        watch.stop()
        store.close()
