"""The manager step on hand-built views: one call, one decision."""

from __future__ import annotations

from dataclasses import replace

from haagent.manager.core import ManagerConfig, new_status, step, with_power_reads
from haagent.state.view import (Alert, ClusterView, ConsumeRequest, Event, FenceHost, HostView, JournalStep, Op,
                                  OpStep, PowerRead, ReadPower, Request, SetHostState, SetPlacement, SetStormHold,
                                  VmSpec)
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


def _fencing_view(v, op_id, *steps, granted_rev=5, **host):
    hosts = {**v.hosts, "a": replace(v.hosts["a"], state=S.FENCING, failover=op_id, granted_rev=granted_rev, **host)}
    return replace(v, hosts=hosts, ops={op_id: Op(op_id, "failover", "a", 7, tuple(steps))})


def test_power_loss_flow_fences_then_places():
    st = new_status(0.0)
    v = view(alive=("b", "c"))
    st, acts = step(v, st, 10.0, CFG, first_fit)  # suspect
    [suspect] = kinds(acts, SetHostState)
    assert suspect.new is S.SUSPECT and suspect.failover  # the failover is named from suspect on
    v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], state=S.SUSPECT, failover=suspect.failover)})
    st, acts = step(v, st, 10.5, CFG, first_fit)
    assert not kinds(acts, FenceHost)  # fence_delay not yet over
    st, acts = step(v, st, 11.1, CFG, first_fit)
    fence = kinds(acts, FenceHost)
    assert [(f.host, f.op, f.attempt) for f in fence] == [("a", suspect.failover, 1)] and not kinds(acts, SetPlacement)
    # the fence start is journaled in the same step, before the shell dispatches
    assert [j.step.step for j in kinds(acts, JournalStep)] == ["intent", "fence_start"]
    op_id = fence[0].op
    intent, start = (replace(j.step, rev=10) for j in kinds(acts, JournalStep))
    v = _fencing_view(v, op_id, intent, start)
    st, acts = step(v, st, 12.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement) and not kinds(acts, FenceHost)  # fence in flight
    fenced = OpStep("fence", 12.5, {"result": "confirmed_off", "attempt": 1}, rev=11)
    st, acts = step(_fencing_view(v, op_id, intent, start, fenced), st, 12.6, CFG, first_fit)
    assert [(a.old, a.new) for a in kinds(acts, SetHostState)] == [(S.FENCING, S.FENCED), (S.FENCED, S.RECOVERING)]
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", "b")]


def test_a_confirmation_from_before_the_last_lease_grant_does_not_count():
    """The fence said off, then the host was granted a lease again: that off is stale."""
    v = view(alive=("b", "c"))
    start = OpStep("fence_start", 1.0, {"attempt": 1}, rev=10)
    off = OpStep("fence", 2.0, {"result": "confirmed_off", "attempt": 1}, rev=11)
    st = new_status(-10.0)
    st, acts = step(_fencing_view(v, "op1", OpStep("intent", 1.0, rev=9), start, off, granted_rev=12), st, 5.0,
                    CFG, first_fit)
    assert not kinds(acts, SetPlacement) and not kinds(acts, SetHostState)
    assert [(f.op, f.attempt) for f in kinds(acts, FenceHost)] == [("op1", 2)]  # fences again at once
    # a confirmation without a journaled fence start (e.g. from an older version) never counts
    st, acts = step(_fencing_view(v, "op1", OpStep("intent", 1.0), off, granted_rev=0), new_status(-10.0), 5.0,
                    CFG, first_fit)
    assert not kinds(acts, SetPlacement) and kinds(acts, FenceHost)


