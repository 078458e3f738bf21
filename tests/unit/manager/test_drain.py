"""The migration executor's decisions (haagent/manager/drain.py) on hand-built views."""

from __future__ import annotations

from dataclasses import replace

import pytest

from haagent.config import MigrationSection
from haagent.manager.core import ManagerConfig, new_status, step
from haagent.manager.drain import Refused, check_drain, check_migrate
from haagent.model import HostState as S
from haagent.state.view import (Alert, ClearMigration, ClusterView, ConsumeRequest, Event, FenceHost, HostView,
                                JournalStep, Migration, MigrationReport, Op, OpStep, Request, SetHostState,
                                SetPlacement, StartMigration, VmSpec)

CFG = ManagerConfig(fence_delay=1.0, new_leader_grace=0.0, lease_ttl=3.0)
HOSTS = ("a", "b", "c")


def spread(todo, view, avoid):
    """Each VM to the allowed host with the fewest placed VMs (ties by name)."""
    counts = {h: 0 for h, hv in view.hosts.items() if h not in avoid and hv.alive}
    for h in view.placements.values():
        if h in counts:
            counts[h] += 1
    chosen, missed = {}, {}
    for s in todo:
        if not counts:
            missed[s.uuid] = ("no host",)
            continue
        h = min(counts, key=lambda h: (counts[h], h))
        chosen[s.uuid] = h
        counts[h] += 1
    return chosen, missed


def cluster(vms_on_a=4, states=None, alive=HOSTS, running=None, migrations=None, ops=None, requests=(),
            placements=None) -> ClusterView:
    specs = {f"vm{i}": VmSpec(f"vm{i}", f"acme-prod-web-{i}", memory_mib=256 * i) for i in range(1, vms_on_a + 1)}
    placements = placements if placements is not None else {u: "a" for u in specs}
    if running is None:
        running = {h: {u for u, p in placements.items() if p == h} for h in HOSTS}
    states = {**{h: S.ACTIVE for h in HOSTS}, **(states or {})}
    hosts = {h: HostView(h, h in alive, states[h], 8, 16384, frozenset(running.get(h, ()))) for h in HOSTS}
    return ClusterView(7, hosts, specs, placements, ops or {}, migrations or {}, tuple(requests))


