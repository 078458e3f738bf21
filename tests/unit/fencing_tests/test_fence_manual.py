"""The manual plugin: at once and non-confirming without an ack source; with one, only fresh acks count."""

from __future__ import annotations

import time

import pytest

from fencing.config import parse_fencing_section
from fencing.plugin import PluginContext, PowerState
from fencing.plugins.manual import FileAckSource, ManualPlugin, MemoryAckSource
from fencing.runner import FenceRunner, Outcome

START = 1_000_000.0  # the wall clock when the fence operation starts


def runner(context: PluginContext | None = None, **device) -> FenceRunner:
    problems: list[str] = []
    cfg = parse_fencing_section({"poll_interval": 0.05, "devices": {"by-hand": {"plugin": "manual", **device}},
                                 "hosts": {"kvm01": {"levels": [["by-hand"]]}}}, "fencing", problems)
    assert problems == []
    return FenceRunner(cfg, context=context)


def test_without_an_ack_source_it_returns_at_once_saying_what_to_do():
    t0 = time.monotonic()
    result = runner(power_timeout=600, retries=5).fence_host("kvm01")
    assert time.monotonic() - t0 < 1
    d = result.levels[0].devices[0]
    assert result.outcome is Outcome.FAILED and not result.confirmed_off
    assert d.attempts == 1  # no polling, no retries: the leader's fence worker is free at once
    assert d.reason.startswith("manual fencing: waiting for `haagent fence ack kvm01 --yes`"), d.reason


def test_ack_max_age_defaults_to_zero():
    assert ManualPlugin.option("ack_max_age").default == 0
    assert runner().config.levels_for("kvm01")[0][0].options["ack_max_age"] == 0


@pytest.mark.parametrize("source", ["memory", "file"])
def test_an_ack_given_before_the_fence_started_never_counts(tmp_path, source):
    acks = MemoryAckSource() if source == "memory" else FileAckSource(str(tmp_path / "acks"))
    acks.ack("kvm01", START - 0.001)  # a moment before: an ack for an earlier incident
    plugin = ManualPlugin("by-hand", "kvm01", {"ack_max_age": 0.0},
                          PluginContext(ack_source=acks, wall_time=lambda: START))
    assert plugin.status(1.0) is PowerState.ON
    acks.ack("kvm01", START)  # given once this fence began
    assert plugin.status(1.0) is PowerState.OFF


def test_the_runner_does_not_confirm_from_an_old_ack():
    acks = MemoryAckSource()
    acks.ack("kvm01", time.time() - 1)
    result = runner(PluginContext(ack_source=acks), power_timeout=0.5).fence_host("kvm01")
    assert result.outcome is Outcome.TIMED_OUT and not result.confirmed_off


def test_ack_max_age_is_an_explicit_allowance():
    acks = MemoryAckSource()
    acks.ack("kvm01", START - 20)
    context = PluginContext(ack_source=acks, wall_time=lambda: START)
    assert ManualPlugin("m", "kvm01", {"ack_max_age": 30.0}, context).status(1.0) is PowerState.OFF
    assert ManualPlugin("m", "kvm01", {"ack_max_age": 10.0}, context).status(1.0) is PowerState.ON


@pytest.mark.parametrize("content", ["inf\n", "nan\n", "1e400\n", "", "yesterday\n"])
def test_an_ack_file_that_is_not_a_time_never_counts(tmp_path, content):
    (tmp_path / "kvm01").write_text(content)
    assert not FileAckSource(str(tmp_path)).acked("kvm01", START)


def test_a_memory_ack_that_is_not_a_finite_time_never_counts():
    acks = MemoryAckSource()
    acks.ack("kvm01", float("inf"))
    assert not acks.acked("kvm01", START)
