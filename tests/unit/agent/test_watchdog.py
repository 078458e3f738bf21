"""Watchdog mode: fed while the lease lives, starved (and VMs killed) once it is lost."""

from __future__ import annotations

import os
import threading

from haagent.agent import core
from haagent.agent.vms import feed_watchdog
from haagent.model import HostState

CFG = core.AgentConfig(watchdog=True, self_fence_timeout=5)


def inp(lease_ok: bool) -> core.AgentInput:
    return core.AgentInput(host="h1", host_state=HostState.ACTIVE, lease_ok=lease_ok, lease_grant_revision=5,
                           placement_revision=9, placements={"vm1": "h1"}, specs={}, running=frozenset({"vm1"}))


def test_feeds_only_while_the_lease_lives_and_kills_vms_when_lost():
    assert core.FeedWatchdog() in core.step(inp(True), 0.0, CFG)
    lost = core.step(inp(False), 0.0, CFG)
    assert core.FeedWatchdog() not in lost
    assert [a.vm for a in lost if isinstance(a, core.StopVm)] == ["vm1"]


def test_feed_writes_to_a_fifo_reader(tmp_path):
    fifo = str(tmp_path / "watchdog")
    os.mkfifo(fifo)
    got: list[bytes] = []
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the stand-in device: a reader holds it open
    try:
        assert feed_watchdog(fifo)
        assert feed_watchdog(fifo)
        got.append(os.read(fd, 16))
    finally:
        os.close(fd)
    assert got == [b"11"]
    # nobody reads any more (the device is gone): feeding fails without blocking or raising
    done = threading.Event()
    threading.Thread(target=lambda: (feed_watchdog(fifo), done.set()), daemon=True).start()
    assert done.wait(2)


def test_a_vm_that_migrated_away_is_not_restarted_by_its_old_owner():
    from haagent.state.view import VmSpec

    base = dict(host="h1", host_state=HostState.ACTIVE, lease_ok=True, lease_grant_revision=5,
                placement_revision=9, placements={"vm1": "h1"}, specs={"vm1": VmSpec("vm1", "vm1")},
                running=frozenset())
    assert [a.vm for a in core.step(core.AgentInput(**base), 0.0, core.AgentConfig())
            if isinstance(a, core.StartVm)] == ["vm1"]
    moved = core.AgentInput(**base, migrated_away=frozenset({"vm1"}))
    assert not [a for a in core.step(moved, 0.0, core.AgentConfig()) if isinstance(a, core.StartVm)]