def test_off_while_the_host_renews_its_lease_is_inconsistent_and_only_an_operator_ends_it():
    v = view(alive=("a", "b", "c"))
    start = OpStep("fence_start", 1.0, {"attempt": 1}, rev=10)
    lie = OpStep("fence", 2.0, {"result": "confirmed_off", "attempt": 1}, rev=11)
    fv = _fencing_view(v, "op1", OpStep("intent", 1.0), start, lie, granted_rev=12)
    st, acts = step(fv, new_status(-10.0), 5.0, CFG, first_fit)
    # within a TTL and a margin it may be an honest switch-off racing a reconnect: wait
    assert not kinds(acts, JournalStep) and not kinds(acts, SetPlacement) and not kinds(acts, FenceHost)
    st, acts = step(fv, st, 10.5, CFG, first_fit)
    assert [j.step.step for j in kinds(acts, JournalStep)] == ["inconsistent"]
    assert [a.name for a in kinds(acts, Alert)] == ["fence_inconsistent"]
    flagged = OpStep("inconsistent", 5.0, {"attempt": 1}, rev=13)
    # its lease is lost again later: the old "off" (and any new one) counts for nothing
    v2 = _fencing_view(view(alive=("b", "c")), "op1", OpStep("intent", 1.0), start, lie, flagged, granted_rev=12)
    st, acts = step(v2, st, 50.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement) and not kinds(acts, FenceHost) and not kinds(acts, SetHostState)
    assert [a.name for a in kinds(acts, Alert)] == ["fence_inconsistent"]
    ack = Request("r1", "fence_ack", "a", failover="op1")
    _, acts = step(replace(v2, requests=(ack,)), st, 51.0, CFG, first_fit)
    assert [(a.old, a.new) for a in kinds(acts, SetHostState)][:1] == [(S.FENCING, S.FENCED)]
    # alive again, an operator's `host return` calls the failover off
    v3 = _fencing_view(v, "op1", OpStep("intent", 1.0), start, lie, flagged, granted_rev=12)
    _, acts = step(replace(v3, requests=(Request("r2", "host_return", "a"),)), st, 52.0, CFG, first_fit)
    assert [(a.old, a.new) for a in kinds(acts, SetHostState)] == [(S.FENCING, S.ACTIVE)]


def test_an_ack_counts_only_for_the_failover_it_names():
    v = view(alive=("b", "c"))
    fv = _fencing_view(v, "op-now", OpStep("intent", 1.0))
    st = new_status(-10.0)
    stale = Request("r1", "fence_ack", "a", failover="op-before")
    _, acts = step(replace(fv, requests=(stale,)), st, 5.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement)
    assert [c.id for c in kinds(acts, ConsumeRequest)] == ["r1"]
    assert [e.kind for e in kinds(acts, Event)] == ["fence_ack_discarded"]
    # an ack of a host that is not being failed over is discarded, never kept for later
    _, acts = step(replace(view(), requests=(Request("r2", "fence_ack", "a", failover=""),)), st, 5.0, CFG, first_fit)
    assert [c.id for c in kinds(acts, ConsumeRequest)] == ["r2"]
    good = Request("r3", "fence_ack", "a", failover="op-now")
    _, acts = step(replace(fv, requests=(good,)), st, 5.0, CFG, first_fit)
    assert [c.id for c in kinds(acts, ConsumeRequest)] == ["r3"]
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", "b")]


def test_an_unused_ack_is_discarded_when_its_failover_closes():
    v = view(alive=("a", "b", "c"))
    fv = _fencing_view(v, "op1", OpStep("intent", 1.0))
    _, acts = step(replace(fv, requests=(Request("r1", "fence_ack", "a", failover="op1"),)), new_status(-10.0), 5.0,
                   CFG, first_fit)
    assert [(a.old, a.new) for a in kinds(acts, SetHostState)] == [(S.FENCING, S.ACTIVE)]
    assert [c.id for c in kinds(acts, ConsumeRequest)] == ["r1"]


def test_self_fencing_is_what_the_host_reported_not_the_leaders_config():
    v = view(alive=("b", "c"))
    fv = _fencing_view(v, "op1", OpStep("intent", 1.0), OpStep("fence_start", 1.0, {"attempt": 1}, rev=10),
                       OpStep("fence", 2.0, {"result": "failed", "attempt": 1}, rev=11))
    st = replace(new_status(-10.0), lost_at={"a": 0.0}, fence_inflight={"a": 1}, fence_issued_at={"a": 99.0})
    _, acts = step(fv, st, 100.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement)  # no watchdog reported: never presumed self-fenced
    armed = _fencing_view(v, "op1", OpStep("intent", 1.0), self_fence=5.0)
    _, acts = step(armed, replace(st, lost_at={"a": 10.0}), 16.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement)  # 5 s + 2 s margin not yet over
    _, acts = step(armed, replace(st, lost_at={"a": 10.0}), 17.0, CFG, first_fit)
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", "b")]