def kinds(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def drain_op(vms, *steps, host="a"):
    intent = OpStep("intent", 1.0, {"request": "r1", "vms": list(vms), "partial": False, "max_parallel": 0})
    return Op("drain-a", "drain", host, 7, (intent, *steps), rev=10)


def run(v, now=10.0, cfg=CFG):
    return step(v, new_status(0.0), now, cfg, spread)[1]


def test_a_drain_request_journals_its_intent_and_turns_the_host_draining():
    acts = run(cluster(requests=[Request("r1", "drain", host="a")]))
    [intent] = kinds(acts, JournalStep)
    assert intent.kind == "drain" and intent.step.step == "intent"
    assert intent.step.detail["vms"] == ["vm4", "vm3", "vm2", "vm1"]  # larger first
    assert [(s.old, s.new) for s in kinds(acts, SetHostState)] == [(S.ACTIVE, S.DRAINING)]
    assert kinds(acts, ConsumeRequest) and not kinds(acts, StartMigration)  # migrations start next round


def test_migrations_start_within_the_limits_largest_first():
    v = cluster(states={"a": S.DRAINING}, ops={"drain-a": drain_op(["vm4", "vm3", "vm2", "vm1"])})
    acts = run(v)
    starts = kinds(acts, StartMigration)
    assert [(m.vm, m.source, m.attempt) for m in starts] == [("vm4", "a", 1), ("vm3", "a", 1)]  # max_outgoing 2
    assert {m.dest for m in starts} == {"b", "c"}
    assert [m.deadline for m in starts] == [30.7, 30.0]  # 3 passes over 1 GiB at 100 MiB/s, else the floor
    assert all(m.op == "drain-a" for m in starts)
    journaled = [j.step.detail["vm"] for j in kinds(acts, JournalStep) if j.step.step == "migrate_start"]
    assert journaled == ["vm4", "vm3"]
    # one more room per host and in the cluster: a tighter cluster limit holds the second one back
    tight = replace(CFG, migration=MigrationSection(max_cluster=1))
    assert len(kinds(run(v, cfg=tight), StartMigration)) == 1
    # migrations already in flight count against max_incoming of their target
    busy = replace(v, migrations={"x1": Migration("x1", "b", "c", 7, 30, "other", 1),
                                  "x2": Migration("x2", "b", "c", 7, 30, "other", 1)})
    assert {m.dest for m in kinds(run(busy), StartMigration)} == {"b"}


def test_a_migration_settles_by_where_the_vm_runs():
    mig = Migration("vm4", "a", "b", 7, 30.0, "drain-a", 1)
    op = drain_op(["vm4"], OpStep("migrate_start", 2.0, {"vm": "vm4", "to": "b", "attempt": 1}))
    base = dict(vms_on_a=4, states={"a": S.DRAINING}, migrations={"vm4": mig}, ops={"drain-a": op})
    placements = {"vm1": "a", "vm2": "a", "vm3": "a", "vm4": "a"}
    # still on the source: nothing settles
    acts = run(cluster(**base, placements=placements))
    assert not kinds(acts, ClearMigration)
    # both ends list it (the source has not reported since): in transit, no alert, no settling
    both = {"a": {"vm1", "vm2", "vm3", "vm4"}, "b": {"vm4"}}
    acts = run(cluster(**base, placements=placements, running=both))
    assert not kinds(acts, ClearMigration) and not [a for a in kinds(acts, Alert) if a.name == "vm_running_twice"]
    # on the target only: placement follows, the record goes, the journal says so
    there = {"a": {"vm1", "vm2", "vm3"}, "b": {"vm4"}}
    acts = run(cluster(**base, placements=placements, running=there))
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm4", "b")]
    assert [c.vm for c in kinds(acts, ClearMigration)] == ["vm4"]
    assert [j.step.step for j in kinds(acts, JournalStep) if j.op == "drain-a"][0] == "migrated"


def _failed(v, vm, dest, attempt, outcome="aborted-deadline"):
    a = v.hosts["a"]
    report = MigrationReport(vm, "a", dest, "drain-a", attempt, outcome, "source", "deadline passed")
    return replace(v, hosts={**v.hosts, "a": replace(a, migration_outcomes={vm: report})})


def test_a_failed_migration_is_retried_on_another_target_then_the_drain_pauses():
    cfg = replace(CFG, migration=MigrationSection(max_attempts=2))
    mig = Migration("vm1", "a", "b", 7, 30.0, "drain-a", 1)
    op = drain_op(["vm1"], OpStep("migrate_start", 2.0, {"vm": "vm1", "to": "b", "attempt": 1}))
    v = _failed(cluster(vms_on_a=1, states={"a": S.DRAINING}, migrations={"vm1": mig}, ops={"drain-a": op}),
                "vm1", "b", 1)
    acts = run(v, cfg=cfg)
    assert [c.vm for c in kinds(acts, ClearMigration)] == ["vm1"]
    assert [(m.vm, m.dest, m.attempt) for m in kinds(acts, StartMigration)] == [("vm1", "c", 2)]  # not b again
    # ... unless b is the only target left: then b again (up to max_attempts)
    only_b = replace(v, hosts={**v.hosts, "c": replace(v.hosts["c"], state=S.MAINTENANCE)})
    assert [(m.dest, m.attempt) for m in kinds(run(only_b, cfg=cfg), StartMigration)] == [("b", 2)]
    # a stale outcome (an older attempt) settles nothing
    stale = _failed(replace(v, migrations={"vm1": replace(mig, dest="c", attempt=2)}), "vm1", "b", 1)
    assert not kinds(run(stale, cfg=cfg), ClearMigration)
    # the second failure exhausts max_attempts: journal "paused", alert, nothing new starts
    op2 = replace(op, steps=op.steps + (OpStep("migrate_failed", 3.0, {"vm": "vm1", "to": "b", "attempt": 1}),
                                         OpStep("migrate_start", 4.0, {"vm": "vm1", "to": "c", "attempt": 2})))
    v2 = _failed(replace(v, migrations={"vm1": replace(mig, dest="c", attempt=2)}, ops={"drain-a": op2}),
                 "vm1", "c", 2)
    acts = run(v2, cfg=cfg)
    assert not kinds(acts, StartMigration)
    assert "paused" in [j.step.step for j in kinds(acts, JournalStep)]
    [alert] = [a for a in kinds(acts, Alert) if a.name == "drain_paused"]
    assert alert.host == "a" and "failed to migrate 2 times" in alert.message and "to c" in alert.message


def test_an_empty_draining_host_goes_to_maintenance_and_is_never_fenced_there():
    op = drain_op(["vm1"], OpStep("migrated", 3.0, {"vm": "vm1", "to": "b", "attempt": 1}))
    v = cluster(vms_on_a=1, states={"a": S.DRAINING}, ops={"drain-a": op}, placements={"vm1": "b"})
    acts = run(v)
    assert [(s.old, s.new) for s in kinds(acts, SetHostState)] == [(S.DRAINING, S.MAINTENANCE)]
    assert [j.step.step for j in kinds(acts, JournalStep)] == ["done"]
    # in maintenance, losing the lease is not a failure: no suspect, no fence, ever
    gone = cluster(vms_on_a=1, states={"a": S.MAINTENANCE}, alive=("b", "c"), placements={"vm1": "b"})
    st = new_status(0.0)
    for t in (10.0, 20.0, 60.0):
        st, acts = step(gone, st, t, CFG, spread)
        assert not kinds(acts, SetHostState) and not kinds(acts, FenceHost)


def test_a_host_lost_while_draining_is_failed_over_and_its_drain_closes():
    op = drain_op(["vm1", "vm2"])
    v = cluster(vms_on_a=2, states={"a": S.DRAINING}, alive=("b", "c"), ops={"drain-a": op})
    acts = run(v)
    assert [(s.old, s.new) for s in kinds(acts, SetHostState)] == [(S.DRAINING, S.SUSPECT)]
    done = [j for j in kinds(acts, JournalStep) if j.op == "drain-a"]
    assert [j.step.step for j in done] == ["done"] and "failover takes over" in done[0].step.detail["aborted"]
    assert not kinds(acts, StartMigration)


def test_undrain_returns_the_host_and_with_return_vms_opens_a_return_operation():
    moved = drain_op(["vm1", "vm2"], OpStep("migrated", 3.0, {"vm": "vm1", "to": "b", "attempt": 1}),
                     OpStep("migrated", 4.0, {"vm": "vm2", "to": "c", "attempt": 1}), OpStep("done", 5.0, {}))
    v = cluster(vms_on_a=2, states={"a": S.MAINTENANCE}, ops={"drain-a": moved}, placements={"vm1": "b", "vm2": "b"},
                requests=[Request("r2", "undrain", host="a", options={"return_vms": True})])
    acts = run(v)
    assert [(s.old, s.new) for s in kinds(acts, SetHostState)] == [(S.MAINTENANCE, S.ACTIVE)]
    [ret] = [j for j in kinds(acts, JournalStep) if j.kind == "return"]
    assert ret.host == "a" and ret.step.detail["vms"] == ["vm1"]  # vm2 was moved on since: it stays


@pytest.mark.parametrize("host,states,alive,why", [
    ("z", {}, HOSTS, "unknown host 'z'"),
    ("a", {"a": S.DRAINING}, HOSTS, "a is already draining"),
    ("a", {"a": S.MAINTENANCE}, HOSTS, "a is already in maintenance"),
    ("a", {}, ("b", "c"), "a is down"),
    ("a", {"b": S.MAINTENANCE, "c": S.FAILED}, HOSTS, "a is the last active host"),
])
def test_bad_drains_are_refused_in_one_line(host, states, alive, why):
    with pytest.raises(Refused, match=why) as exc:
        check_drain(cluster(states=states, alive=alive), host, spread, MigrationSection())
    assert "\n" not in str(exc.value)


def test_a_drain_that_cannot_place_a_vm_is_refused_naming_it_unless_partial():
    v = cluster(vms_on_a=2)
    v = replace(v, specs={**v.specs, "vm2": replace(v.specs["vm2"], policy="none")})
    with pytest.raises(Refused, match="cannot place acme-prod-web-2: HA policy none"):
        check_drain(v, "a", spread, MigrationSection())
    plan = check_drain(v, "a", spread, MigrationSection(), partial=True)
    assert [(m.vm, m.dest) for m in plan] == [("vm2", None), ("vm1", "b")]
    # the leader refuses the same request the same way, and changes nothing
    acts = run(replace(v, requests=(Request("r1", "drain", host="a"),)))
    assert not kinds(acts, SetHostState) and not kinds(acts, JournalStep)
    [ev] = [e for e in kinds(acts, Event) if e.kind == "drain_refused"]
    assert "acme-prod-web-2" in ev.detail["reason"]


def test_vm_migrate_checks_and_runs_through_the_same_executor():
    v = cluster(vms_on_a=1)
    assert check_migrate(v, "acme-prod-web-1", "c", spread).dest == "c"
    with pytest.raises(Refused, match="runs on a already"):
        check_migrate(v, "vm1", "a", spread)
    with pytest.raises(Refused, match="unknown VM"):
        check_migrate(v, "nope", "", spread)
    acts = run(replace(v, requests=(Request("r1", "migrate", vm="vm1", options={"to": "c"}),)))
    [intent] = kinds(acts, JournalStep)
    assert intent.kind == "migrate" and intent.step.detail["to"] == "c"
    op = Op(intent.op, "migrate", "a", 7, (replace(intent.step, rev=3),), rev=3)
    [m] = kinds(run(replace(v, ops={op.id: op})), StartMigration)
    assert (m.vm, m.source, m.dest) == ("vm1", "a", "c")


def test_a_vm_that_landed_and_stopped_on_the_target_belongs_to_the_target():
    mig = Migration("vm1", "a", "b", 7, 30.0, "drain-a", 1)
    op = drain_op(["vm1"], OpStep("migrate_start", 2.0, {"vm": "vm1", "to": "b", "attempt": 1}))
    v = cluster(vms_on_a=1, states={"a": S.DRAINING}, migrations={"vm1": mig}, ops={"drain-a": op},
                running={"a": set(), "b": set()})
    assert not kinds(run(v), SetPlacement)  # no outcome yet: it may be in transit
    a = v.hosts["a"]
    landed = MigrationReport("vm1", "a", "b", "drain-a", 1, "completed", "destination")
    v = replace(v, hosts={**v.hosts, "a": replace(a, migration_outcomes={"vm1": landed})})
    assert [(p.vm, p.host) for p in kinds(run(v), SetPlacement)] == [("vm1", "b")]


def test_a_vm_moves_by_one_migration_at_a_time():
    other = Migration("vm4", "a", "c", 7, 30.0, "migrate-vm4", 1)
    v = cluster(states={"a": S.DRAINING}, migrations={"vm4": other},
                ops={"drain-a": drain_op(["vm4", "vm3", "vm2", "vm1"])})
    starts = kinds(run(v), StartMigration)
    assert "vm4" not in [m.vm for m in starts] and len(starts) == 1  # max_outgoing counts the other op's
    # the drain does not end while another op still moves one of its host's VMs
    v = cluster(vms_on_a=1, states={"a": S.DRAINING}, migrations={"vm1": replace(other, vm="vm1")},
                ops={"drain-a": drain_op(["vm1"])})
    assert not kinds(run(v), SetHostState)


def test_no_new_attempt_while_the_sources_last_job_may_still_run():
    """The target was lost and failover cleared the order, but the source's libvirt job is still
    winding down to its deadline: a new attempt would fail at once, so it waits for the outcome."""
    start = OpStep("migrate_start", 2.0, {"vm": "vm1", "to": "b", "attempt": 1}, rev=20)
    v = cluster(vms_on_a=1, states={"a": S.DRAINING, "b": S.FAILED}, alive=("a", "c"),
                ops={"drain-a": drain_op(["vm1"], start)})
    v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], granted_rev=5)})
    assert not kinds(run(v), StartMigration)
    ended = _failed(v, "vm1", "b", 1)
    assert [(m.dest, m.attempt) for m in kinds(run(ended), StartMigration)] == [("c", 2)]
    # an agent that came back with a new lease since the order is not running that job
    renewed = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], granted_rev=25)})
    assert [m.attempt for m in kinds(run(renewed), StartMigration)] == [2]


