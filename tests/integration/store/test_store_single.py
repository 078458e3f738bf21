"""The etcd adapter against a real single-member etcd."""

from __future__ import annotations

import threading
import time

import pytest

from haagent.errors import NotLeader, StoreUnavailable
from haagent.store.client import Compare, EtcdStore, Put
from haagent.store.election import Election, read_leader
from haagent.store.keys import Keys
from haagent.store.lease import LeaseEvent, LeaseKeeper
from haagent.store.watch import PrefixCache, ResumingWatch

pytestmark = pytest.mark.etcd
KEYS = Keys("t")


def store_for(cluster, timeout=1.0):
    return EtcdStore(cluster.endpoints, timeout=timeout)


def agent(cluster, host, ttl=2):
    store = store_for(cluster)
    lease = LeaseKeeper(store, ttl)
    election = Election(store, KEYS, host, lease)
    lease.attach(KEYS.host_alive(host), "1")
    lease.start()
    return store, lease, election


def test_get_prefix_reads_pages_at_one_revision(etcd1, monkeypatch):
    """A prefix larger than a page comes back whole, sorted, and as of the first page's revision
    even when a write lands between pages (a whole cluster's keys exceed one gRPC message)."""
    import haagent.store.client as client

    store = store_for(etcd1)
    for i in range(10):
        store.put(f"/p/k{i:02d}", str(i))
    store.put("/q/outside", "x")
    monkeypatch.setattr(client, "PAGE_KEYS", 3)
    calls = {"n": 0}
    real_call = store.call

    def call(what, fn):
        calls["n"] += 1
        if calls["n"] == 2:  # between the first and the second page
            real_call("put", lambda c: c.put("/p/k05", "changed"))
            real_call("put", lambda c: c.put("/p/k99", "new"))
        return real_call(what, fn)

    monkeypatch.setattr(store, "call", call)
    kvs, revision = store.get_prefix("/p/")
    assert [kv.key for kv in kvs] == [f"/p/k{i:02d}" for i in range(10)]
    assert [kv.value for kv in kvs] == [str(i).encode() for i in range(10)]
    assert all(kv.mod_revision <= revision for kv in kvs)
    assert calls["n"] >= 4  # 10 keys in pages of 3 (+ the two puts)
    monkeypatch.undo()
    assert store.get("/p/k05").value == b"changed" and store.revision() == revision + 2


def test_refresh_many_over_one_stream_and_a_keeper_takes_its_answer(etcd1):
    """Many leases refreshed in one keepalive stream: a live one gets its TTL, a revoked one 0, and
    a LeaseKeeper handed that 0 re-grants and puts its keys back, as its own refresh would."""
    store = store_for(etcd1)
    live = [store.grant(5)[0] for _ in range(3)]
    keeper = LeaseKeeper(store, 5)
    keeper.attach("/rm/alive", "1")
    keeper.grant()
    gone = keeper.lease_id
    store.revoke(gone)
    assert store.get("/rm/alive") is None
    ttls = store.refresh_many(live + [gone])
    assert all(0 < ttls[i] <= 5 for i in live) and ttls[gone] == 0
    keeper.refreshed(time.monotonic(), ttls[gone])
    assert keeper.lease_id not in (0, gone) and store.get("/rm/alive").lease == keeper.lease_id


def test_kv_and_txn_roundtrip(etcd1):
    store = store_for(etcd1)
    rev = store.put("/x/a", "1")
    kv = store.get("/x/a")
    assert kv.value == b"1" and kv.create_revision == rev
    assert store.txn([Compare("/x/a", "value", "==", "1")], [Put("/x/a", "2")]).succeeded
    assert not store.txn([Compare("/x/a", "value", "==", "1")], [Put("/x/a", "3")]).succeeded
    assert store.get("/x/a").value == b"2"
    kvs, _ = store.get_prefix("/x/")
    assert [k.key for k in kvs] == ["/x/a"]
    assert store.delete("/x/", prefix=True) == 1


