"""The leader steps when one of its timers runs out, not only at its next heartbeat."""

from __future__ import annotations

from dataclasses import replace

from haagent.manager import core

CFG = core.ManagerConfig(fence_delay=1.0, new_leader_grace=3.0, fence_retry_interval=10.0, storm_read_timeout=5.0)


def test_the_grace_end_is_due_then_nothing():
    status = core.new_status(100.0)
    assert core.next_due(status, 100.5, CFG) == 103.0
    assert core.next_due(status, 103.0, CFG) is None  # a time already past is no timer


def test_a_suspect_host_is_due_when_its_fence_delay_runs_out():
    status = replace(core.new_status(0.0), suspect_since={"h1": 50.0, "h2": 50.4, "h3": 20.0},
                     fence_issued_at={"h4": 45.0})
    assert core.next_due(status, 50.5, CFG) == 51.0
    assert core.next_due(status, 51.0, CFG) == 51.4
    assert core.next_due(status, 51.4, CFG) == 55.0  # then the retry of h4's fence


def test_an_unanswered_power_read_is_due_at_its_timeout():
    status = replace(core.new_status(0.0), power_reads={"h1": ("f", 3, 40.0, ""), "h2": ("f", 3, 41.0, "off")})
    assert core.next_due(status, 42.0, CFG) == 45.0