def test_a_job_refused_because_an_abandoned_one_still_runs_does_not_count_as_an_attempt():
    cfg = replace(CFG, migration=MigrationSection(max_attempts=1))
    busy = OpStep("migrate_failed", 3.0, {"vm": "vm1", "to": "b", "attempt": 1, "outcome": "failed",
                                          "error": "Requested operation is not valid: another migration job is "
                                                   "already running for domain 'vm1'"})
    v = cluster(vms_on_a=1, states={"a": S.DRAINING}, ops={"drain-a": drain_op(["vm1"], busy)})
    acts = run(v, cfg=cfg)
    assert [m.attempt for m in kinds(acts, StartMigration)] == [1] and not kinds(acts, Alert)


# -- migration tuning and cold moves ----------------------------------------------------------


def test_the_order_carries_the_tuning_resolved_from_the_config_and_the_vms_mark():
    v = cluster(vms_on_a=2, states={"a": S.DRAINING}, ops={"drain-a": drain_op(["vm2", "vm1"])})
    v = replace(v, specs={**v.specs, "vm2": replace(v.specs["vm2"], memory_mib=4096,
                                                    migration=(("bandwidth_cap", 20), ("postcopy", True)))})
    cfg = replace(CFG, migration=MigrationSection(max_downtime_ms=300, auto_converge=True))
    by_vm = {m.vm: m for m in kinds(step(v, new_status(0.0), 10.0, cfg, spread)[1], StartMigration)}
    assert dict(by_vm["vm2"].options) == {"bandwidth_cap": 20, "max_downtime_ms": 300, "auto_converge": True,
                                          "postcopy": True, "postcopy_after_precopy": False}
    assert by_vm["vm2"].deadline == 614.4  # measured at its own cap: 3 passes over 4 GiB at 20 MiB/s
    assert dict(by_vm["vm1"].options)["bandwidth_cap"] == 0 and by_vm["vm1"].mode == "live"


