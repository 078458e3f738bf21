"""The leader's migration, drain, placement and rebalance figures (manager/shell.py) and the
source agent's migration figures (metrics.record_migration), read back from the registry."""

from __future__ import annotations

import re
from pathlib import Path

from haagent import metrics
from haagent.manager import shell
from haagent.model import HostState as S
from haagent.state.view import (ClusterView, Event, HostView, JournalStep, Migration, MigrationReport, Op, OpStep,
                                SetHostState, SetPlacement, VmSpec)

MANAGER = Path(shell.__file__).parent


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_placement_the_leader_writes_outside_an_operation_has_a_reason_label():
    # Every SetPlacement in the manager's code whose op is empty: its reason's leading words.
    found = []
    for path in sorted(MANAGER.glob("*.py")):
        found += re.findall(r'SetPlacement\([^()]*?, ""\s*,\s*f?"([^"{]*)', path.read_text())
    assert len(found) >= 6, found  # recovery, adopted, followed, three resolved migrations, relocated
    for reason in found:
        label = shell.placement_reason(SetPlacement("u", "h", "", reason), "")
        assert label != "other", reason
    assert shell.placement_reason(SetPlacement("u", "h", "op", "migrated from h1"), "drain") == "drain"
    assert shell.placement_reason(SetPlacement("u", "h", "op", "x"), "surprise") == "other"
    assert shell.placement_reason(SetPlacement("u", "h", "", "something new"), "") == "other"


def test_committed_steps_count_placements_and_settled_migrations_by_kind_and_a_drain_is_no_failover():
    drain = Op("drain-h1", "drain", "h1", 3, (OpStep("intent", 10.0, {"vms": ["u1", "u2"]}),))
    failover = Op("failover-h3", "failover", "h3", 3, (OpStep("intent", 10.0, {"detect_after": 2.0}),))
    view = ClusterView(3, {}, {}, {"u1": "h1", "u2": "h1"}, {o.id: o for o in (drain, failover)},
                       {"u3": Migration("u3", "h2", "h3", 3, 60.0, "drain-h1", 1)})
    before = {k: value("haagent_migrations_total", kind="drain", result=k)
              for k in ("completed", "aborted-deadline", "interrupted")}
    placed = value("haagent_placements_total", reason="drain")
    recovered = value("haagent_placements_total", reason="failover")
    phases = value("haagent_failover_phase_seconds_count", phase="migrate_start")
    done = value("haagent_failover_phase_seconds_count", phase="done")
    fenced = value("haagent_failover_phase_seconds_count", phase="fenced")
    actions = [
        SetPlacement("u1", "h2", "drain-h1", "migrated from h1"),
        Event("migration_completed", host="h2", vm="u1", op="drain-h1"),
        JournalStep("drain-h1", "h1", OpStep("migrated", 20.0, {"vm": "u1"}), "drain"),
        Event("migration_failed", host="h1", vm="u2", op="drain-h1", detail={"outcome": "aborted-deadline"}),
        JournalStep("drain-h1", "h1", OpStep("migrate_start", 20.0, {"vm": "u2"}), "drain"),
        JournalStep("drain-h1", "h1", OpStep("done", 20.0, {}), "drain"),
        Event("migration_resolved", vm="u3", detail={"running_on": ["h2"]}),
        SetPlacement("u4", "h2", "failover-h3", "recovery from h3"),
        JournalStep("failover-h3", "h3", OpStep("fenced", 20.0, {"how": "fence"})),
        SetHostState("h1", S.DRAINING, S.MAINTENANCE, "drained"),
    ]
    shell.DaemonSink(wall=lambda: 30.0)("committed", {"view": view, "actions": actions})
    assert value("haagent_migrations_total", kind="drain", result="completed") == before["completed"] + 1
    assert value("haagent_migrations_total", kind="drain", result="aborted-deadline") == before["aborted-deadline"] + 1
    assert value("haagent_migrations_total", kind="drain", result="interrupted") == before["interrupted"] + 1
    assert value("haagent_placements_total", reason="drain") == placed + 1
    assert value("haagent_placements_total", reason="failover") == recovered + 1
    # the drain's journal is not a failover timeline; the failover's still is
    assert value("haagent_failover_phase_seconds_count", phase="migrate_start") == phases
    assert value("haagent_failover_phase_seconds_count", phase="done") == done
    assert value("haagent_failover_phase_seconds_count", phase="fenced") == fenced + 1
    assert value("haagent_host_state", host="h1", state="maintenance") == 1