def test_unreachable_endpoint_is_a_project_error_within_timeout(etcd1):
    etcd1.stop()
    store = EtcdStore(etcd1.endpoints, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.get("/x")
    assert time.monotonic() - t0 < 2.0  # two timeouts at most


def test_failover_to_the_next_endpoint(etcd1):
    dead = "http://127.0.0.1:1"  # nothing listens on port 1
    store = EtcdStore([dead, *etcd1.endpoints], timeout=0.5)
    store.put("/y", "v")
    assert store.current_endpoint.port == etcd1.members[0].client_port
    assert store.get("/y").value == b"v"


def test_election_epochs_only_go_up(etcd1):
    epochs = []
    for i in range(3):
        store, lease, election = agent(etcd1, f"h{i}")
        lead = election.try_acquire()
        assert lead is not None and lead.host == f"h{i}"
        assert read_leader(store, KEYS).epoch == lead.epoch
        epochs.append(lead.epoch)
        election.resign()
        lease.stop()
        assert read_leader(store, KEYS) is None
    assert epochs == sorted(epochs) and len(set(epochs)) == 3


def test_second_candidate_loses_while_leader_lives(etcd1):
    _, la, a = agent(etcd1, "a")
    _, lb, b = agent(etcd1, "b")
    assert a.try_acquire() is not None
    assert b.try_acquire() is None
    assert b.observe().host == "a"
    la.stop(); lb.stop()


def test_guarded_write_rejected_after_leadership_lost(etcd1):
    store, lease_a, a = agent(etcd1, "a")
    assert a.try_acquire()
    assert a.guarded([Put(KEYS.leader_info, "a-was-here")]).succeeded
    # a loses its lease (as if partitioned past its TTL): b takes over.
    store.revoke(lease_a.lease_id)
    _, lease_b, b = agent(etcd1, "b")
    assert b.try_acquire() is not None
    with pytest.raises(NotLeader):
        a.guarded([Put(KEYS.leader_info, "stale")])
    assert not a.is_leader  # a stepped down
    assert store.get(KEYS.leader_info).value == b"a-was-here"
    lease_a.stop(revoke=False); lease_b.stop()


def test_lost_lease_removes_alive_within_ttl_plus_1s(etcd1):
    store, lease, _ = agent(etcd1, "h1", ttl=2)
    key = KEYS.host_alive("h1")
    assert store.get(key) is not None
    lease.stop(revoke=False)  # the agent dies: no more keepalives
    died = time.monotonic()
    while store.get(key) is not None:
        assert time.monotonic() - died < 2 + 1.0, "alive key outlived TTL + 1 s"
        time.sleep(0.05)


def test_keepalive_regrants_and_reports_lease_lost(etcd1):
    store = store_for(etcd1)
    lease = LeaseKeeper(store, 2, interval=0.3)
    events: list[LeaseEvent] = []
    lease.subscribe(events.append)
    lease.attach("/t/alive", "1")
    lease.start()
    old = lease.lease_id
    store.revoke(old)  # the server forgets our lease; the next refresh returns TTL 0
    deadline = time.monotonic() + 3
    while not any(e.kind == "lease_lost" for e in events):
        assert time.monotonic() < deadline, f"no lease_lost event: {events}"
        time.sleep(0.05)
    lost = next(e for e in events if e.kind == "lease_lost")
    assert lost.lease_id != old and lease.lease_id == lost.lease_id
    assert lost.lost_for >= 0.0
    kv = store.get("/t/alive")
    assert kv is not None and kv.lease == lease.lease_id  # keys re-put on the new lease
    lease.stop()


def test_keepalive_survives_an_etcd_restart(etcd1):
    store = store_for(etcd1, timeout=0.5)
    lease = LeaseKeeper(store, 3, interval=0.3)
    events: list[LeaseEvent] = []
    lease.subscribe(events.append)
    lease.attach("/t/alive", "1")
    lease.start()
    etcd1.restart(etcd1.members[0])
    deadline = time.monotonic() + 8
    while True:  # after the restart the lease is refreshed again and the key is present
        kv = None
        try:
            kv = store.get("/t/alive")
        except StoreUnavailable:
            pass
        if kv is not None and kv.lease == lease.lease_id and lease.alive:
            break
        assert time.monotonic() < deadline, f"keepalive did not recover: {events}"
        time.sleep(0.1)
    lease.stop()


class Recorder:
    def __init__(self):
        self.events = []
        self.resyncs = 0
        self.lock = threading.Lock()

    def on_events(self, events):
        with self.lock:
            self.events.extend(events)

    def on_resync(self, kvs, revision):
        self.resyncs += 1


def test_watch_resumes_across_restart_exactly_once(etcd1):
    store = store_for(etcd1, timeout=0.5)
    start = store.revision() + 1
    rec = Recorder()
    watch = ResumingWatch(store, "/w/", rec, start, retry_interval=0.05).start()
    time.sleep(0.3)
    for i in range(50):
        store.put(f"/w/{i % 7}", str(i))
    etcd1.restart(etcd1.members[0])
    writer = EtcdStore(etcd1.endpoints, timeout=2)
    for i in range(50, 100):
        writer.put(f"/w/{i % 7}", str(i))
    deadline = time.monotonic() + 10
    while len(rec.events) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # give any duplicate a chance to show up
    watch.stop()
    values = [int(e.value) for e in rec.events]
    assert values == list(range(100)), f"missing or repeated: {len(values)} events"
    assert watch.restarts >= 1  # it really had to resume
    assert rec.resyncs == 0


def test_prefix_cache_follows_changes(etcd1):
    store = store_for(etcd1)
    store.put("/c/a", "1")
    cache = PrefixCache(store, "/c/").start()
    rev = store.put("/c/b", "2")
    store.delete("/c/a")
    rev = store.revision()
    assert cache.wait_for(rev, 5)
    data, _ = cache.snapshot()
    assert {k: v.value for k, v in data.items()} == {"/c/b": b"2"}
    cache.stop()


def test_txn_writing_one_key_twice_is_a_permanent_error(etcd1):
    from haagent.errors import StoreRequestInvalid

    store = store_for(etcd1)
    with pytest.raises(StoreRequestInvalid):
        store.txn([], [Put("/d/k", "1"), Put("/d/k", "2")])