def no_live(todo, view, avoid):
    """A mover for which no VM can live-migrate anywhere (e.g. no host with a compatible CPU)."""
    return {}, {s.uuid: ("incompatible CPU",) for s in todo}


def test_a_vm_that_cannot_go_live_is_refused_by_name_unless_cold_ok():
    v = cluster(vms_on_a=2)
    v = replace(v, specs={**v.specs, "vm1": replace(v.specs["vm1"], policy="none")})
    with pytest.raises(Refused, match="cannot place acme-prod-web-1: HA policy none: not live-migrated "
                                      r"\(--cold-ok shuts it down and starts it on the target\)"):
        check_drain(v, "a", spread, MigrationSection(), placer=spread)
    plan = check_drain(v, "a", spread, MigrationSection(), cold_ok=True, placer=spread)
    assert [(m.name, m.verdict) for m in plan] == [("acme-prod-web-2", "live"), ("acme-prod-web-1", "cold")]
    assert plan[1].reasons == ("HA policy none: not live-migrated",) and plan[1].dest in ("b", "c")
    # no live target (its CPU): cold with --cold-ok, placed by the restart rules off its own host
    plan = check_drain(cluster(vms_on_a=1), "a", no_live, MigrationSection(), cold_ok=True, placer=spread)
    assert [(m.verdict, m.reasons) for m in plan] == [("cold", ("incompatible CPU",))]
    # nowhere at all, even cold: refused, saying both
    with pytest.raises(Refused, match="incompatible CPU, cold: no host"):
        check_drain(cluster(vms_on_a=1), "a", no_live, MigrationSection(), cold_ok=True,
                    placer=lambda todo, view, avoid: ({}, {s.uuid: ("no host",) for s in todo}))


