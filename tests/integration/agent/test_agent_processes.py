"""Real ``haagent agent`` processes against a real etcd: leader failover and clean shutdown."""

from __future__ import annotations

import signal
import time

import pytest
from agent_helpers import TTL, spawn_agent as spawn, wait_for

from haagent.errors import NotLeader
from haagent.store.client import EtcdStore, Put
from haagent.store.election import Election, Leadership, read_leader
from haagent.store.keys import Keys
from haagent.store.lease import LeaseKeeper

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def agents(etcd1, tmp_path):
    procs = {h: spawn(tmp_path, h, etcd1.endpoints) for h in ("a", "b", "c")}
    try:
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_sigkill_leader_agent_another_leads_within_ttl_plus_1s(etcd1, agents):
    keys = Keys("it")
    store = EtcdStore(etcd1.endpoints, timeout=1)
    alive = lambda: len(store.get_prefix(keys.hosts)[0]) >= 3 and read_leader(store, keys)  # noqa: E731
    first = wait_for(alive, 20, "three agents and a leader")
    info = wait_for(lambda: store.get(keys.leader_info), 5, "the leader's first guarded write")
    assert first.host in info.value.decode()

    agents[first.host].send_signal(signal.SIGKILL)
    agents[first.host].wait(5)
    killed = time.monotonic()
    second = wait_for(lambda: (l := read_leader(store, keys)) and l.host != first.host and l, TTL + 5, "a new leader")
    took = time.monotonic() - killed
    assert took <= TTL + 1.0, f"new leader after {took:.2f}s"
    assert second.epoch > first.epoch

    # The old epoch's writes are rejected: act as the deposed leader with its old epoch.
    lease = LeaseKeeper(store, TTL)
    stale = Election(store, keys, first.host, lease)
    stale._leadership = Leadership(first.host, first.epoch, first.lease)
    with pytest.raises(NotLeader):
        stale.guarded([Put(keys.leader_info, "from the old epoch")])
    assert b"from the old epoch" not in store.get(keys.leader_info).value


def test_sigterm_resigns_and_revokes_lease(etcd1, agents):
    keys = Keys("it")
    store = EtcdStore(etcd1.endpoints, timeout=1)
    lead = wait_for(lambda: len(store.get_prefix(keys.hosts)[0]) >= 3 and read_leader(store, keys), 20, "a leader")
    proc = agents[lead.host]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # resigned and revoked at once: no need to wait a TTL
    assert store.get(keys.host_alive(lead.host)) is None
    new = wait_for(lambda: (l := read_leader(store, keys)) and l.host != lead.host and l, 3, "a new leader")
    assert new.epoch > lead.epoch


def test_a_clean_stop_is_recorded_and_the_host_is_not_failed_over(etcd1, agents, tmp_path):
    import json as _json

    keys = Keys("it")
    store = EtcdStore(etcd1.endpoints, timeout=1)
    lead = wait_for(lambda: len(store.get_prefix(keys.hosts)[0]) >= 3 and read_leader(store, keys), 20, "a leader")
    victim = next(h for h in ("a", "b", "c") if h != lead.host)
    wait_for(lambda: store.get(keys.host_state(victim)), 10, "the leader to write its state")
    alive = store.get(keys.host_alive(victim))
    stamp = store.get(keys.host_lease(victim))
    assert stamp is not None and stamp.mod_revision == alive.create_revision  # stamped with the grant
    agents[victim].send_signal(signal.SIGTERM)
    assert agents[victim].wait(10) == 0
    stopped = store.get(keys.host_stopped(victim))
    assert stopped is not None and _json.loads(stopped.value)["lease"] == alive.lease
    assert stopped.lease == 0  # not on the lease it names: it outlives it
    assert store.get(keys.host_alive(victim)) is None  # revoked at once
    time.sleep(TTL + 2.5)  # well past lease_ttl + fence_delay: a crash would be suspect by now
    state = _json.loads(store.get(keys.host_state(victim)).value)["state"]
    assert state == "active", state
    # back: the grant deletes the record and stamps hosts/<h>/lease in the alive key's transaction
    agents[victim] = spawn(tmp_path, victim, etcd1.endpoints)
    alive = wait_for(lambda: store.get(keys.host_alive(victim)), 10, "the agent to rejoin")
    assert store.get(keys.host_stopped(victim)) is None
    assert store.get(keys.host_lease(victim)).mod_revision == alive.create_revision > stamp.mod_revision


def test_sigterm_while_etcd_is_unreachable_at_start_exits_at_once(tmp_path):
    """The first grant's retry loop used to ignore SIGTERM: the agent hung until SIGKILL."""
    from haagent.store.etcd_server import free_port

    proc = spawn(tmp_path, "lonely", [f"http://127.0.0.1:{free_port()}"])  # nothing listens there
    try:
        time.sleep(2)
        assert proc.poll() is None  # still trying to get its first lease
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