def test_an_operation_opened_in_the_same_step_gives_its_kind():
    before = value("haagent_placements_total", reason="migrate")
    actions = [JournalStep("migrate-u1", "h1", OpStep("intent", 1.0, {}), "migrate"),
               SetPlacement("u1", "h2", "migrate-u1", "migrated from h1")]
    shell.DaemonSink(wall=lambda: 2.0)("committed", {"view": ClusterView(1, {}, {}, {}), "actions": actions})
    assert value("haagent_placements_total", reason="migrate") == before + 1


def test_migration_figures_count_in_flight_open_drains_and_the_vms_left_on_each():
    ops = {"d1": Op("d1", "drain", "h1", 1, (OpStep("intent", 1.0),)),
           "d0": Op("d0", "drain", "h2", 1, (OpStep("intent", 1.0), OpStep("done", 2.0))),
           "f1": Op("f1", "failover", "h3", 1, (OpStep("intent", 1.0),))}
    view = ClusterView(1, {}, {}, {"u1": "h1", "u2": "h1", "u3": "h2", "u4": "h3"}, ops,
                       {"u1": Migration("u1", "h1", "h2", 1, 10.0, "d1", 1)})
    fig = shell.migration_figures(view)
    assert (fig.in_flight, fig.drains, dict(fig.vms_left)) == (1, 1, {"h1": 2})
    assert shell.migration_figures(ClusterView(1, {}, {}, {"u1": "h1"})) == shell.MigrationFigures(0, 0, {})


def test_a_placement_decision_is_timed_by_kind_even_when_it_fails():
    ticks = iter([1.0, 1.25, 5.0, 5.5])
    before = value("haagent_placement_seconds_sum", decision="move")
    timed = shell._timed(lambda todo, view, avoid: ({}, {}), "move", lambda: next(ticks))
    assert timed([], None, frozenset()) == ({}, {})

    def broken(todo, view, avoid):
        raise RuntimeError("engine bug")
    try:
        shell._timed(broken, "move", lambda: next(ticks))([], None, frozenset())
    except RuntimeError:
        pass
    assert value("haagent_placement_seconds_sum", decision="move") == before + 0.75


def test_the_source_agent_records_duration_downtime_and_bytes_of_a_completed_migration():
    count = value("haagent_migration_seconds_count", outcome="completed")
    down = value("haagent_migration_downtime_seconds_sum")
    moved = value("haagent_migration_bytes_sum")
    failed = value("haagent_migration_seconds_count", outcome="failed")
    metrics.record_migration(MigrationReport("u1", "h1", "h2", "op", 1, "completed", "destination",
                                             duration_s=0.8, downtime_ms=25, data_total=70 * 2**20))
    metrics.record_migration(MigrationReport("u1", "h1", "h2", "op", 2, "failed", "source", "refused",
                                             duration_s=0.1, downtime_ms=None, data_total=None))
    assert value("haagent_migration_seconds_count", outcome="completed") == count + 1
    assert value("haagent_migration_seconds_count", outcome="failed") == failed + 1
    assert abs(value("haagent_migration_downtime_seconds_sum") - down - 0.025) < 1e-9
    assert value("haagent_migration_bytes_sum") == moved + 70 * 2**20


def test_the_leader_loop_publishes_its_gauges_every_tick():
    now = [100.0]
    loop = shell.LeaderLoop(None, None, None, shell.core.ManagerConfig(), None, lambda *a: ({}, {}),  # type: ignore[arg-type]
                            clock=lambda: now[0])
    try:
        loop._publish_gauges()  # nothing decided yet: nothing published
        assert value("haagent_drains_in_progress") == 0
        ops = {"d1": Op("d1", "drain", "h9", 1, (OpStep("intent", 1.0),))}
        loop.shell.view = ClusterView(1, {}, {}, {"u1": "h9"}, ops, {"u1": Migration("u1", "h9", "h2", 1, 10.0, "d1", 1)})
        loop._publish_gauges()
        assert (value("haagent_migrations_in_flight"), value("haagent_drains_in_progress")) == (1, 1)
        assert value("haagent_drain_vms_left", host="h9") == 1
        # the drain ends: the host keeps a 0 at once
        loop.shell.view = ClusterView(1, {}, {}, {"u1": "h2"})
        loop._publish_gauges()
        assert value("haagent_drains_in_progress") == 0 and value("haagent_migrations_in_flight") == 0
        assert metrics.REGISTRY.get_sample_value("haagent_drain_vms_left", {"host": "h9"}) == 0
    finally:
        loop.close()
