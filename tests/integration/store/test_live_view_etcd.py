"""The leader's view as production keeps it (a PrefixCache's journal of watch events feeding a
LiveView, through EtcdLeaderStore) equals a view built from scratch from a fresh read of etcd,
after random writes: puts, deletes, prefix deletes, leases revoked and expiring, transactions of
many keys, and a resync of the cache after events it missed."""

from __future__ import annotations

import json
import random
import time

import pytest

from haagent.manager.shell import EtcdLeaderStore
from haagent.state.codec import build_view
from haagent.state.view import ViewIndex
from haagent.store.client import EtcdStore
from haagent.store.keys import Keys
from haagent.store.port import Delete, Put
from haagent.store.watch import PrefixCache

pytestmark = [pytest.mark.etcd]

K = Keys("lv")
HOSTS = [f"h{i}" for i in range(5)]
VMS = [f"vm-{i:02d}" for i in range(12)]


def _write(rng: random.Random, store: EtcdStore, leases: dict[str, int]) -> None:
    h, u = rng.choice(HOSTS), rng.choice(VMS)
    choice = rng.randrange(12)
    if choice == 0:  # a host joins: its lease, alive and lease keys in one transaction
        lease, _ = store.grant(rng.choice([1, 60]))
        leases[h] = lease
        store.txn([], [Put(K.host_alive(h), json.dumps({"host": h}), lease),
                       Put(K.host_lease(h), json.dumps({"lease": lease}))])
    elif choice == 1 and h in leases:
        store.revoke(leases.pop(h))  # its alive key goes with the lease
    elif choice in (2, 3):
        store.put(K.host_report(h), json.dumps({"cpus": 8, "memory_mib": 8192,
                                                "running_vms": sorted(rng.sample(VMS, rng.randint(0, 4)))}))
    elif choice == 4:
        store.put(K.host_state(h), rng.choice([json.dumps({"state": rng.choice(["active", "suspect", "fenced"]),
                                                           "failover": "op-1"}), "garbage"]))
    elif choice == 5:  # a VM registers: spec and placement in one transaction
        store.txn([], [Put(K.vm_spec(u), json.dumps({"name": u, "policy": rng.choice(["restart", "none"])})),
                       Put(K.vm_placement(u), json.dumps({"host": h}))])
    elif choice == 6:
        store.put(K.vm_placement(u), json.dumps({"host": h}))
    elif choice == 7:  # placements of many VMs at once, as a failover writes them
        store.txn([], [Put(K.vm_placement(v), json.dumps({"host": rng.choice(HOSTS)}))
                       for v in rng.sample(VMS, 6)])
    elif choice == 8:
        store.delete(K.vms + f"{u}/", prefix=True)
    elif choice == 9:
        op = f"op-{rng.randint(1, 2)}"
        store.txn([], [Put(f"{K.op(op)}/head", json.dumps({"kind": "failover", "host": h})),
                       Put(f"{K.op(op)}/{rng.randint(0, 3):04d}", json.dumps({"step": "intent", "at": 1.0}))])
    elif choice == 10:
        store.delete(K.op(f"op-{rng.randint(1, 2)}") + "/", prefix=True)
    else:
        store.put(K.request(f"r{rng.randint(1, 3)}"), json.dumps({"kind": "host_return", "host": h}))


def _fresh(store: EtcdStore):
    kvs, revision = store.get_prefix(K.root)
    return build_view({kv.key: kv for kv in kvs}, K, 0), revision


def test_the_kept_view_equals_a_fresh_read_after_random_writes(etcd1):
    rng = random.Random(7)
    store = EtcdStore(etcd1.endpoints, timeout=2.0)
    cache = PrefixCache(store, K.root).start()
    leader = EtcdLeaderStore(K, election=None, cache=cache)  # its view() is what the leader ticks on
    leases: dict[str, int] = {}
    try:
        for round_ in range(60):
            for _ in range(rng.choice([1, 2, 5])):
                _write(rng, store, leases)
            want, revision = _fresh(store)
            assert cache.wait_for(revision, 5.0)
            got = leader.view()
            assert got == want, f"round {round_}"
            index, fresh = got.index, ViewIndex.of(want)
            assert (dict(index.reported), dict(index.placed), index.odd) == \
                (dict(fresh.reported), dict(fresh.placed), fresh.odd)
        # leases that expire on their own: the alive keys go by etcd's clock, seen through the watch
        for h in HOSTS:
            lease, _ = store.grant(1)
            store.put(K.host_alive(h), json.dumps({"host": h}), lease)
        assert leader.view().hosts[HOSTS[0]].alive
        deadline = time.monotonic() + 10
        while any(hv.alive for hv in leader.view().hosts.values() if hv.name not in leases):
            assert time.monotonic() < deadline, "leases never expired in the kept view"
            time.sleep(0.2)
        want, revision = _fresh(store)
        assert cache.wait_for(revision, 5.0) and leader.view() == want
        # Events the watch never delivered (it fell behind a compaction): its resync hands the
        # cache every key again, and the kept view must start over from them.
        cache.stop()
        for _ in range(20):
            _write(rng, store, leases)
        kvs, revision = store.get_prefix(K.root)
        cache.on_resync(kvs, revision)
        want, _ = _fresh(store)
        assert leader.view() == want
    finally:
        cache.stop()
        store.close()
