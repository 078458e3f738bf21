"""LiveView, the leader's view kept up to date key by key, must always equal a fresh build_view.

Random sequences of puts and deletes over every kind of record the view reads (well-formed,
malformed, and keys it ignores) are applied in random batches; after each batch the kept view,
and its index, must equal what a rebuild from every key gives, and views handed out earlier must
not have changed since.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass

import pytest

from haagent.state.codec import DecodeMemo, LiveView, build_view
from haagent.state.view import ViewIndex
from haagent.store.keys import Keys

K = Keys("t")
HOSTS = [f"h{i}" for i in range(6)]
VMS = [f"vm-{i:02d}" for i in range(16)]
OPS = ["op-a", "op-b", "op-a-1"]  # op-a-1: its keys sort before op-a's (a '-' before '/')


@dataclass(frozen=True)
class FakeKV:
    value: bytes
    lease: int
    mod_revision: int
    create_revision: int


def _record(rng: random.Random, key: str) -> str:
    """A value for ``key``: mostly well-formed, sometimes malformed."""
    if rng.random() < 0.08:
        return rng.choice(["not json", "[1, 2]", '{"state": "sleepy"}', '{"host": 7}', '{"cpus": -1}',
                           '{"numa": "x"}', '{"outcome": "maybe"}', '{"detail": 3, "step": "x"}'])
    leaf = key.rsplit("/", 1)[-1]
    if key == K.storm_hold:
        return json.dumps({"hosts": rng.sample(HOSTS, rng.randint(0, 3)), "since": 12.5, "epoch": 3})
    if "/hosts/" in key:
        if leaf == "alive":
            return json.dumps({"host": key})
        if leaf == "lease":
            return json.dumps({"lease": rng.randint(1, 9), "at": 1.0})
        if leaf == "state":
            return json.dumps({"state": rng.choice(["active", "suspect", "fencing", "fenced", "recovering",
                                                     "failed", "maintenance", "draining"]),
                               "failover": rng.choice(["", "op-a", "op-b"]), "reason": "r", "epoch": 1})
        if leaf == "report":
            report = {"cpus": rng.randint(1, 64), "memory_mib": rng.randint(1024, 65536),
                      "running_vms": sorted(rng.sample(VMS, rng.randint(0, 5))),
                      "self_fence": rng.choice([None, {"watchdog": True, "timeout": 5, "self_fence_timeout": 7}]),
                      "tags": rng.sample(["ssd", "gpu", "a"], rng.randint(0, 2)),
                      "load": {"cpu": rng.random() * 4, "memory_used_mib": 100, "vms": {VMS[0]: 0.5}},
                      "numa": [{"id": 0, "cpus": [0, 1], "memory_mib": 4096, "free_mib": 2048}]}
            if rng.random() < 0.1:
                report["numa"] = [{"id": 0, "cpus": "bad"}]  # a bad inventory part: the rest stands
            return json.dumps(report)
        if leaf == "stopped":
            return json.dumps({"lease": rng.randint(1, 9)})
        if "/migration/" in key:
            return json.dumps({"to": rng.choice(HOSTS), "op": "m", "attempt": 1,
                               "outcome": rng.choice(["running", "completed", "failed"]), "location": "source"})
        return "{}"
    if "/vms/" in key:
        if leaf == "spec":
            return json.dumps({"name": key.split("/")[-2], "vcpus": rng.randint(1, 4),
                               "memory_mib": rng.randint(64, 4096),
                               "policy": rng.choice(["restart", "restart", "migrate", "none"])})
        if leaf == "placement":
            return json.dumps({"host": rng.choice(HOSTS + ["ghost"]), "epoch": 1, "op": "", "reason": "r"})
        if leaf == "migration":
            return json.dumps({"from": rng.choice(HOSTS), "to": rng.choice(HOSTS), "epoch": 1, "deadline": 30.0,
                               "op": "m", "attempt": 1})
        return "{}"
    if "/ops/" in key:
        if leaf == "head":
            return json.dumps({"kind": rng.choice(["failover", "drain"]), "host": rng.choice(HOSTS), "epoch": 2})
        return json.dumps({"step": rng.choice(["intent", "fence_start", "fence", "place", "done"]),
                           "at": rng.random() * 100, "detail": {"attempt": 1}})
    if "/requests/" in key:
        return json.dumps({"kind": rng.choice(["fence_ack", "host_return", "relocate", "drain"]),
                           "host": rng.choice(HOSTS), "vm": rng.choice(VMS), "failover": "op-a", "options": {}})
    return json.dumps({"anything": 1})


def _keys() -> list[str]:
    out = [K.storm_hold, K.leader, K.leader_info, K.event("0001"), K.event("0002"), K.root + "bench-probe",
           K.root + "ops", K.root + "ops/x", K.vms + "nouuid", K.hosts + "h0"]
    for h in HOSTS:
        out += [K.host_alive(h), K.host_lease(h), K.host_state(h), K.host_report(h), K.host_stopped(h),
                K.host_migration(h, VMS[1]), K.host_migration(h, VMS[2]), K.host(h) + "unknown-leaf"]
    for u in VMS:
        out += [K.vm_spec(u), K.vm_placement(u), K.vm_migration(u), K.vms + f"{u}/other"]
    for op in OPS:
        out += [f"{K.op(op)}/head"] + [f"{K.op(op)}/{n:04d}" for n in range(4)]
    out += [K.request(f"r{i}") for i in range(4)]
    return out


def _same_index(a: ViewIndex, b: ViewIndex) -> None:
    assert dict(a.reported) == dict(b.reported)
    assert dict(a.placed) == dict(b.placed)
    assert a.odd == b.odd


@pytest.mark.parametrize("seed", range(40))
def test_a_kept_view_equals_a_fresh_rebuild_after_random_changes(seed):
    rng = random.Random(seed)
    names = _keys()
    kvs: dict[str, FakeKV] = {}
    revision = 1
    live = LiveView(K, DecodeMemo())
    if rng.random() < 0.5:  # start from a first read of something, or from nothing
        for key in rng.sample(names, len(names) // 2):
            revision += 1
            kvs[key] = FakeKV(_record(rng, key).encode(), 0, revision, revision)
        live.reset(dict(kvs))
    issued: list[tuple[object, object]] = []
    for _ in range(60):
        changes: dict[str, FakeKV | None] = {}
        for _ in range(rng.choice([1, 1, 2, 3, 8, 30])):
            key = rng.choice(names)
            revision += 1
            if key in kvs and rng.random() < 0.35:
                del kvs[key]
                changes[key] = None
            else:
                old = kvs.get(key)
                kvs[key] = FakeKV(_record(rng, key).encode(), rng.choice([0, 7]), revision,
                                  old.create_revision if old else revision)
                changes[key] = kvs[key]
        if rng.random() < 0.1:  # a change of a key that does not exist: a delete of nothing
            changes[K.vm_spec("never")] = None
        if rng.random() < 0.05:
            live.reset(dict(kvs))  # a resync
        else:
            live.apply(changes)
        epoch = rng.randint(0, 3)
        got, want = live.view(epoch), build_view(dict(kvs), K, epoch)
        assert got == want
        assert list(got.hosts) == list(want.hosts)  # hosts in name order, as a rebuild lists them
        assert list(got.ops) == list(want.ops)
        _same_index(got.index, ViewIndex.of(want))
        issued.append((got, copy.deepcopy(want)))
    for view, as_built in issued:  # what was handed out earlier has not moved since
        assert view == as_built
        _same_index(view.index, ViewIndex.of(as_built))


def test_the_index_of_a_view_changed_by_replace_is_its_own():
    live = LiveView(K)
    live.reset({K.host_report("h1"): FakeKV(json.dumps({"running_vms": ["a"]}).encode(), 0, 2, 2),
                K.vm_spec("a"): FakeKV(b'{"name": "a"}', 0, 3, 3),
                K.vm_placement("a"): FakeKV(b'{"host": "h1"}', 0, 4, 4)})
    view = live.view(1)
    assert view.index.odd == frozenset() and view.index.placed == {"h1": frozenset({"a"})}
    from dataclasses import replace

    moved = replace(view, placements={"a": "h2"})
    assert moved.index.odd == {"a"} and moved.index.placed == {"h2": frozenset({"a"})}
    assert replace(view, epoch=5).index is view.index  # same mappings: the same index