def test_a_clean_agent_stop_is_not_a_failure():
    v = view(alive=("b", "c"))
    v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], stopped="stopped:1")})
    _, acts = step(v, new_status(0.0), 10.0, CFG, first_fit)
    assert not kinds(acts, SetHostState) and not kinds(acts, FenceHost)
    assert [a.name for a in kinds(acts, Alert)] == ["agent_stopped"]


def test_failed_fence_means_no_recovery_and_an_alert():
    op = Op("op1", "failover", "a", 7, (OpStep("intent", 1.0), OpStep("fence_start", 1.0, {"attempt": 1}),
                                        OpStep("fence", 2.0, {"result": "failed", "reason": "bmc", "attempt": 1})))
    v = view(alive=("b", "c"), states={"a": S.FENCING, "b": S.ACTIVE, "c": S.ACTIVE}, ops={"op1": op})
    st = replace(new_status(0.0), fence_inflight={"a": 1}, fence_issued_at={"a": 1.0})
    st, acts = step(v, st, 5.0, CFG, first_fit)
    assert not kinds(acts, SetPlacement)
    assert [a.name for a in kinds(acts, Alert)] == ["fence_failed"]


def test_vm_running_twice_is_frozen_and_alerted():
    v = view(running={"a": {"vm1"}, "b": {"vm1"}})
    _, acts = step(v, new_status(0.0), 10.0, CFG, first_fit)
    assert [a.name for a in kinds(acts, Alert)] == ["vm_running_twice"]
    assert not kinds(acts, SetPlacement)


def _two_lost(granted_rev=0):
    """a and b lost their leases together (2 of 3: a storm unless their devices say off)."""
    v = view(alive=("c",))
    v = replace(v, hosts={h: replace(hv, granted_rev=granted_rev) for h, hv in v.hosts.items()})
    st, acts = step(v, new_status(0.0), 10.0, CFG, first_fit)
    fids = {a.host: a.failover for a in kinds(acts, SetHostState)}
    v = replace(v, hosts={h: replace(hv, state=S.SUSPECT, failover=fids[h])
                          if h in fids else hv for h, hv in v.hosts.items()})
    # the step that saw them go already asks for their power (status only), fencing nobody
    assert not kinds(acts, FenceHost) and not kinds(acts, Alert)
    return v, st, sorted(kinds(acts, ReadPower), key=lambda r: r.host)


def test_storm_reads_the_devices_before_holding_and_holds_hosts_that_are_on():
    v, st, reads = _two_lost()
    assert [r.host for r in reads] == ["a", "b"]
    st, acts = step(v, st, 10.5, CFG, first_fit)
    assert not kinds(acts, Alert)  # not held yet either
    assert not kinds(acts, ReadPower) and not kinds(acts, FenceHost)  # asked once, still waiting
    answers = [PowerRead(r.host, r.failover, r.granted_rev, "on", "ipmi:on") for r in reads]
    st, acts = step(v, with_power_reads(st, answers, 11.0, CFG), 11.0, CFG, first_fit)
    assert not kinds(acts, FenceHost)
    assert sorted((a.name, a.host) for a in kinds(acts, Alert)) == [("fencing_storm_hold", "a"),
                                                                    ("fencing_storm_hold", "b")]
    assert "'haagent fence ack a --yes'" in [a for a in kinds(acts, Alert) if a.host == "a"][0].message
    assert kinds(acts, SetStormHold) == [SetStormHold(("a", "b"))]
    assert [(e.kind, e.detail["hosts"]) for e in kinds(acts, Event)] == [("storm_hold_started", ["a", "b"])]
    # once the record is written, the next step neither rewrites it nor says it started again
    st, acts = step(replace(v, storm_hold=("a", "b")), st, 11.5, CFG, first_fit)
    assert not kinds(acts, SetStormHold) and not kinds(acts, Event) and len(kinds(acts, Alert)) == 2
    # both back: the hold ends, with an event, and the record is deleted
    back = replace(v, storm_hold=("a", "b"), hosts={h: replace(hv, alive=True) for h, hv in v.hosts.items()})
    st, acts = step(back, st, 12.0, CFG, first_fit)
    assert kinds(acts, SetStormHold) == [SetStormHold(())] and not kinds(acts, Alert)
    assert [(e.kind, e.detail.get("hosts")) for e in kinds(acts, Event) if e.kind.startswith("storm")] == \
        [("storm_hold_ended", ["a", "b"])]