def cold_op(vms, host="a"):
    intent = OpStep("intent", 1.0, {"request": "r1", "vms": list(vms), "partial": False, "max_parallel": 0,
                                    "cold_ok": True})
    return Op("drain-a", "drain", host, 7, (intent,), rev=10)


def test_a_cold_move_shuts_down_first_then_places_and_starts_on_the_target_only_once_it_runs_nowhere():
    v = cluster(vms_on_a=1, states={"a": S.DRAINING}, ops={"drain-a": cold_op(["vm1"])})
    v = replace(v, specs={"vm1": replace(v.specs["vm1"], policy="none")})
    [order] = kinds(run(v), StartMigration)
    assert (order.mode, order.deadline, order.options) == ("cold", 120.0, ())
    mig = Migration("vm1", "a", order.dest, 7, 120.0, "drain-a", 1, (), "cold")
    # shutting down: nothing moves while the source runs it or has not said how it ended
    assert not kinds(run(replace(v, migrations={"vm1": mig})), SetPlacement)
    stopped = MigrationReport("vm1", "a", order.dest, "drain-a", 1, "completed", "none")
    hosts = {**v.hosts, "a": replace(v.hosts["a"], running=frozenset(), migration_outcomes={"vm1": stopped})}
    # the report says stopped but a live host still lists it running: wait
    stale = {**hosts, "a": replace(hosts["a"], running=frozenset({"vm1"}))}
    assert not kinds(run(replace(v, migrations={"vm1": mig}, hosts=stale)), SetPlacement)
    acts = run(replace(v, migrations={"vm1": mig}, hosts=hosts))
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", order.dest)]
    [second] = kinds(acts, StartMigration)
    assert second.mode == "cold-start" and not kinds(acts, ClearMigration)
    # started on the target: done, journaled as a cold move (undrain --return-vms moves it back cold)
    started = replace(mig, mode="cold-start")
    hosts2 = {**hosts, order.dest: replace(hosts[order.dest], running=frozenset({"vm1"}))}
    acts = run(replace(v, migrations={"vm1": started}, hosts=hosts2, placements={"vm1": order.dest}))
    assert kinds(acts, ClearMigration)
    [done] = [j for j in kinds(acts, JournalStep) if j.step.step == "migrated"]
    assert done.step.detail["mode"] == "cold"


