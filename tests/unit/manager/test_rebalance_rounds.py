"""The leader's rebalance rounds (haagent/manager/rebalance.py) on hand-built views, with a
planner that records what it was asked and returns fixed plans; plus one round through the
production planner (policies.rebalance over the live cluster)."""

from __future__ import annotations

from dataclasses import replace

from haagent.config import RebalanceSection
from haagent.manager.core import ManagerConfig, ManagerStatus, new_status, step
from haagent.manager.placer import policy_mover, policy_rebalancer
from haagent.manager.rebalance import RoundLimits, RoundMove, RoundPlan, in_window, window_closed
from haagent.model import HostState as S
from haagent.state.view import (ClusterView, Event, HostView, JournalStep, Migration, MigrationReport, Op, OpStep, Request,
                                StartMigration, VmSpec)

HOSTS = ("a", "b", "c")
RB = RebalanceSection(mode="auto", interval=60.0, threshold=0.1, min_gain=0.01, vm_cooldown=600.0)
CFG = ManagerConfig(new_leader_grace=0.0, rebalance=RB)


def view(placements=None, states=None, ops=None, migrations=None, requests=(), load=True) -> ClusterView:
    specs = {f"vm{i}": VmSpec(f"vm{i}", f"acme-prod-web-{i}", vcpus=2, memory_mib=1024) for i in range(1, 5)}
    placements = placements or {u: "a" for u in specs}
    states = {**{h: S.ACTIVE for h in HOSTS}, **(states or {})}
    hosts = {}
    for h in HOSTS:
        mine = [u for u, p in placements.items() if p == h]
        hosts[h] = HostView(h, True, states[h], 8, 16384, frozenset(mine), cpu_used=1.5 * len(mine) if load else 0.0,
                            memory_used_mib=1024.0 * len(mine), vm_cpu={u: 1.5 if load else 0.0 for u in mine})
    return ClusterView(7, hosts, specs, placements, ops or {}, migrations or {}, tuple(requests))


class Planner:
    """Returns ``plans`` in turn (the last one again); records the frozen VMs and limits it got."""

    def __init__(self, *plans: RoundPlan):
        self.plans = list(plans)
        self.calls: list[tuple[frozenset[str], RoundLimits]] = []

    def __call__(self, v, frozen, limits):
        self.calls.append((frozen, limits))
        return self.plans.pop(0) if len(self.plans) > 1 else self.plans[0]


def plan(*moves: tuple[str, str, str], before=0.5) -> RoundPlan:
    ms = tuple(RoundMove(vm, vm, src, dst, 1024, before - 0.1 * (i + 1), "why") for i, (vm, src, dst) in enumerate(moves))
    return RoundPlan(ms, before, ms[-1].score_after if ms else before)


def rounds(v, planner, times, status=None, cfg=CFG, wall=None):
    """Step at each time; the actions of each step."""
    status = status or new_status(0.0)
    out = []
    for t in times:
        status, acts = step(v, status, t, cfg, lambda *a: ({}, {}), policy_mover(), planner, wall if wall else t)
        out.append(acts)
    return status, out


def events(acts, kind):
    return [a for a in acts if isinstance(a, Event) and a.kind == kind]


def intents(acts):
    return [a for a in acts if isinstance(a, JournalStep) and a.step.step == "intent"]


def test_a_round_every_interval_from_one_interval_after_leading_and_confirmed_by_the_next():
    p = Planner(plan(("vm1", "a", "b"), ("vm2", "a", "c")))
    status, out = rounds(view(), p, [0.0, 30.0, 60.0, 90.0, 120.0])
    assert [len(p.calls)] == [2]  # rounds at 60 and 120 only
    assert not intents(out[2])  # the first plan waits for the next round to plan the same
    assert status.rebalance.last.result == "planned"
    [intent] = intents(out[4])
    assert intent.kind == "rebalance" and intent.step.detail["moves"] == {"vm1": {"from": "a", "to": "b"},
                                                                          "vm2": {"from": "a", "to": "c"}}
    assert events(out[4], "rebalance_started")