def test_storm_hosts_whose_devices_say_off_are_dead_and_fenced_as_usual():
    v, st, reads = _two_lost()
    answers = [PowerRead(r.host, r.failover, r.granted_rev, "off", "ipmi:off") for r in reads]
    st, acts = step(v, with_power_reads(st, answers, 11.0, CFG), 11.0, CFG, first_fit)
    # no storm: each is fenced through the usual sequence (the read does not replace the fence)
    assert sorted(f.host for f in kinds(acts, FenceHost)) == ["a", "b"]
    assert not kinds(acts, Alert) and not kinds(acts, SetStormHold)
    assert not [j for j in kinds(acts, JournalStep) if j.step.step == "fenced"]


def test_storm_one_host_read_off_leaves_no_storm_but_unanswered_reads_hold():
    v, st, (ra, rb) = _two_lost()
    _, acts = step(v, st, 10.0 + CFG.storm_read_timeout - 0.5, CFG, first_fit)
    assert not kinds(acts, FenceHost) and not kinds(acts, Alert)  # answers awaited: nothing either way
    # a says off: b alone is an ordinary failure (1 < 2), fenced without waiting for its answer
    _, acts = step(v, with_power_reads(st, [replace_read(ra, "off")], 11.0, CFG), 11.0, CFG, first_fit)
    assert sorted(f.host for f in kinds(acts, FenceHost)) == ["a", "b"] and not kinds(acts, Alert)
    # neither answers: both count once the timeout passed, and a late "off" counts for nothing
    st3, acts = step(v, st, 10.0 + CFG.storm_read_timeout, CFG, first_fit)
    assert not kinds(acts, FenceHost) and len(kinds(acts, Alert)) == 2
    late = with_power_reads(st3, [replace_read(ra, "off"), replace_read(rb, "off")], 16.0, CFG)
    _, acts = step(v, late, 16.0, CFG, first_fit)
    assert not kinds(acts, FenceHost) and len(kinds(acts, Alert)) == 2


def test_storm_read_answers_count_only_for_the_loss_they_were_asked_for():
    v, st, reads = _two_lost(granted_rev=5)
    assert {r.granted_rev for r in reads} == {5}
    # the hosts got a new lease (and lost it) since: "off" from before says nothing about now
    regranted = replace(v, hosts={h: replace(hv, granted_rev=9) if h != "c" else hv for h, hv in v.hosts.items()})
    answers = [replace_read(r, "off") for r in reads]
    st, acts = step(regranted, with_power_reads(st, answers, 11.0, CFG), 11.0, CFG, first_fit)
    assert not kinds(acts, FenceHost)
    assert sorted(r.host for r in kinds(acts, ReadPower)) == ["a", "b"]  # asked again, for this loss
    # garbage or "unknown" never counts as off
    answers = [replace_read(r, "unknown") for r in kinds(acts, ReadPower)]
    st, acts = step(regranted, with_power_reads(st, answers, 11.5, CFG), 11.5, CFG, first_fit)
    assert not kinds(acts, FenceHost) and len(kinds(acts, Alert)) == 2


def replace_read(r: ReadPower, power: str) -> PowerRead:
    return PowerRead(r.host, r.failover, r.granted_rev, power)


def test_policy_placer_applies_the_naming_convention():
    """Two instances of one prod service go to different hosts; prod is placed before dev."""
    from haagent.manager.placer import policy_placer

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