def test_a_failed_cold_shutdown_is_retried_like_a_failed_migration():
    v = cluster(vms_on_a=1, states={"a": S.DRAINING}, ops={"drain-a": cold_op(["vm1"])})
    mig = Migration("vm1", "a", "b", 7, 120.0, "drain-a", 1, (), "cold")
    failed = MigrationReport("vm1", "a", "b", "drain-a", 1, "failed", "source", "still running")
    hosts = {**v.hosts, "a": replace(v.hosts["a"], migration_outcomes={"vm1": failed})}
    acts = run(replace(v, migrations={"vm1": mig}, hosts=hosts))
    assert kinds(acts, ClearMigration) and not kinds(acts, SetPlacement)
    assert [j.step.detail["outcome"] for j in kinds(acts, JournalStep) if j.step.step == "migrate_failed"] == ["failed"]


def test_a_failover_counts_a_migration_in_flight_on_its_target():
    """A host a live migration is landing on has that VM's room taken already: recovery placing
    VMs meanwhile must not fill it (the simulator's NUMA-fit invariant caught a drain's target
    overfilled by a failover's placements)."""
    v = cluster(vms_on_a=2, placements={"vm1": "a", "vm2": "c"}, states={"c": S.RECOVERING}, alive=("a", "b"),
                running={"a": {"vm1"}})
    v = replace(v, migrations={"vm1": Migration("vm1", "a", "b", 7, 30.0, "drain-a", 1)},
                ops={"drain-a": drain_op(["vm1"])})
    moved = {p.vm: p.host for p in kinds(run(v), SetPlacement)}
    assert moved == {"vm2": "a"}  # "b" holds no VM yet, but vm1 is arriving there


# -- --all: VMs haagent does not manage -----------------------------------------------------------


def with_other(v, host="a", uuid="other", memory_mib=512):
    spec = VmSpec(uuid, "scratch-1", memory_mib=memory_mib, policy="migrate")
    return replace(v, hosts={**v.hosts, host: replace(v.hosts[host], unmanaged={uuid: spec})})


def test_drain_all_plans_the_unmanaged_vms_live_only():
    v = with_other(cluster(vms_on_a=1))
    assert [m.vm for m in check_drain(v, "a", spread, MigrationSection())] == ["vm1"]  # without --all: left
    plan = check_drain(v, "a", spread, MigrationSection(), all_vms=True)
    assert {m.vm: m.verdict for m in plan} == {"vm1": "live", "other": "live"}
    # one that cannot go live is refused, never moved cold (nothing to start it from)
    with pytest.raises(Refused, match="scratch-1: incompatible CPU, not managed by haagent: live migration only"):
        check_drain(v, "a", no_live, MigrationSection(), all_vms=True, cold_ok=True, placer=spread)
    # one on local disks (its host's report says so) likewise, naming them
    local = {"other": replace(v.hosts["a"].unmanaged["other"], local_disks=("/srv/scratch.img",))}
    v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], unmanaged=local)})
    with pytest.raises(Refused, match=r"scratch-1: local disk\(s\) /srv/scratch.img: .*not managed by haagent"):
        check_drain(v, "a", spread, MigrationSection(), all_vms=True, cold_ok=True, placer=spread)


def test_an_unmanaged_vm_is_ordered_then_settled_by_the_reports_without_a_placement():
    intent = OpStep("intent", 1.0, {"request": "r1", "vms": ["other"], "partial": False, "max_parallel": 0,
                                    "all": True})
    op = Op("drain-a", "drain", "a", 7, (intent,), rev=10)
    v = with_other(cluster(vms_on_a=0, states={"a": S.DRAINING}, ops={"drain-a": op}))
    [order] = kinds(run(v), StartMigration)
    assert (order.vm, order.source, order.mode) == ("other", "a", "live")
    mig = Migration("other", "a", order.dest, 7, order.deadline, "drain-a", 1)
    done = MigrationReport("other", "a", order.dest, "drain-a", 1, "completed", "destination")
    spec = v.hosts["a"].unmanaged["other"]
    hosts = {**v.hosts, "a": replace(v.hosts["a"], unmanaged={}, migration_outcomes={"other": done}),
             order.dest: replace(v.hosts[order.dest], unmanaged={"other": spec})}
    acts = run(replace(v, migrations={"other": mig}, hosts=hosts))
    assert kinds(acts, ClearMigration) and not kinds(acts, SetPlacement)
    assert [j.step.step for j in kinds(acts, JournalStep)][:1] == ["migrated"]
    assert (S.DRAINING, S.MAINTENANCE) in [(s.old, s.new) for s in kinds(acts, SetHostState)]


