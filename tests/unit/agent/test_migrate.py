"""The agent's side of the migration executor: the pure rule, and the shell over Hypervisor.migrate."""

from __future__ import annotations

import json

from haagent.agent import core
from haagent.agent.vms import VmShell
from haagent.hypervisor.fake import FakeCluster, FakeHypervisor
from haagent.hypervisor.options import MigrationOptions
from haagent.hypervisor.port import MigrationTarget
from haagent.model import HostState
from haagent.state.codec import build_view
from haagent.state.view import Migration, VmSpec
from haagent.store.keys import Keys

K = Keys("c")
XML = ("<domain type='qemu'><name>web-1</name><uuid>11111111-1111-1111-1111-111111111111</uuid>"
       "<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>")
UUID = "11111111-1111-1111-1111-111111111111"


def inp(**kw):
    base = dict(host="h1", host_state=HostState.DRAINING, lease_ok=True, lease_grant_revision=1,
                placement_revision=5, placements={"vm1": "h1"}, specs={"vm1": VmSpec("vm1", "web-1")},
                running=frozenset({"vm1"}),
                migrations={"vm1": Migration("vm1", "h1", "h2", 7, 30.0, "drain-h1", 1)})
    return core.AgentInput(**{**base, **kw})


def test_the_source_runs_each_order_once_and_only_while_its_lease_lives():
    [m] = core.step(inp(), 0.0, core.AgentConfig())
    assert (m.vm, m.dest, m.deadline, m.op, m.attempt) == ("vm1", "h2", 30.0, "drain-h1", 1)
    assert core.step(inp(migrations_run=frozenset({("vm1", "drain-h1", 1)})), 0.0, core.AgentConfig()) == []
    assert core.step(inp(lease_ok=False), 0.0, core.AgentConfig()) == []
    assert core.step(inp(host="h3"), 0.0, core.AgentConfig()) == []  # not the source
    # a record no executor wrote (no attempt) is not an order
    legacy = {"vm1": Migration("vm1", "h1", "h2", 7)}
    assert core.step(inp(migrations=legacy), 0.0, core.AgentConfig()) == []


def test_a_vm_with_a_migration_record_is_never_started_nor_stopped_by_the_step():
    # the source does not restart what left it (the leader settles where it runs first)
    assert [type(a) for a in core.step(inp(running=frozenset()), 0.0, core.AgentConfig())] == [core.MigrateVm]
    # the target keeps the arriving copy even though the source still lists it
    dest = inp(host="h2", running=frozenset({"vm1"}), reports={"h1": frozenset({"vm1"})},
               report_revisions={"h1": 9}, local_since={"vm1": 3})
    assert core.step(dest, 0.0, core.AgentConfig()) == []
    without = inp(host="h2", running=frozenset({"vm1"}), reports={"h1": frozenset({"vm1"})},
                  report_revisions={"h1": 9}, local_since={"vm1": 3}, migrations={})
    assert [type(a) for a in core.step(without, 0.0, core.AgentConfig())] == [core.StopVm]


class Store:
    def __init__(self):
        self.kvs = {}
        self.history = []

    def put(self, key, value, lease=None):
        self.kvs[key] = value
        self.history.append((key, value))
        return 1


def test_the_shell_migrates_through_the_hypervisor_and_reports_where_the_vm_runs():
    fakes = FakeCluster()
    src, dst = FakeHypervisor("fake:///h1", cluster=fakes), FakeHypervisor("fake:///h2", cluster=fakes)
    src.start(src.define(XML).uuid)
    store = Store()
    shell = VmShell("h1", src, store, K, lease=None, cache=None, config=core.AgentConfig(),
                    migration_target=lambda h: MigrationTarget(f"fake:///{h}"), spawn=lambda run, a: run())
    report = shell.migrate(core.MigrateVm(UUID, "h2", 30.0, "drain-h1", 1))
    assert (report.outcome, report.location) == ("completed", "destination")
    assert dst.vm_info(UUID).active and UUID not in {i.uuid for i in src.list_vms()}
    # libvirt's job info went out first as a "running" record (throttled: the fake reports 4 at once)
    [(key, first), *_rest] = store.history
    running = json.loads(first)
    assert key == K.host_migration("h1", UUID) and running["outcome"] == "running"
    assert 0 < running["data_processed"] <= running["data_total"] == 256 * 2**20 and len(store.history) == 2

    class KV:
        def __init__(self, v):
            self.value, self.lease, self.mod_revision, self.create_revision = v.encode(), 0, 3, 3

    view = build_view({k: KV(v) for k, v in store.kvs.items()}, K, 0)
    assert not view.bad_records
    back = view.hosts["h1"].migration_outcomes[UUID]
    assert (back.dest, back.op, back.attempt, back.outcome, back.location) == ("h2", "drain-h1", 1, "completed",
                                                                              "destination")
    # a refused migration (the VM is not here) is reported too: the leader retries or lets it be
    again = shell.migrate(core.MigrateVm(UUID, "h2", 30.0, "drain-h1", 2))
    assert again.outcome == "failed" and "VmNotFound" in again.error


