"""The leader's shell on a real etcd: a fence is dispatched only after its start is journaled
under the epoch and while the host has no lease; a deposed leader cancels its fences and never
journals their results, even when the same process is elected again."""

from __future__ import annotations

import json
import threading
import time

import pytest

from haagent.manager import core
from haagent.state.codec import build_view
from haagent.manager.shell import LeaderLoop
from haagent.state.view import FenceHost, JournalStep, OpStep
from haagent.store.client import EtcdStore, Put
from haagent.store.election import Election
from haagent.store.keys import Keys
from haagent.store.lease import LeaseKeeper
from haagent.store.watch import PrefixCache

K = Keys("it")


class GateFencer:
    """The Fencer port, held open until the test releases it; records what it saw at dispatch."""

    def __init__(self, store: EtcdStore):
        self.store = store
        self.release = threading.Event()
        self.calls: list[dict] = []

    def fence_host(self, host, cancel=None):
        kvs, _ = self.store.get_prefix(K.ops)
        starts = [json.loads(kv.value) for kv in kvs if b'"fence_start"' in kv.value]
        self.calls.append({"host": host, "cancel": cancel, "starts_journaled": len(starts)})
        self.release.wait(10)
        from fencing.runner import FenceResult, Outcome
        return FenceResult(host, Outcome.CONFIRMED_OFF, "level 1", level=1)


def _placer(todo, view, avoid):
    return {}, {s.uuid: ("test",) for s in todo}


@pytest.fixture
def leader(etcd1):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    lease = LeaseKeeper(store, 2, interval=0.3)
    lease.attach(K.host_alive("h1"), "{}")
    lease.start()
    election = Election(store, K, "h1", lease)
    assert election.try_acquire()
    cache = PrefixCache(store, K.root).start()
    fencer = GateFencer(store)
    cfg = core.ManagerConfig(fence_delay=0.1, new_leader_grace=0.0, lease_ttl=2.0, fence_retry_interval=0.2)
    loop = LeaderLoop(K, election, cache, cfg, fencer, _placer)
    for h in ("h1", "h2"):
        store.put(K.host_state(h), json.dumps({"state": "active"}))
    try:
        yield store, election, cache, loop, fencer
    finally:
        fencer.release.set()
        loop.close()
        cache.stop()
        lease.stop()
        store.close()


def _tick_until(loop, cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loop.tick()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _steps(store, name):
    kvs, _ = store.get_prefix(K.ops)
    return [json.loads(kv.value) for kv in kvs if not kv.key.endswith("/head") and json.loads(kv.value)["step"] == name]


def test_fence_starts_are_journaled_first_and_a_deposed_leaders_results_are_dropped(leader):
    store, election, cache, loop, fencer = leader
    _tick_until(loop, lambda: fencer.calls)  # h2 has no lease: suspect, then fencing
    [call] = fencer.calls
    assert call["host"] == "h2" and call["starts_journaled"] == 1  # the start was written before
    assert not call["cancel"].is_set()
    # deposed while the fence runs: its cancel event is set at once
    election.step_down("test: deposed")
    loop.tick()
    assert call["cancel"].is_set()
    # the same process wins again, under a new epoch, and fences again while the old (cancelled)
    # fence has not returned yet: that dispatch must wait for it, not be dropped
    store.delete(K.leader)
    assert election.try_acquire()
    _tick_until(loop, lambda: any(st["detail"]["attempt"] == 2 for st in _steps(store, "fence_start")))
    assert len(fencer.calls) == 1
    fencer.release.set()  # the old fence finishes "off": its result is dropped; the new one runs
    _tick_until(loop, lambda: len(fencer.calls) >= 2, timeout=8)
    _tick_until(loop, lambda: any(r["detail"]["attempt"] == 2 for r in _steps(store, "fence")), timeout=8)
    results = _steps(store, "fence")
    assert all(r["detail"]["attempt"] != 1 for r in results), results  # the old result never landed


def test_no_dispatch_when_the_host_holds_a_lease_at_write_time(leader):
    store, election, cache, loop, fencer = leader
    kvs, _ = cache.snapshot()
    view = build_view(kvs, K, election.leadership.epoch)
    start = [JournalStep("op-x", "h2", OpStep("fence_start", 0.0, {"attempt": 1})), FenceHost("h2", "op-x", 1)]
    assert loop.shell._write(start, view) > 0  # no lease: the start is journaled
    lease, _ = store.grant(30)
    store.put(K.host_alive("h2"), "{}", lease)  # the host renews (a new grant) as we decide
    start = [JournalStep("op-y", "h2", OpStep("fence_start", 0.0, {"attempt": 1})), FenceHost("h2", "op-y", 1)]
    assert loop.shell._write(start, view) == 0  # the compare failed: nothing written, nothing dispatched
    assert store.get(K.op("op-y") + "/head") is None and election.is_leader


def test_a_failover_is_told_to_the_notify_hook_start_fence_and_finish(etcd1):
    """What the daemon hands the webhook queue: the step's notices after each committed write,
    the fence result too (it is written apart from the step, at the next tick)."""
    store = EtcdStore(etcd1.endpoints, timeout=1)
    lease = LeaseKeeper(store, 2, interval=0.3)
    lease.attach(K.host_alive("h1"), "{}")
    lease.start()
    election = Election(store, K, "h1", lease)
    assert election.try_acquire()
    cache = PrefixCache(store, K.root).start()
    fencer = GateFencer(store)
    fencer.release.set()
    sent: list[tuple[str, dict]] = []
    cfg = core.ManagerConfig(fence_delay=0.1, new_leader_grace=0.0, lease_ttl=2.0, fence_retry_interval=0.2)
    loop = LeaderLoop(K, election, cache, cfg, fencer, _placer, notify=lambda t, d: sent.append((t, dict(d))))
    for h in ("h1", "h2"):
        store.put(K.host_state(h), json.dumps({"state": "active"}))
    try:
        _tick_until(loop, lambda: any(t == "failover.finished" for t, _ in sent), timeout=10)
    finally:
        loop.close()
        cache.stop()
        lease.stop()
        store.close()
    types = [t for t, _ in sent]
    assert types[0] == "leader.started"
    assert types.index("failover.started") < types.index("fence.result") < types.index("failover.finished")
    [fence] = [d for t, d in sent if t == "fence.result"]
    assert fence["host"] == "h2" and fence["result"] == "confirmed_off" and fence["attempt"] == 1
    [finished] = [d for t, d in sent if t == "failover.finished"]
    assert finished["failover"] == fence["failover"]
    phases = [row["phase"] for row in finished["timeline"]]
    assert phases[0] == "confirm" and phases[-1] == "done" and "fence" in phases
    states = [(d["host"], d["to"]) for t, d in sent if t == "host.state_changed"]
    assert ("h2", "suspect") in states and ("h2", "fencing") in states and ("h2", "fenced") in states


def test_a_step_past_etcds_transaction_limit_is_written_in_parts(leader):
    """150 hosts lost at once: one step writes more than etcd's 128 operations per transaction.
    It is written in parts, per host, and the storm guard still holds every fence."""
    store, _, cache, loop, fencer = leader
    lost = [f"m{i:03d}" for i in range(150)]
    for i in range(0, len(lost), 50):
        store.txn([], [Put(K.host_state(h), json.dumps({"state": "active"})) for h in lost[i:i + 50]])

    def states():
        return {h: json.loads(store.get(K.host_state(h)).value)["state"] for h in lost}

    _tick_until(loop, lambda: set(states().values()) == {"suspect"}, timeout=10)
    assert fencer.calls == []  # 150 of 152 hosts: a storm, held
