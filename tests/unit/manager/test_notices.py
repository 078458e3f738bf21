"""What one committed step tells webhooks: types, payloads, and the finished failover's timeline."""

from __future__ import annotations

from haagent.manager.notices import alert_notice, step_notices
from haagent.model import HostState
from haagent.state.view import Alert, ClusterView, Event, FenceHost, JournalStep, Op, OpStep, SetHostState

OP = "failover-h2-7-1000"


def view(*steps: OpStep) -> ClusterView:
    ops = {OP: Op(OP, "failover", "h2", 7, steps)} if steps else {}
    return ClusterView(epoch=7, hosts={}, specs={}, placements={}, ops=ops)


def test_a_failover_start_and_the_host_state():
    actions = [SetHostState("h2", HostState.SUSPECT, HostState.FENCING, "lease lost", OP),
               JournalStep(OP, "h2", OpStep("intent", 55.0, {"detect_after": 3.1})),
               JournalStep(OP, "h2", OpStep("fence_start", 55.0, {"attempt": 1})),
               FenceHost("h2", OP, 1),
               Event("host_suspect", host="h2")]
    assert step_notices(view(), actions, 1000.0) == [
        ("host.state_changed", {"host": "h2", "from": "suspect", "to": "fencing", "reason": "lease lost",
                                "failover": OP, "epoch": 7}),
        ("failover.started", {"failover": OP, "host": "h2", "detect_after": 3.1}),
        ("cluster.host_suspect", {"host": "h2", "vm": None, "failover": None}),
    ]


def test_a_fence_result():
    step = JournalStep(OP, "h2", OpStep("fence", 9.0, {"result": "confirmed_off", "reason": "", "attempt": 1,
                                                       "duration_s": 1.5, "devices": {"ipmi-h2": "confirmed_off"}}))
    assert step_notices(view(OpStep("intent", 1000.0)), [step], 1002.0) == [
        ("fence.result", {"failover": OP, "host": "h2", "result": "confirmed_off", "reason": "", "attempt": 1,
                          "duration_s": 1.5, "devices": {"ipmi-h2": "confirmed_off"}})]


def test_a_finished_failover_carries_its_whole_timeline():
    before = view(OpStep("intent", 1000.0, {"detect_after": 3.0}), OpStep("fence", 1002.0, {"result": "confirmed_off"}),
                  OpStep("fenced", 1002.0, {"how": "fence"}), OpStep("place", 1002.5, {"placements": {"u1": "h3"}}))
    actions = [JournalStep(OP, "h2", OpStep("start", 88.0, {"vm": "u1", "on": "h3"})),
               JournalStep(OP, "h2", OpStep("done", 88.0, {})),
               SetHostState("h2", HostState.RECOVERING, HostState.FAILED, "all HA VMs recovered", "")]
    notices = step_notices(before, actions, 1006.25)
    assert [t for t, _ in notices] == ["failover.finished", "host.state_changed"]
    finished = notices[0][1]
    assert (finished["failover"], finished["host"], "aborted" in finished) == (OP, "h2", False)
    assert [(r["phase"], r["t"]) for r in finished["timeline"]] == [
        ("confirm", 0.0), ("fence", 2.0), ("fenced", 2.0), ("place", 2.5), ("start", 6.25), ("done", 6.25)]
    assert finished["timeline"][4]["vm"] == "u1"
    assert notices[1][1]["failover"] is None


def test_an_aborted_failover_says_why():
    notices = step_notices(view(OpStep("intent", 1000.0)),
                           [JournalStep(OP, "h2", OpStep("done", 5.0, {"aborted": "host came back"}))], 1001.0)
    assert notices[0][0] == "failover.finished" and notices[0][1]["aborted"] == "host came back"


def test_a_drain_is_no_failover_its_start_and_end_go_out_as_drain_events():
    drain = "drain-h1-7-2000"
    opened = [JournalStep(drain, "h1", OpStep("intent", 1.0, {"vms": ["u1"], "request": "r1"}), "drain"),
              SetHostState("h1", HostState.ACTIVE, HostState.DRAINING, "operator: haagent host drain"),
              Event("drain_started", host="h1", op=drain, detail={"vms": 1})]
    notices = step_notices(view(), opened, 2000.0)
    assert [t for t, _ in notices] == ["drain.started", "host.state_changed", "cluster.drain_started"]
    assert notices[0][1] == {"op": drain, "host": "h1", "vms": ["u1"], "request": "r1"}
    running = ClusterView(7, {}, {}, {}, ops={drain: Op(drain, "drain", "h1", 7, (
        OpStep("intent", 2000.0, {"vms": ["u1"]}), OpStep("migrate_start", 2000.5, {"vm": "u1", "to": "h2"})))})
    # a step of a drain's journal carries the default kind: the view's op says what it is
    closed = [JournalStep(drain, "h1", OpStep("migrated", 5.0, {"vm": "u1", "to": "h2"})),
              JournalStep(drain, "h1", OpStep("done", 5.0, {"moved": 1}))]
    notices = step_notices(running, closed, 2001.5)
    assert [t for t, _ in notices] == ["drain.finished"]
    finished = notices[0][1]
    assert (finished["op"], finished["moved"]) == (drain, 1)
    assert [(r["step"], r["t"]) for r in finished["journal"]] == [
        ("intent", 0.0), ("migrate_start", 0.5), ("migrated", 1.5), ("done", 1.5)]
    assert finished["journal"][2]["vm"] == "u1"


def test_alerts():
    a = Alert("fence_failed", host="h2", message="fencing failed: timeout")
    assert alert_notice(a, raised=True) == ("alert.raised", {"alert": "fence_failed", "host": "h2", "vm": None,
                                                             "message": "fencing failed: timeout"})
    assert alert_notice(a, raised=False)[0] == "alert.cleared"


def test_a_failing_hook_never_raises_into_the_step():
    from haagent.manager.shell import DaemonSink

    def broken(event_type, data):
        raise OSError("disk full")

    sink = DaemonSink(wall=lambda: 1000.0, notify=broken)
    sink("committed", {"view": view(), "actions": [SetHostState("h2", HostState.ACTIVE, HostState.SUSPECT, "lease lost")]})
    sink("alert_raised", {"alert": Alert("fence_failed", host="h2")})
    sink("started", {"epoch": 7, "grace_s": 3.0})
    sent = []
    DaemonSink(wall=lambda: 1000.0, notify=lambda t, d: sent.append(t))("started", {"epoch": 7, "grace_s": 3.0})
    assert sent == ["leader.started"]


def test_a_rebalance_journal_goes_out_as_rebalance_not_failover_notices():
    view = ClusterView(3, {}, {}, {}, {"rebalance-3-1": Op("rebalance-3-1", "rebalance", "cluster", 3)})
    acts = [JournalStep("rebalance-3-2", "cluster", OpStep("intent", 1.0, {"vms": []}), "rebalance"),
            JournalStep("rebalance-3-1", "cluster", OpStep("done", 1.0, {"moved": 1})),
            Event("rebalance_started", op="rebalance-3-2")]
    assert [t for t, _ in step_notices(view, acts, 5.0)] == ["rebalance.started", "rebalance.finished",
                                                             "cluster.rebalance_started"]