def test_only_the_moves_two_rounds_agree_on_are_made():
    p = Planner(plan(("vm1", "a", "b"), ("vm2", "a", "c")), plan(("vm1", "a", "b"), ("vm3", "a", "c")))
    _, out = rounds(view(), p, [60.0, 120.0])
    [intent] = intents(out[1])
    assert intent.step.detail["vms"] == ["vm1"]


def test_unchanged_cluster_below_threshold_or_without_moves_is_quiet():
    p = Planner(plan(("vm1", "a", "b"), before=0.1))  # at the threshold: nothing
    status, out = rounds(view(), p, [60.0, 120.0, 180.0])
    assert not any(intents(o) or events(o, "rebalance_advised") for o in out)
    assert status.rebalance.last.result == "quiet" and status.rebalance.seq == 3
    p = Planner(plan())
    status, out = rounds(view(), p, [60.0, 120.0])
    assert status.rebalance.last.result == "quiet" and not any(intents(o) for o in out)


def test_advise_writes_the_plan_once_as_an_event():
    cfg = replace(CFG, rebalance=replace(RB, mode="advise"))
    p = Planner(plan(("vm1", "a", "b")))
    _, out = rounds(view(), p, [60.0, 120.0, 180.0, 240.0], cfg=cfg)
    advised = [e for o in out for e in events(o, "rebalance_advised")]
    assert len(advised) == 1 and advised[0].detail["moves"][0]["to"] == "b" and advised[0].detail["gib"] == 1.0
    assert not any(intents(o) for o in out)


def test_off_plans_nothing_on_its_own_but_run_works_whatever_the_mode_window_or_threshold():
    cfg = replace(CFG, rebalance=replace(RB, mode="off", window="0 0 1 1 *"))
    p = Planner(plan(("vm1", "a", "b"), before=0.05))
    _, out = rounds(view(), p, [60.0, 120.0], cfg=cfg)
    assert not p.calls
    _, out = rounds(view(requests=[Request("r1", "rebalance", options={"max_moves": 1})]), p, [10.0], cfg=cfg)
    [intent] = intents(out[0])
    assert intent.step.detail["request"] == "r1" and p.calls[-1][1].max_moves == 1


def test_window_closed_means_no_round():
    cfg = replace(CFG, rebalance=replace(RB, window="5-6 * * * *"))  # minutes 5 and 6 of each hour
    p = Planner(plan(("vm1", "a", "b")))
    rounds(view(), p, [60.0, 120.0, 240.0], cfg=cfg)
    assert not p.calls
    rounds(view(), p, [300.0], cfg=cfg, status=new_status(240.0))
    assert len(p.calls) == 1
    assert in_window("* 22-23,0-5 * * *", "UTC", 23 * 3600) and not in_window("* 22-23,0-5 * * *", "UTC", 12 * 3600)
    assert in_window("* 0 * * *", "Europe/Paris", 23 * 3600)  # 00:xx in Paris is 23:xx UTC in winter


def test_no_round_while_a_drain_is_in_flight_and_a_run_is_refused_with_the_reason():
    drain = Op("drain-c", "drain", "c", 7, (OpStep("intent", 1.0, {"vms": []}),), rev=3)
    v = view(states={"c": S.DRAINING}, ops={"drain-c": drain}, requests=[Request("r1", "rebalance")])
    p = Planner(plan(("vm1", "a", "b")))
    status, out = rounds(v, p, [60.0])
    assert not p.calls and not intents(out[0])
    [refused] = events(out[0], "rebalance_refused")
    assert "drain" in refused.detail["reason"] or "draining" in refused.detail["reason"]
    assert status.rebalance.last.result == "skipped"