def test_a_lost_side_only_clears_an_unmanaged_vms_order():
    mig = Migration("other", "a", "b", 7, 30.0, "drain-a", 1)
    v = with_other(cluster(vms_on_a=0, states={"a": S.FAILED}, alive=("b", "c")), host="b")
    acts = run(replace(v, migrations={"other": mig}))
    assert kinds(acts, ClearMigration) and not kinds(acts, SetPlacement)
    [ev] = [e for e in kinds(acts, Event) if e.kind == "migration_resolved"]
    assert ev.detail["running_on"] == ["b"]


def with_local_disk(v, vm="vm1", path="/var/lib/libvirt/images/db.qcow2"):
    return replace(v, specs={**v.specs, vm: replace(v.specs[vm], local_disks=(path,))})


def test_a_vm_with_local_disks_is_refused_by_name_up_front_and_moves_only_cold():
    v = with_local_disk(cluster(vms_on_a=2))
    # the mover would take it (spread knows nothing of disks): the executor never asks it
    with pytest.raises(Refused, match=r"cannot place acme-prod-web-1: local disk\(s\) /var/lib/libvirt/images/"
                                      r"db.qcow2: not on shared storage .*\(--cold-ok shuts it down"):
        check_drain(v, "a", spread, MigrationSection(), placer=spread)
    plan = check_drain(v, "a", spread, MigrationSection(), cold_ok=True, placer=spread)
    assert [(m.name, m.verdict) for m in plan] == [("acme-prod-web-2", "live"), ("acme-prod-web-1", "cold")]
    assert "local disk(s) /var/lib/libvirt/images/db.qcow2" in plan[1].reasons[0]
    # --partial without --cold-ok leaves it on the host (like an HA-policy-none VM)
    assert [m.verdict for m in check_drain(v, "a", spread, MigrationSection(), partial=True)] == ["live", "refused"]
    with pytest.raises(Refused, match=r"acme-prod-web-1 cannot live-migrate: local disk\(s\) .*"
                                      r"'haagent host drain a --cold-ok' moves it cold"):
        check_migrate(v, "vm1", "", spread)
    # the leader's executor: a cold order for it, a live one for the other
    op = cold_op(["vm1", "vm2"])
    orders = kinds(run(replace(v, ops={"drain-a": op}, hosts={
        **v.hosts, "a": replace(v.hosts["a"], state=S.DRAINING)})), StartMigration)
    assert sorted((o.vm, o.mode) for o in orders) == [("vm1", "cold"), ("vm2", "live")]
    # without --cold-ok (a --partial drain) it gets no order at all
    partial = replace(op, steps=(replace(op.steps[0], detail={**op.steps[0].detail, "cold_ok": False}),))
    orders = kinds(run(replace(v, ops={"drain-a": partial}, hosts={
        **v.hosts, "a": replace(v.hosts["a"], state=S.DRAINING)})), StartMigration)
    assert [(o.vm, o.mode) for o in orders] == [("vm2", "live")]


def _cold_start(v, dest, attempt, answer=None, *steps):
    """vm1 shut down on a, placed on ``dest`` with a cold-start order; ``answer``: dest's outcome."""
    mig = Migration("vm1", "a", dest, 7, 10.0, "drain-a", attempt, (), "cold-start")
    op = cold_op(["vm1"])
    op = replace(op, steps=op.steps + (OpStep("migrate_start", 2.0, {"vm": "vm1", "to": "b", "attempt": 1,
                                                                      "mode": "cold"}),) + steps)
    hosts = {**v.hosts, "a": replace(v.hosts["a"], state=S.DRAINING, running=frozenset())}
    if answer is not None:
        report = MigrationReport("vm1", dest, dest, "drain-a", attempt, answer, "none", "not started here")
        hosts[dest] = replace(hosts[dest], migration_outcomes={"vm1": report})
    return replace(v, hosts=hosts, migrations={"vm1": mig}, ops={"drain-a": op}, placements={"vm1": dest})


