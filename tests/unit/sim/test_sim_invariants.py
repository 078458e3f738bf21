"""The invariant checker catches what it must: a double start, an unsafe move, a lost spec.

Each test breaks one thing on purpose (in the world, or in the manager's rule) and expects the
checker to stop the run: this is what makes the random schedules able to fail.
"""

from __future__ import annotations

import pytest

from haagent.manager import core
from haagent.model import HostState as S
from haagent.sim.invariants import Invariants, check_recovered
from haagent.sim.scenario import build, parse_cmdlist, run
from haagent.sim.world import InvariantViolation

CLUSTER = {"hosts": {"h1": {}, "h2": {}, "h3": {}},
           "vms": [{"name": "web-1", "host": "h2", "priority": 10}, {"name": "db-1", "host": "h3"}]}


def test_two_running_copies_are_caught():
    sim = build(CLUSTER)
    inv = Invariants(sim).attach()
    sim.tick_body()
    # nothing in the model prevents a double start: a second copy defined and started on h1
    from haagent.hypervisor.fake import FakeHypervisor
    from haagent.sim.world import domain_xml

    hv = sim.hosts["h1"].hv
    hv.define(domain_xml(sim.specs["web-1"]))
    FakeHypervisor.start(hv, "web-1")  # past the start check: the tick checker must catch it
    with pytest.raises(InvariantViolation, match="web-1 runs on 2 hosts"):
        inv.after_tick()


def test_a_lost_definition_is_caught():
    sim = build(CLUSTER)
    inv = Invariants(sim).attach()
    del sim.store.kvs[sim.keys.vm_spec("db-1")]
    with pytest.raises(InvariantViolation, match="db-1 definition lost"):
        inv.after_tick()


def test_recovery_before_confirmed_fencing_is_caught(monkeypatch):
    # Break the core's rule: treat "fencing" as fenced. A partitioned host whose BMC is dead
    # still runs its VMs; recovering them now must trip the checker.
    monkeypatch.setattr(core, "CONFIRMED_FENCED", core.CONFIRMED_FENCED | {S.FENCING})
    cmds, end = parse_cmdlist("bmc h2 fail\nat 5 network h2 off\nend 30\n")
    out = run(CLUSTER, cmds, end)
    assert out.violations and "web-1" in out.violations[0]
    assert "while it still runs on h2" in out.violations[0]


def test_the_unbroken_core_keeps_the_same_run_safe():
    cmds, end = parse_cmdlist("bmc h2 fail\nat 5 network h2 off\nend 30\n")
    out = run(CLUSTER, cmds, end)
    assert not out.violations
    assert any("ALERT fence_failed host=h2" in ln for ln in out.log)
    assert out.sim.where("web-1") == ["h2"]  # never moved: still on the cut-off host


def test_liveness_check_reports_a_vm_left_down():
    cmds, end = parse_cmdlist("at 2 power h3 off\nend 4\n")  # too early: not yet recovered
    out = run(CLUSTER, cmds, end)
    problems = check_recovered(out.sim)
    assert len(problems) == 1 and problems[0].startswith("vm=db-1 runs on [], placed on h3")


def test_an_agent_never_starts_a_vm_another_live_host_runs():
    # A migration h2 -> h3 finished but its placement still names h2: h2 must not start a twin.
    cluster = {"hosts": {"h1": {}, "h2": {}, "h3": {}},
               "vms": [{"name": "db-1", "host": "h2", "running_on": ["h3"]}],
               "migrations": {"db-1": ["h2", "h3"]}}
    cmds, end = parse_cmdlist("end 5\n")
    out = run(cluster, cmds, end)
    assert not out.violations
    assert out.sim.where("db-1") == ["h3"]
    assert not any("start vm=db-1" in ln for ln in out.log)


def test_a_rebalance_ping_pong_is_caught(monkeypatch):
    # Break the rounds' rules: no cooldown, no memory of where a VM came from. In the cooldown
    # scenario the round after the load shift then sends acme-prod-app-2 back to h1.
    import json

    from haagent.manager import rebalance
    from haagent.sim.scenario import CORPUS

    monkeypatch.setattr(rebalance, "frozen_vms", lambda view, wall, cooldown: {})
    monkeypatch.setattr(rebalance, "taken_from", lambda view: {})
    d = CORPUS / "rebalance-cooldown"
    cmds, end = parse_cmdlist((d / "cmdlist").read_text())
    out = run(json.loads((d / "cluster.json").read_text()), cmds, end)
    assert out.violations and "acme-prod-app-2" in out.violations[0], out.violations


def test_liveness_check_reports_a_move_left_half_done(monkeypatch):
    """A cold move whose second half never comes (here: the leader's settling is broken) leaves
    the VM shut down with its order stored: check_recovered says so; the real executor does not."""
    from haagent.manager import drain

    cluster = {"hosts": {"h1": {}, "h2": {}, "h3": {}},
               "vms": [{"name": "legacy-1", "host": "h2", "policy": "none"}]}
    cmds, end = parse_cmdlist("at 2 drain h2 cold-ok\nend 20\n")
    out = run(cluster, cmds, end)
    assert not check_recovered(out.sim) and out.sim.where("legacy-1") in (["h1"], ["h3"])
    monkeypatch.setattr(drain, "_settle", lambda st: None)
    out = run(cluster, cmds, end)
    problems = check_recovered(out.sim)
    assert out.sim.where("legacy-1") == []
    assert problems and "vm=legacy-1 migration cold h2 -> " in problems[0]