def test_lost_hosts_and_the_new_leaders_grace_skip_the_round():
    p = Planner(plan(("vm1", "a", "b")))
    status, _ = rounds(view(states={"c": S.FENCING}), p, [60.0])
    assert not p.calls and status.rebalance.last.reason == "c is fencing"
    cfg = replace(CFG, new_leader_grace=100.0)
    status, _ = rounds(view(), p, [60.0], cfg=cfg)
    assert not p.calls and status.rebalance.last.result == "skipped"


def _moved(op_id, vm, src, dst, at):
    intent = OpStep("intent", at - 5, {"vms": [vm], "moves": {vm: {"from": src, "to": dst}}})
    return Op(op_id, "rebalance", "cluster", 7, (intent, OpStep("migrated", at, {"vm": vm, "to": dst}),
                                                 OpStep("done", at, {"moved": 1})), rev=2)


def test_cooldown_from_the_journal_and_migrating_vms_are_frozen():
    op = _moved("rebalance-1", "vm2", "b", "a", at=1000.0)
    migrating = {"vm3": Migration("vm3", "a", "c", 7, 30.0, "migrate-x", 1)}
    p = Planner(plan())
    rounds(view(ops={op.id: op}, migrations=migrating), p, [60.0], wall=1500.0)
    frozen, limits = p.calls[0]
    assert {"vm2", "vm3"} <= frozen and "vm1" not in frozen
    assert (limits.max_moves, limits.max_gib, limits.min_gain) == (4, 64.0, 0.01)
    p = Planner(plan())
    rounds(view(ops={op.id: op}), p, [60.0], wall=1700.0)  # 700 s later: past vm_cooldown
    assert "vm2" not in p.calls[0][0]


def test_a_vm_is_never_sent_back_to_the_host_a_rebalance_took_it_from():
    op = _moved("rebalance-1", "vm1", "b", "a", at=0.0)
    # The plan's first move sends vm1 back: re-planned with vm1 frozen. A later one is cut off.
    p = Planner(plan(("vm1", "a", "b"), ("vm2", "a", "c")), plan(("vm2", "a", "c"), ("vm1", "a", "b")))
    rounds(view(ops={op.id: op}), p, [60.0], wall=1e6)
    assert "vm1" in p.calls[1][0]
    _, out = rounds(view(ops={op.id: op}, requests=[Request("r", "rebalance")]),
                    Planner(plan(("vm2", "a", "c"), ("vm1", "a", "b"))), [10.0], wall=1e6)
    [intent] = intents(out[0])
    assert intent.step.detail["vms"] == ["vm2"]


def test_the_executor_moves_each_vm_to_its_planned_host_and_drops_stale_moves():
    intent = OpStep("intent", 1.0, {"vms": ["vm1", "vm2"], "moves": {"vm1": {"from": "a", "to": "c"},
                                                                  "vm2": {"from": "b", "to": "c"}}})
    op = Op("rebalance-7-1", "rebalance", "cluster", 7, (intent,), rev=5)
    v = view(placements={"vm1": "a", "vm2": "a", "vm3": "a", "vm4": "b"}, ops={op.id: op})
    status, acts = step(v, new_status(0.0), 10.0, CFG, lambda *a: ({}, {}), policy_mover())
    starts = [a for a in acts if isinstance(a, StartMigration)]
    assert [(m.vm, m.source, m.dest) for m in starts] == [("vm1", "a", "c")]  # vm2 is not on b: dropped
    done = [a for a in acts if isinstance(a, JournalStep) and a.step.step == "done"]
    assert not done
    # vm1 landed: the op ends, vm2's move dropped.
    landed = replace(op, steps=(intent, OpStep("migrate_start", 2.0, {"vm": "vm1", "to": "c", "attempt": 1}, 6),
                                OpStep("migrated", 3.0, {"vm": "vm1", "to": "c"}, 7)))
    v = view(placements={"vm1": "c", "vm2": "a", "vm3": "a", "vm4": "b"}, ops={op.id: landed})
    _, acts = step(v, new_status(0.0), 20.0, CFG, lambda *a: ({}, {}), policy_mover())
    [done] = [a for a in acts if isinstance(a, JournalStep) and a.step.step == "done"]
    assert done.step.detail == {"moved": 1, "dropped": ["vm2"]}
    assert events(acts, "rebalance_finished")


