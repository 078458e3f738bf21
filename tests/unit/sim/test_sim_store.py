"""The model etcd keeps etcd's rules: revisions, leases on the virtual clock, guarded txns, quorum."""

from __future__ import annotations

import pytest

from haagent.sim.store import NoQuorum, SimStore
from haagent.store.client import Compare, Delete, Put


def test_put_if_absent_gives_the_epoch_and_refuses_a_second_leader():
    s = SimStore()
    lease = s.grant(3.0, now=0.0)
    ok, rev = s.txn([Compare("leader", "create", "==", 0)], [Put("leader", "a", lease)])
    assert ok and s.get("leader").create_revision == rev
    ok2, _ = s.txn([Compare("leader", "create", "==", 0)], [Put("leader", "b", lease)])
    assert not ok2 and s.get("leader").value == b"a"


def test_guarded_write_fails_once_the_epoch_changed():
    s = SimStore()
    l1 = s.grant(3.0, 0.0)
    _, epoch = s.txn([Compare("leader", "create", "==", 0)], [Put("leader", "a", l1)])
    assert s.txn([Compare("leader", "create", "==", epoch)], [Put("x", "1")])[0]
    s.expire(3.0)  # the leader's lease ran out: its key is gone
    assert s.get("leader") is None
    l2 = s.grant(3.0, 3.0)
    s.txn([Compare("leader", "create", "==", 0)], [Put("leader", "b", l2)])
    ok, _ = s.txn([Compare("leader", "create", "==", epoch)], [Put("x", "2")])
    assert not ok and s.get("x").value == b"1"


def test_lease_expiry_deletes_its_keys_and_refresh_then_fails():
    s = SimStore()
    lease = s.grant(3.0, 0.0)
    s.put("alive", "x", lease)
    assert s.refresh(lease, 2.0)
    assert s.expire(4.9) == [] and s.get("alive") is not None
    assert s.expire(5.0) == [lease] and s.get("alive") is None
    assert not s.refresh(lease, 5.1)
    with pytest.raises(KeyError):
        s.put("alive", "x", lease)


def test_without_quorum_nothing_succeeds_and_leases_are_extended_when_it_returns():
    s = SimStore()
    lease = s.grant(3.0, 0.0)
    s.put("alive", "x", lease)
    s.set_quorum(False, 1.0)
    for call in (lambda: s.put("k", "v"), lambda: s.get("alive"), lambda: s.refresh(lease, 1.5),
                 lambda: s.grant(3.0, 1.5), lambda: s.snapshot("")):
        with pytest.raises(NoQuorum):
            call()
    assert s.expire(10.0) == []  # no etcd leader, no expiry
    s.set_quorum(True, 10.0)
    assert s.expire(12.9) == [] and s.get("alive") is not None  # a new leader restarts every TTL
    assert s.expire(13.0) == [lease]


def test_revisions_create_and_mod_and_delete():
    s = SimStore()
    r1 = s.put("a", "1")
    r2 = s.put("a", "2")
    kv = s.get("a")
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r1, r2, 2)
    ok, r3 = s.txn([Compare("a", "mod", "==", r2)], [Delete("a")])
    assert ok and r3 == r2 + 1 and s.get("a") is None