def test_storm_needs_two_hosts_and_counts_hosts_lost_apart_within_the_window():
    # 2 hosts: one lost is "half", but a single lost host is never a storm
    hosts = {h: HostView(h, h == "b", S.ACTIVE) for h in ("a", "b")}
    v2 = ClusterView(7, hosts, {}, {})
    st, acts = step(v2, new_status(0.0), 10.0, CFG, first_fit)
    v2 = replace(v2, hosts={**hosts, "a": replace(hosts["a"], state=S.SUSPECT, failover="f")})
    st, acts = step(v2, st, 11.5, CFG, first_fit)
    assert kinds(acts, FenceHost) and not kinds(acts, Alert)
    # 4 hosts: a is lost and fenced (switched off by us); b vanishes 5 s later: held
    hosts = {h: HostView(h, h != "a", S.ACTIVE) for h in "abcd"}
    v4 = ClusterView(7, hosts, {}, {})
    st, _ = step(v4, new_status(0.0), 10.0, CFG, first_fit)
    v4 = replace(v4, hosts={**hosts, "a": replace(hosts["a"], state=S.FAILED),
                            "b": replace(hosts["b"], alive=False)})
    st, acts = step(v4, st, 15.0, CFG, first_fit)
    v4 = replace(v4, hosts={**v4.hosts, "b": replace(v4.hosts["b"], state=S.SUSPECT, failover="fb")})
    st, acts = step(v4, st, 17.0, CFG, first_fit)
    assert not kinds(acts, FenceHost)
    # only b, never fenced in this failover, is read: a may have been switched off by us
    [read] = kinds(acts, ReadPower)
    assert read.host == "b"
    st, acts = step(v4, with_power_reads(st, [replace_read(read, "on")], 17.5, CFG), 17.5, CFG, first_fit)
    assert not kinds(acts, FenceHost)
    assert [(a.name, a.host) for a in kinds(acts, Alert)] == [("fencing_storm_hold", "a"), ("fencing_storm_hold", "b")]


def test_a_bad_record_is_skipped_with_an_alert_and_the_step_goes_on():
    from haagent.state.codec import build_view
    from haagent.store.client import KV
    from haagent.store.keys import Keys

    k = Keys("c")
    raw = {
        k.host_alive("a"): b"{}", k.host_state("a"): b'{"state": "active"}',
        k.host_report("a"): b'{"cpus": "eight", "running_vms": ["u1"]}',
        k.host_report("b"): b'{"running_vms": "abc"}', k.host_state("b"): b'{"state": 7}',
        k.vm_spec("u1"): b'{"name": "web-1", "vcpus": 2}', k.vm_spec("u2"): b"[1]",
        k.vm_placement("u1"): b'{"host": "a"}', k.vm_placement("u3"): b'{"host": ["a"]}',
        k.request("x"): b"[1]", k.op("o1") + "/head": b'{"host": "a"}', k.op("o1") + "/0000": b'{"step": 1}',
        k.host_state("c"): b"\xff\xfe",
    }
    kvs = {key: KV(key, value, i + 1, i + 1, 1, 0) for i, (key, value) in enumerate(sorted(raw.items()))}
    v = build_view(kvs, k, 7)
    assert sorted(key for key, _ in v.bad_records) == sorted([
        k.host_report("a"), k.host_report("b"), k.host_state("b"), k.vm_spec("u2"), k.vm_placement("u3"),
        k.request("x"), k.op("o1") + "/0000", k.host_state("c")])
    assert v.hosts["b"].running == frozenset() and v.hosts["b"].state_bad  # not {'a', 'b', 'c'}
    assert set(v.specs) == {"u1"} and v.placements == {"u1": "a"}
    st, acts = step(v, new_status(0.0), 10.0, CFG, first_fit)
    bad = sorted(a.message.split(":")[0] for a in kinds(acts, Alert) if a.name == "bad_record")
    assert bad == sorted(key for key, _ in v.bad_records)
    # b and c hold no lease and their state cannot be read: they are treated as lost (fenced
    # before anything of theirs moves), not silently forgotten
    assert sorted((a.host, a.new) for a in kinds(acts, SetHostState)) == [("b", S.SUSPECT), ("c", S.SUSPECT)]