def test_a_drain_cancels_the_rebalance_in_flight():
    intent = OpStep("intent", 1.0, {"vms": ["vm1"], "moves": {"vm1": {"from": "a", "to": "c"}}})
    op = Op("rebalance-7-1", "rebalance", "cluster", 7, (intent,), rev=5)
    drain = Op("drain-b", "drain", "b", 7, (OpStep("intent", 1.0, {"vms": []}),), rev=6)
    v = view(states={"b": S.DRAINING}, ops={op.id: op, drain.id: drain})
    _, acts = step(v, new_status(0.0), 10.0, CFG, lambda *a: ({}, {}), policy_mover())
    assert not [a for a in acts if isinstance(a, StartMigration)]
    steps = [a.step.step for a in acts if isinstance(a, JournalStep) and a.op == op.id]
    assert steps == ["cancelling", "done"]


def test_the_production_planner_spreads_the_busy_host_and_says_why():
    rb = policy_rebalancer()
    p = rb(view(), frozenset(), RoundLimits(4, 64.0, 0.01))
    assert p.moves and p.score_after < p.score_before
    assert {m.source for m in p.moves} == {"a"} and {m.dest for m in p.moves} <= {"b", "c"}
    assert all("a runs cpu" in m.why for m in p.moves)
    frozen = rb(view(), frozenset({"vm1", "vm2", "vm3", "vm4"}), RoundLimits(4, 64.0, 0.01))
    assert not frozen.moves
    # An unchanged cluster after the plan's moves: nothing more to gain.
    after = {**{u: "a" for u in ("vm1", "vm2", "vm3", "vm4")}, **{m.vm: m.dest for m in p.moves}}
    assert not rb(view(placements=after), frozenset(), RoundLimits(4, 64.0, 0.01)).moves


def test_status_memory_defaults():
    assert ManagerStatus(leader_since=0.0).rebalance.seq == 0


def test_the_shell_records_each_round_in_the_metrics():
    from haagent import metrics
    from haagent.manager.rebalance import RoundRecord
    from haagent.manager.shell import DaemonSink

    def value(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    planned, moves = value("haagent_rebalance_rounds_total", result="planned"), value(
        "haagent_rebalance_moves_total", mode="auto")
    skipped = value("haagent_rebalance_rounds_total", result="skipped")
    sink = DaemonSink(wall=lambda: 0.0)
    sink("rebalance_round", {"round": RoundRecord(1, "planned", "auto", 0.42, 3)})
    sink("rebalance_round", {"round": RoundRecord(2, "skipped", "auto", None, 0, "h2 is draining")})
    assert value("haagent_rebalance_rounds_total", result="planned") == planned + 1
    assert value("haagent_rebalance_rounds_total", result="skipped") == skipped + 1
    assert value("haagent_rebalance_moves_total", mode="auto") == moves + 3
    assert value("haagent_rebalance_score") == 0.42


def test_a_move_whose_target_no_longer_takes_it_is_dropped_not_blocking():
    intent = OpStep("intent", 1.0, {"vms": ["vm1"], "moves": {"vm1": {"from": "a", "to": "c"}}})
    op = Op("rebalance-7-1", "rebalance", "cluster", 7, (intent,), rev=5)

    def refuses(todo, v, avoid):
        return {}, {s.uuid: ("reserve: c keeps room for failover",) for s in todo}

    v = view(ops={op.id: op})
    _, acts = step(v, new_status(0.0), 10.0, CFG, lambda *a: ({}, {}), refuses)
    [dropped] = [a for a in acts if isinstance(a, JournalStep) and a.step.step == "dropped"]
    assert dropped.step.detail == {"vm": "vm1", "to": "c", "reason": "reserve: c keeps room for failover"}
    assert not [a for a in acts if isinstance(a, StartMigration)]
    assert not [a for a in acts if getattr(a, "name", "") == "drain_paused"]
    after = replace(op, steps=(intent, OpStep("dropped", 2.0, {"vm": "vm1", "to": "c"}, 6)))
    _, acts = step(view(ops={op.id: after}), new_status(0.0), 20.0, CFG, lambda *a: ({}, {}), refuses)
    [done] = [a for a in acts if isinstance(a, JournalStep) and a.step.step == "done"]
    assert done.step.detail == {"moved": 0, "dropped": ["vm1"]}


def test_a_vm_stopped_since_the_round_does_not_hold_the_op_open():
    intent = OpStep("intent", 1.0, {"vms": ["vm1"], "moves": {"vm1": {"from": "a", "to": "c"}}})
    op = Op("rebalance-7-1", "rebalance", "cluster", 7, (intent,), rev=5)
    v = view(ops={op.id: op})
    v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], running=v.hosts["a"].running - {"vm1"})})
    _, acts = step(v, new_status(0.0), 10.0, CFG, lambda *a: ({}, {}), policy_mover())
    [done] = [a for a in acts if isinstance(a, JournalStep) and a.step.step == "done"]
    assert done.step.detail == {"moved": 0, "dropped": ["vm1"]}


