"""One contract for the Store port, run against a real etcd and the simulator's model store.

The simulator's verdicts are only worth something if its store keeps etcd's rules; each case
here runs on both. Time: the model's virtual clock is advanced; etcd's real one is waited out.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from haagent.errors import LeaseExpired, StoreRequestInvalid
from haagent.store.port import Compare, Delete, Put

TTL = 2


@dataclass
class Env:
    store: Any
    advance: Callable[[float], None]


@pytest.fixture(params=["model", "etcd"])
def env(request, tmp_path):
    if request.param == "model":
        from haagent.sim.store import SimStore

        now = [0.0]
        store = SimStore(clock=lambda: now[0])

        def advance(seconds: float) -> None:
            now[0] += seconds
            store.expire()

        yield Env(store, advance)
        return
    if shutil.which("etcd") is None:
        pytest.skip("etcd binary not installed (make test installs etcd-server)")
    from haagent.store.client import EtcdStore
    from haagent.store.etcd_server import EtcdCluster

    cluster = EtcdCluster(1, tmp_path / "etcd").start()
    store = EtcdStore(cluster.endpoints, timeout=2)
    try:
        yield Env(store, time.sleep)
    finally:
        store.close()
        cluster.stop()


def test_put_if_absent_gives_the_epoch_and_refuses_a_second_leader(env):
    s = env.store
    lease, _ = s.grant(TTL)
    won = s.txn([Compare("/t/leader", "create", "==", 0)], [Put("/t/leader", "a", lease)])
    assert won.succeeded and s.get("/t/leader").create_revision == won.revision
    lost = s.txn([Compare("/t/leader", "create", "==", 0)], [Put("/t/leader", "b", lease)])
    assert not lost.succeeded and s.get("/t/leader").value == b"a"


def test_a_failed_compare_runs_the_failure_branch_only(env):
    s = env.store
    r = s.txn([Compare("/t/x", "version", ">", 0)], [Put("/t/yes", "1")], [Put("/t/no", "1")])
    assert not r.succeeded and s.get("/t/yes") is None and s.get("/t/no").value == b"1"


def test_guarded_write_fails_once_the_epoch_changed(env):
    s = env.store
    l1, _ = s.grant(TTL)
    epoch = s.txn([Compare("/t/leader", "create", "==", 0)], [Put("/t/leader", "a", l1)]).revision
    assert s.txn([Compare("/t/leader", "create", "==", epoch)], [Put("/t/x", "1")]).succeeded
    s.revoke(l1)  # the leader's lease ended: its key is gone
    assert s.get("/t/leader") is None
    l2, _ = s.grant(TTL)
    s.txn([Compare("/t/leader", "create", "==", 0)], [Put("/t/leader", "b", l2)])
    assert not s.txn([Compare("/t/leader", "create", "==", epoch)], [Put("/t/x", "2")]).succeeded
    assert s.get("/t/x").value == b"1"


def test_lease_expiry_deletes_its_keys_refresh_then_returns_zero_and_a_put_on_it_fails(env):
    s = env.store
    lease, _ = s.grant(TTL)
    s.put("/t/alive", "x", lease)
    assert s.get("/t/alive").lease == lease
    env.advance(TTL / 2)
    assert s.refresh(lease) > 0
    env.advance(TTL / 2 + 0.3)
    assert s.get("/t/alive") is not None  # refreshed: still there past the first TTL
    env.advance(TTL + 1.5)
    assert s.get("/t/alive") is None
    assert s.refresh(lease) == 0
    with pytest.raises(LeaseExpired):
        s.put("/t/alive", "x", lease)


def test_revoke_deletes_its_keys_and_revoking_again_is_harmless(env):
    s = env.store
    lease, _ = s.grant(30)
    s.put("/t/a", "1", lease)
    s.put("/t/b", "1", lease)
    s.revoke(lease)
    assert s.get("/t/a") is None and s.get("/t/b") is None
    s.revoke(lease)


def test_revisions_create_mod_version_and_one_bump_per_transaction(env):
    s = env.store
    r1 = s.put("/t/a", "1")
    r2 = s.put("/t/a", "2")
    kv = s.get("/t/a")
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r1, r2, 2)
    both = s.txn([], [Put("/t/b", "1"), Put("/t/c", "1")])
    assert both.revision == r2 + 1 and s.get("/t/b").mod_revision == s.get("/t/c").mod_revision == r2 + 1
    gone = s.txn([Compare("/t/a", "mod", "==", r2)], [Delete("/t/a")])
    assert gone.succeeded and gone.revision == r2 + 2 and s.get("/t/a") is None
    assert s.revision() == r2 + 2


def test_a_transaction_that_writes_one_key_twice_is_rejected(env):
    s = env.store
    with pytest.raises(StoreRequestInvalid):
        s.txn([], [Put("/t/a", "1"), Put("/t/a", "2")])
    assert s.get("/t/a") is None


def test_prefix_reads_are_sorted_and_prefix_deletes_count(env):
    s = env.store
    for k in ("/t/p/b", "/t/p/a", "/t/pz", "/t/q"):
        s.put(k, "1")
    kvs, rev = s.get_prefix("/t/p/")
    assert [kv.key for kv in kvs] == ["/t/p/a", "/t/p/b"] and rev == s.revision()
    assert s.delete("/t/p/", prefix=True) == 2
    assert [kv.key for kv in s.get_prefix("/t/")[0]] == ["/t/pz", "/t/q"]
    before = s.revision()
    assert s.delete("/t/none") == 0
    assert s.revision() == before  # nothing changed: no new revision