def test_fence_dispatch_is_conditional_on_the_host_having_no_lease():
    from haagent.state.codec import action_compares
    from haagent.store.keys import Keys

    k = Keys("c")
    [cmp] = action_compares([FenceHost("a", "op1", 1), SetPlacement("vm1", "b", "", "")], k)
    assert (cmp.key, cmp.target, cmp.op, cmp.value) == (k.host_alive("a"), "version", "==", 0)


def test_finished_journals_are_forgotten_beyond_the_newest_few():
    ops = {f"o{i}": Op(f"o{i}", "failover", "a", 7, (OpStep("intent", 1.0), OpStep("done", 2.0)), rev=i)
           for i in range(5)}
    ops["open"] = Op("open", "failover", "b", 7, (OpStep("intent", 1.0),), rev=1)
    _, acts = step(view(ops=ops), new_status(0.0), 10.0, replace(CFG, keep_finished_ops=2), first_fit)
    from haagent.state.view import DeleteOp
    assert sorted(d.op for d in kinds(acts, DeleteOp)) == ["o0", "o1", "o2"]


def test_unmanage_is_a_request_the_leader_carries_out():
    from haagent.state.view import ForgetVm

    v = replace(view(), requests=(Request("r1", "unmanage", vm="vm1"), Request("r2", "bogus")))
    _, acts = step(v, new_status(0.0), 10.0, CFG, first_fit)
    assert [f.vm for f in kinds(acts, ForgetVm)] == ["vm1"]
    assert sorted(c.id for c in kinds(acts, ConsumeRequest)) == ["r1", "r2"]
    assert sorted(e.kind for e in kinds(acts, Event)) == ["request_discarded", "vm_unmanaged"]


def test_a_new_leader_keeps_the_storm_record_while_it_reads_the_held_hosts_again():
    v = view(alive=("c",), states={"a": S.SUSPECT, "b": S.SUSPECT, "c": S.ACTIVE})
    v = replace(v, storm_hold=("a", "b"), hosts={h: replace(hv, failover=f"f{h}") if h != "c" else hv
                                                 for h, hv in v.hosts.items()})
    st, acts = step(v, new_status(0.0), 1.0, CFG, first_fit)
    assert not kinds(acts, ReadPower) and not kinds(acts, SetStormHold)  # grace: nothing decided
    st, acts = step(v, st, 3.5, CFG, first_fit)
    reads = kinds(acts, ReadPower)
    assert sorted(r.host for r in reads) == ["a", "b"]
    assert not kinds(acts, SetStormHold) and not kinds(acts, Event) and not kinds(acts, FenceHost)
    st, acts = step(v, with_power_reads(st, [replace_read(r, "on") for r in reads], 4.0, CFG), 4.0, CFG, first_fit)
    assert not kinds(acts, SetStormHold) and not kinds(acts, Event) and not kinds(acts, FenceHost)
    assert sorted(a.host for a in kinds(acts, Alert)) == ["a", "b"]


def test_a_host_found_dead_then_returned_counts_again_when_it_is_lost_again():
    from haagent.manager.core import ManagerStatus

    # a died (its fence found it already off) and was returned to service by an operator
    v = view(states={"a": S.FAILED, "b": S.ACTIVE, "c": S.ACTIVE}, requests=[Request("r1", "host_return", "a")])
    st = replace(ManagerStatus(leader_since=0.0, seeded=True), known_dead=frozenset({"a"}),
                 suspect_log=(("a", 10.0),))
    st, acts = step(v, st, 20.0, CFG, first_fit)
    assert [(a.host, a.new) for a in kinds(acts, SetHostState)] == [("a", S.ACTIVE)]
    # within the storm window a and b are lost together: a is no longer "known dead"
    v = view(alive=("c",))
    st, acts = step(v, st, 25.0, CFG, first_fit)
    assert sorted(r.host for r in kinds(acts, ReadPower)) == ["a", "b"] and not kinds(acts, FenceHost)