# -- the window binds a scheduled round's moves, not only its start -------------------------------


def test_the_window_is_open_for_whole_matching_minutes_and_closed_from_the_first_second_after():
    assert in_window("4 * * * *", "UTC", 240.0) and in_window("4 * * * *", "UTC", 299.9)
    assert not in_window("4 * * * *", "UTC", 239.9) and not in_window("4 * * * *", "UTC", 300.0)
    assert in_window("always", "UTC", 1e9)


def _windowed_op(*steps, window="4 * * * *", vms=("vm1", "vm2", "vm3")):
    detail = {"vms": list(vms), "moves": {u: {"from": "a", "to": "b" if i % 2 else "c"} for i, u in enumerate(vms)}}
    if window:
        detail.update(window=window, timezone="UTC")
    return Op("rebalance-7-1", "rebalance", "cluster", 7, (OpStep("intent", 1.0, detail), *steps), rev=5)


def test_window_closed_reads_the_window_the_round_ran_in_from_its_intent():
    assert window_closed(_windowed_op(), 299.0) == ""
    assert window_closed(_windowed_op(), 300.0) == "the window '4 * * * *' (UTC) closed at 00:05"
    assert window_closed(_windowed_op(window=None), 1e6) == ""  # a round run on request: no window
    assert "cannot be read" in window_closed(_windowed_op(window="61 * * * *"), 240.0)


def _exec(op, wall, migrations=None, placements=None, reports=None):
    v = view(ops={op.id: op}, migrations=migrations, placements=placements)
    if reports:  # the source's outcome reports: its last job of the VM has ended
        v = replace(v, hosts={**v.hosts, "a": replace(v.hosts["a"], migration_outcomes=reports)})
    return step(v, new_status(0.0), 10.0, CFG, lambda *a: ({}, {}), policy_mover(), wall=wall)[1]


def test_the_scheduled_round_keeps_its_window_in_the_intent_and_a_run_does_not():
    cfg = replace(CFG, rebalance=replace(RB, window="* * * * *"))
    _, out = rounds(view(), Planner(plan(("vm1", "a", "b"))), [60.0, 120.0], cfg=cfg)
    [intent] = intents(out[1])
    assert (intent.step.detail["window"], intent.step.detail["timezone"]) == ("* * * * *", "UTC")
    _, out = rounds(view(requests=[Request("r1", "rebalance")]), Planner(plan(("vm1", "a", "b"))), [10.0], cfg=cfg)
    [intent] = intents(out[0])
    assert "window" not in intent.step.detail