def test_a_cold_start_its_target_gave_up_goes_to_another_target_then_back_to_its_source():
    cfg = replace(CFG, migration=MigrationSection(max_attempts=2, cold_start_timeout=15))
    v = cluster(vms_on_a=1)
    # no answer from b yet: nothing moves (b may still start it)
    acts = run(_cold_start(v, "b", 1), cfg=cfg)
    assert not kinds(acts, SetPlacement) and not kinds(acts, StartMigration) and not kinds(acts, ClearMigration)
    # an answer to another order (an older attempt) says nothing of this one
    stale = _cold_start(v, "b", 1, "failed")
    stale = replace(stale, migrations={"vm1": replace(stale.migrations["vm1"], attempt=2)})
    assert not kinds(run(stale, cfg=cfg), SetPlacement)
    # b gave it up and it runs nowhere: placed on c with the next attempt's cold-start order
    acts = run(_cold_start(v, "b", 1, "failed"), cfg=cfg)
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", "c")]
    [order] = kinds(acts, StartMigration)
    assert (order.source, order.dest, order.attempt, order.mode, order.deadline) == ("a", "c", 2, "cold-start", 15.0)
    assert not kinds(acts, ClearMigration)  # rewritten in place: never a moment without an order
    steps = [(j.step.step, j.step.detail.get("to")) for j in kinds(acts, JournalStep)]
    assert steps[:2] == [("migrate_failed", "b"), ("migrate_start", "c")]
    # ... but not while b (or anyone) reports it running
    running = _cold_start(v, "b", 1, "failed")
    running = replace(running, hosts={**running.hosts, "c": replace(running.hosts["c"], running=frozenset({"vm1"}))})
    assert not kinds(run(running, cfg=cfg), SetPlacement)
    # c gave it up too: max_attempts (2) spent, back to its source, and the drain pauses saying why
    failed_b = OpStep("migrate_failed", 3.0, {"vm": "vm1", "to": "b", "attempt": 1, "outcome": "failed",
                                              "error": "not started here"})
    start_c = OpStep("migrate_start", 4.0, {"vm": "vm1", "to": "c", "attempt": 2, "mode": "cold-start"})
    acts = run(_cold_start(v, "c", 2, "failed", failed_b, start_c), cfg=cfg)
    assert [c.vm for c in kinds(acts, ClearMigration)] == ["vm1"] and not kinds(acts, StartMigration)
    assert [(p.vm, p.host) for p in kinds(acts, SetPlacement)] == [("vm1", "a")]
    [alert] = [a for a in kinds(acts, Alert) if a.name == "drain_paused"]
    assert "failed to migrate 2 times" in alert.message and "to c" in alert.message


def test_a_cold_start_nobody_answers_raises_an_alert_past_its_deadline_and_moves_nothing():
    v = _cold_start(cluster(vms_on_a=1), "b", 1)
    status, acts = step(v, new_status(0.0), 10.0, CFG, spread)
    assert not [a for a in kinds(acts, Alert) if a.name == "drain_paused"]
    # deadline (10 s) + 2 lease TTLs later, still no answer: alert (on the leader's own clock)
    status, acts = step(v, status, 10.0 + 10.0 + 6.0, CFG, spread)
    assert not [a for a in kinds(acts, Alert) if a.name == "drain_paused"]
    status, acts = step(v, status, 10.0 + 10.0 + 6.1, CFG, spread)
    [alert] = [a for a in kinds(acts, Alert) if a.name == "drain_paused"]
    assert alert.vm == "vm1" and "b has neither started it nor given its start up" in alert.message
    assert not kinds(acts, SetPlacement) and not kinds(acts, StartMigration)


def test_a_cold_moves_second_half_carries_the_cold_start_deadline():
    cfg = replace(CFG, migration=MigrationSection(cold_start_timeout=3))  # under the floor: the floor
    v = cluster(vms_on_a=1, states={"a": S.DRAINING}, ops={"drain-a": cold_op(["vm1"])})
    mig = Migration("vm1", "a", "b", 7, 120.0, "drain-a", 1, (), "cold")
    stopped = MigrationReport("vm1", "a", "b", "drain-a", 1, "completed", "none")
    hosts = {**v.hosts, "a": replace(v.hosts["a"], running=frozenset(), migration_outcomes={"vm1": stopped})}
    [second] = kinds(run(replace(v, migrations={"vm1": mig}, hosts=hosts), cfg=cfg), StartMigration)
    assert (second.mode, second.deadline) == ("cold-start", 10.0)


def test_progress_shows_a_cold_start_retried_on_another_target():
    from haagent.manager.migrate_cli import op_progress

    steps = (OpStep("migrate_start", 2.0, {"vm": "vm1", "to": "b", "attempt": 1, "mode": "cold"}),
             OpStep("cold_stopped", 3.0, {"vm": "vm1", "to": "b", "attempt": 1}),
             OpStep("migrate_failed", 9.0, {"vm": "vm1", "to": "b", "attempt": 1, "outcome": "failed",
                                            "mode": "cold-start"}),
             OpStep("migrate_start", 9.0, {"vm": "vm1", "to": "c", "attempt": 2, "mode": "cold-start"}))
    op = replace(cold_op(["vm1"]), steps=cold_op(["vm1"]).steps + steps)
    p = op_progress(cluster(vms_on_a=1), op)
    assert p["vms"] == {"acme-prod-web-1": "starting on c (cold move, attempt 2)"} and p["moved"] == 0
