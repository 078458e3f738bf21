"""The manager step on hand-built views: one call, one decision."""

from __future__ import annotations

from dataclasses import replace

from haagent.manager.core import ManagerConfig, new_status, step
from haagent.manager.view import (Alert, ClusterView, FenceHost, HostView, JournalStep, Op, OpStep,
                                  SetHostState, SetPlacement, VmSpec)
from haagent.model import HostState as S

CFG = ManagerConfig(fence_delay=1.0, new_leader_grace=3.0, lease_ttl=3.0)


def first_fit(todo, view, avoid):
    hosts = sorted(h for h, hv in view.hosts.items() if h not in avoid and hv.alive)
    return ({s.uuid: hosts[0] for s in todo} if hosts else {}), ({} if hosts else {s.uuid: ("no host",) for s in todo})


def view(alive=("a", "b", "c"), states=None, running=None, ops=None, placements=None, requests=()):
    states = states or {h: S.ACTIVE for h in "abc"}
    running = running or {"a": {"vm1"}, "b": set(), "c": set()}
    hosts = {h: HostView(h, h in alive, states.get(h), 4, 4096, frozenset(running.get(h, ()))) for h in "abc"}
    specs = {"vm1": VmSpec("vm1", "acme-prod-web-1", priority=10)}
    return ClusterView(7, hosts, specs, placements or {"vm1": "a"}, ops or {}, {}, tuple(requests))


def kinds(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def test_new_leader_waits_grace_before_declaring_a_host_dead():
    st = new_status(100.0)
    st, acts = step(view(alive=("b", "c")), st, 101.0, CFG, first_fit)
    assert not kinds(acts, SetHostState)
    st, acts = step(view(alive=("b", "c")), st, 103.5, CFG, first_fit)
    assert [(a.host, a.new) for a in kinds(acts, SetHostState)] == [("a", S.SUSPECT)]


def test_power_loss_flow_fences_then_places():
    st = new_status(0.0)
    v = view(alive=("b", "c"))
    st, acts = step(v, st, 10.0, CFG, first_fit)  # suspect
    v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], state=S.SUSPECT)})
    st, acts = step(v, st, 10.5, CFG, first_fit)
    assert not kinds(acts, FenceHost)  # fence_delay not yet over
    st, acts = step(v, st, 11.1, CFG, first_fit)
    fence = kinds(acts, FenceHost)
    assert [f.host for f in fence] == ["a"] and not kinds(acts, SetPlacement)
    op_id = fence[0].op
    intent = kinds(acts, JournalStep)[0].step
    v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], state=S.FENCING)},
                ops={op_id: Op(op_id, "failover", "a", 7, (intent,))})
    st, acts = step(v, st, 12.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement) and not kinds(acts, FenceHost)  # fence in flight
    fenced = OpStep("fence", 12.5, {"result": "confirmed_off"})
    v = replace(v, ops={op_id: Op(op_id, "failover", "a", 7, (intent, fenced))})
    st, acts = step(v, st, 12.6, CFG, first_fit)
    assert [(a.old, a.new) for a in kinds(acts, SetHostState)] == [(S.FENCING, S.FENCED), (S.FENCED, S.RECOVERING)]
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", "b")]


def test_failed_fence_means_no_recovery_and_an_alert():
    op = Op("op1", "failover", "a", 7, (OpStep("intent", 1.0), OpStep("fence", 2.0, {"result": "failed", "reason": "bmc"})))
    v = view(alive=("b", "c"), states={"a": S.FENCING, "b": S.ACTIVE, "c": S.ACTIVE}, ops={"op1": op})
    st = replace(new_status(0.0), fence_inflight={"a": 0}, fence_issued_at={"a": 1.0})
    st, acts = step(v, st, 5.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement)
    assert [a.name for a in kinds(acts, Alert)] == ["fence_failed"]


def test_vm_running_twice_is_frozen_and_alerted():
    v = view(running={"a": {"vm1"}, "b": {"vm1"}})
    _, acts = step(v, new_status(0.0), 10.0, CFG, first_fit)
    assert [a.name for a in kinds(acts, Alert)] == ["vm_running_twice"]
    assert not kinds(acts, SetPlacement)


def test_storm_holds_fencing():
    v = view(alive=("c",))
    st, _ = step(v, new_status(0.0), 10.0, CFG, first_fit)
    v = replace(v, hosts={h: replace(hv, state=S.SUSPECT if h != "c" else S.ACTIVE) for h, hv in v.hosts.items()})
    st, acts = step(v, st, 20.0, CFG, first_fit)
    assert not kinds(acts, FenceHost)
    assert "fencing_storm_hold" in [a.name for a in kinds(acts, Alert)]


def test_policy_placer_applies_the_naming_convention():
    """Two instances of one prod service go to different hosts; prod is placed before dev."""
    from haagent.manager.core import policy_placer

    hosts = {h: HostView(h, True, S.ACTIVE, 8, 8192) for h in ("h1", "h2")}
    specs = {"u1": VmSpec("u1", "acme-prod-api-1", 1, 512), "u2": VmSpec("u2", "acme-prod-api-2", 1, 512)}
    v = ClusterView(1, hosts, specs, {})
    chosen, missed = policy_placer()(list(specs.values()), v, frozenset())
    assert not missed and chosen["u1"] != chosen["u2"]
    # too little room for both: the prod VM wins over the dev one, whatever the uuid order
    small = {"h1": HostView("h1", True, S.ACTIVE, 1, 600)}
    specs = {"a": VmSpec("a", "acme-dev-api-1", 1, 512), "b": VmSpec("b", "acme-prod-api-1", 1, 512)}
    chosen, missed = policy_placer()(list(specs.values()), ClusterView(1, small, specs, {}), frozenset())
    assert chosen == {"b": "h1"} and set(missed) == {"a"}


def test_placement_follows_a_manual_live_migration():
    v = view(running={"a": set(), "b": {"vm1"}, "c": set()})
    _, acts = step(v, new_status(0.0), 10.0, CFG, first_fit)
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", "b")]
    # but never while the owner is not cooperating (it may be dead and still run it)
    v = view(alive=("b", "c"), running={"a": set(), "b": {"vm1"}, "c": set()})
    _, acts = step(v, new_status(0.0), 1.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement)
