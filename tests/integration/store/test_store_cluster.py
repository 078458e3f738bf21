"""The etcd adapter against a real 3-member etcd cluster."""

from __future__ import annotations

import time

import pytest
from store_helpers import raft_leader

from haagent.errors import NotLeader, StoreError
from haagent.store.client import EtcdStore, Put
from haagent.store.election import Election
from haagent.store.keys import Keys
from haagent.store.lease import LeaseEvent, LeaseKeeper

pytestmark = [pytest.mark.etcd, pytest.mark.slow]
KEYS = Keys("t")


def start_agent(cluster, host, ttl=3):
    store = EtcdStore(cluster.endpoints, timeout=0.5)
    lease = LeaseKeeper(store, ttl, interval=0.5)
    events: list[LeaseEvent] = []
    lease.subscribe(events.append)
    election = Election(store, KEYS, host, lease)
    lease.attach(KEYS.host_alive(host), "1")
    lease.start()
    return store, lease, election, events


def test_killing_the_etcd_leader_causes_no_false_host_death(etcd3):
    agents = [start_agent(etcd3, f"h{i}") for i in range(3)]
    observer = EtcdStore(etcd3.endpoints, timeout=1)
    leader = raft_leader(etcd3)
    assert leader is not None
    leader.kill()
    deadline = time.monotonic() + 8  # etcd re-elects in ~2 s; watch well past one TTL
    while time.monotonic() < deadline:
        try:
            kvs, _ = observer.get_prefix(KEYS.hosts)
        except StoreError:
            time.sleep(0.1)
            continue  # the election window: reads may fail, but no key may vanish
        alive = sorted(kv.key for kv in kvs if kv.key.endswith("/alive"))
        assert alive == [KEYS.host_alive(f"h{i}") for i in range(3)], f"false host death: {alive}"
        time.sleep(0.1)
    for _, lease, _, events in agents:
        assert not any(e.kind == "lease_lost" for e in events)
        lease.stop()


def test_losing_quorum_isolates_agents_and_blocks_leader_writes(etcd3):
    store, lease, election, events = start_agent(etcd3, "h0")
    assert election.try_acquire() is not None
    assert election.guarded([Put(KEYS.leader_info, "ok")]).succeeded
    for m in etcd3.members[1:]:
        m.kill()
    with pytest.raises(StoreError):
        election.guarded([Put(KEYS.leader_info, "no quorum")])
    deadline = time.monotonic() + 6
    while not any(e.kind == "isolated" for e in events):
        assert time.monotonic() < deadline, f"agent never reported isolation: {events}"
        time.sleep(0.1)
    assert lease.isolated
    # recovery: the two members come back; the agent reconnects (its lease may have expired,
    # in which case it is re-granted) and its alive key is present again.
    for m in etcd3.members[1:]:
        m.start(etcd3.initial_cluster, state="existing")
    etcd3.wait_ready(30)
    deadline = time.monotonic() + 15
    while True:
        try:
            kv = store.get(KEYS.host_alive("h0"))
        except StoreError:
            kv = None
        if kv is not None and not lease.isolated and kv.lease == lease.lease_id:
            break
        assert time.monotonic() < deadline, f"agent did not recover: {events[-5:]}"
        time.sleep(0.2)
    assert any(e.kind == "reconnected" for e in events)
    # the old leadership is worth nothing unless its epoch is still current
    try:
        election.guarded([Put(KEYS.leader_info, "after")])
    except NotLeader:
        assert not election.is_leader
    lease.stop()