def test_a_malformed_outcome_record_is_a_bad_record_naming_the_field():
    class KV:
        def __init__(self, v):
            self.value, self.lease, self.mod_revision, self.create_revision = v.encode(), 0, 3, 3

    key = K.host_migration("h1", "vm1")
    view = build_view({key: KV('{"to": "h2", "outcome": "teleported"}')}, K, 0)
    assert view.bad_records == ((key, "outcome: expected one of running, completed, failed, aborted-deadline, "
                                      "aborted-request, got 'teleported'"),)


def test_a_copy_that_arrived_by_a_hand_migration_outlives_the_sources_stale_report():
    # virsh migrate by hand: no order. The source's report, read from its libvirt before the
    # migration ended, was written after the target first saw its copy, so it looks fresh.
    arrived = inp(host="h2", running=frozenset({"vm1"}), reports={"h1": frozenset({"vm1"})},
                  report_revisions={"h1": 9}, local_since={"vm1": 3}, migrations={}, arrived={"vm1": 100.0})
    assert core.step(arrived, 100.0 + core.ARRIVAL_GRACE - 0.1, core.AgentConfig()) == []
    # the owner still lists it past the grace: a second copy after all, removed as before
    [stop] = core.step(arrived, 100.0 + core.ARRIVAL_GRACE, core.AgentConfig())
    assert isinstance(stop, core.StopVm) and stop.vm == "vm1"


def test_the_shell_knows_which_copies_arrived_by_live_migration():
    marked = XML.replace("</domain>", "<metadata><ha:vm xmlns:ha='https://haagent.dev/xmlns/ha/1' "
                                      "policy='restart'/></metadata></domain>")
    fakes = FakeCluster()
    src, dst = FakeHypervisor("fake:///h1", cluster=fakes), FakeHypervisor("fake:///h2", cluster=fakes)
    src.start(src.define(marked).uuid)
    clock = [50.0]
    shells = [VmShell(h, hv, Store(), K, lease=None, cache=None, config=core.AgentConfig(), clock=lambda: clock[0])
              for h, hv in (("h1", src), ("h2", dst))]
    shells[0].refresh_inventory()
    assert shells[0].running == {UUID} and shells[0].arrived == {}  # booted here
    src.migrate(UUID, MigrationTarget("fake:///h2"), MigrationOptions())
    shells[1].refresh_inventory()
    clock[0] = 55.0
    shells[1].refresh_inventory()
    assert shells[1].running == {UUID} and shells[1].arrived == {UUID: 50.0}  # first seen, not last


def test_only_a_running_migrations_progress_leaves_the_agents_asleep():
    from haagent.daemon import progress_only
    from haagent.store.client import WatchEvent

    def ev(key, value, kind="put"):
        return WatchEvent(kind, key, value.encode(), 5, 5)

    mig = K.host_migration("h1", UUID)
    assert progress_only(ev(mig, '{"outcome": "running", "to": "h2"}'), K)
    # an outcome settles the migration: the leader must look now
    assert not progress_only(ev(mig, '{"outcome": "completed", "to": "h2"}'), K)
    assert not progress_only(ev(mig, "", kind="delete"), K)
    assert not progress_only(ev(mig, "not json"), K)
    assert not progress_only(ev(K.host_report("h1"), '{"outcome": "running"}'), K)
    assert not progress_only(ev(K.vm_migration(UUID), '{"outcome": "running"}'), K)