def test_once_the_window_closes_no_move_starts_the_one_in_flight_finishes_and_the_rest_are_dropped():
    started = OpStep("migrate_start", 280.0, {"vm": "vm1", "to": "c", "attempt": 1}, 6)
    op = _windowed_op(started)
    flying = {"vm1": Migration("vm1", "a", "c", 7, 30.0, op.id, 1)}
    # Inside the window the executor starts the next move beside the one in flight.
    acts = _exec(op, 299.0, flying)
    assert [(a.vm, a.dest) for a in acts if isinstance(a, StartMigration)] == [("vm2", "b")]
    # From the first second after it: nothing starts, vm1 is left to finish, vm2 and vm3 are dropped.
    acts = _exec(op, 300.0, flying)
    assert not [a for a in acts if isinstance(a, StartMigration)]
    [cancel] = [a for a in acts if isinstance(a, JournalStep) and a.op == op.id]
    assert cancel.step.step == "cancelling" and cancel.step.detail["dropped"] == ["vm2", "vm3"]
    [closed] = events(acts, "rebalance_window_closed")
    assert closed.detail["dropped"] == 2 and closed.detail["in_flight"] == 1 and "closed at 00:05" in closed.detail["reason"]
    assert not [a for a in acts if isinstance(a, JournalStep) and a.step.step == "done"]  # vm1 still migrates
    # vm1 lands: the op ends with the two dropped.
    cancelled = replace(op, steps=op.steps + (OpStep("cancelling", 300.0, dict(cancel.step.detail), 7),
                                              OpStep("migrated", 305.0, {"vm": "vm1", "to": "c"}, 8)))
    acts = _exec(cancelled, 306.0, placements={"vm1": "c", "vm2": "a", "vm3": "a", "vm4": "a"})
    [done] = [a for a in acts if isinstance(a, JournalStep) and a.step.step == "done"]
    assert done.step.detail == {"moved": 1, "dropped": ["vm2", "vm3"]}
    assert not events(acts, "rebalance_window_closed")  # said once


def test_a_failed_move_is_not_retried_once_the_window_has_closed():
    failed = (OpStep("migrate_start", 280.0, {"vm": "vm1", "to": "c", "attempt": 1}, 6),
              OpStep("migrate_failed", 290.0, {"vm": "vm1", "to": "c", "attempt": 1, "outcome": "failed",
                                                "error": "boom"}, 7))
    op = _windowed_op(*failed, vms=("vm1",))
    ended = {"vm1": MigrationReport("vm1", "a", "c", op.id, 1, "failed", "source", "boom")}
    assert [a.vm for a in _exec(op, 295.0, reports=ended) if isinstance(a, StartMigration)] == ["vm1"]  # retried inside
    acts = _exec(op, 301.0, reports=ended)
    assert not [a for a in acts if isinstance(a, StartMigration)]
    assert events(acts, "rebalance_window_closed")[0].detail["vms"] == ["vm1"]


def test_a_round_run_on_request_is_not_bound_by_any_window():
    op = _windowed_op(window=None)
    assert len([a for a in _exec(op, 1e6) if isinstance(a, StartMigration)]) == 2  # max_outgoing of a


def test_progress_shows_the_moves_the_window_dropped_not_as_queued():
    from haagent.manager.migrate_cli import op_progress

    op = _windowed_op(OpStep("migrate_start", 280.0, {"vm": "vm1", "to": "c", "attempt": 1}, 6),
                      OpStep("cancelling", 300.0, {"reason": "the window '4 * * * *' (UTC) closed at 00:05",
                                                   "dropped": ["vm2", "vm3"]}, 7))
    p = op_progress(view(ops={op.id: op}), op)
    assert p["vms"] == {"acme-prod-web-1": "migrating to c (attempt 1)",
                        "acme-prod-web-2": "dropped: the window '4 * * * *' (UTC) closed at 00:05",
                        "acme-prod-web-3": "dropped: the window '4 * * * *' (UTC) closed at 00:05"}
