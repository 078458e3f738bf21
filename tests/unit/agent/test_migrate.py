"""The agent's side of the migration executor: the pure rule, and the shell over Hypervisor.migrate."""

from __future__ import annotations

import json
from dataclasses import replace

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


def test_the_source_applies_exactly_the_tuning_in_the_order():
    """The leader's resolved tuning reaches Hypervisor.migrate as virsh-migrate options (the fake
    records the call; haagent/hypervisor/options.py maps them to libvirt's flags and params)."""
    fakes = FakeCluster()
    src, _dst = FakeHypervisor("fake:///h1", cluster=fakes), FakeHypervisor("fake:///h2", cluster=fakes)
    src.start(src.define(XML).uuid)
    shell = VmShell("h1", src, Store(), K, lease=None, cache=None, config=core.AgentConfig(),
                    migration_target=lambda h: MigrationTarget(f"fake:///{h}"), spawn=lambda run, a: run(),
                    migration_options=MigrationOptions(tls=True))
    tuning = (("auto_converge", True), ("bandwidth_cap", 64), ("max_downtime_ms", 200), ("postcopy", True),
              ("postcopy_after_precopy", True))
    assert shell.migrate(core.MigrateVm(UUID, "h2", 30.0, "drain-h1", 1, tuning)).outcome == "completed"
    [(uuid, uri, opts)] = src.migration_calls
    assert (uuid, uri) == (UUID, "fake:///h2")
    assert (opts.bandwidth, opts.max_downtime_ms, opts.auto_converge, opts.postcopy, opts.postcopy_after_precopy,
            opts.tls, opts.live, opts.p2p, opts.persistent, opts.undefinesource) == (
        64, 200, True, True, True, True, True, True, True, True)
    assert {"VIR_MIGRATE_AUTO_CONVERGE", "VIR_MIGRATE_POSTCOPY", "VIR_MIGRATE_TLS"} <= set(opts.flag_names())
    assert opts.param_values() == {"VIR_MIGRATE_PARAM_BANDWIDTH": 64}
    # an order without tuning (an older leader's) runs with the host's own options
    assert MigrationOptions(tls=True).tuned(()) == MigrationOptions(tls=True)
    # 0 means unset: libvirt's own default, no cap
    assert MigrationOptions().tuned((("bandwidth_cap", 0), ("max_downtime_ms", 0))).param_values() == {}


def test_a_cold_order_shuts_the_vm_down_on_the_source_and_says_it_runs_nowhere():
    fakes = FakeCluster()
    src = FakeHypervisor("fake:///h1", cluster=fakes)
    FakeHypervisor("fake:///h2", cluster=fakes)
    src.start(src.define(XML).uuid)
    store = Store()
    shell = VmShell("h1", src, store, K, lease=None, cache=None, config=core.AgentConfig(),
                    migration_target=lambda h: MigrationTarget(f"fake:///{h}"), spawn=lambda run, a: run())
    report = shell.migrate(core.MigrateVm(UUID, "h2", 60.0, "drain-h1", 1, (), "cold"))
    assert (report.outcome, report.location) == ("completed", "none")
    assert not src.vm_info(UUID).active and src.vm_info(UUID).persistent  # still defined here
    assert src.migration_calls == []  # no live migration was tried
    assert UUID not in shell.stopped_by_user  # our stop, not an operator's: a later start here is not blocked
    # a guest that ignores ACPI is destroyed after the timeout: still "runs nowhere"
    src.start(UUID)
    fakes.ignore_shutdown("fake:///h1", UUID)
    again = shell.migrate(core.MigrateVm(UUID, "h2", 60.0, "drain-h1", 2, (), "cold"))
    assert (again.outcome, again.location) == ("completed", "none") and not src.vm_info(UUID).active


def test_the_target_starts_a_cold_move_only_from_its_second_half_and_only_if_it_runs_nowhere():
    cold = {"vm1": Migration("vm1", "h1", "h2", 7, 60.0, "drain-h1", 1, (), "cold")}
    # the first half is the source's: a shutdown order, not a start
    [m] = core.step(inp(migrations=cold), 0.0, core.AgentConfig())
    assert (type(m), m.mode) == (core.MigrateVm, "cold")
    start = {"vm1": Migration("vm1", "h1", "h2", 7, 60.0, "drain-h1", 1, (), "cold-start")}
    none = {"vm1": VmSpec("vm1", "web-1", policy="none")}
    target = dict(host="h2", host_state=HostState.ACTIVE, placements={"vm1": "h2"}, running=frozenset(),
                  specs=none, migrations=start)
    [s] = core.step(inp(**target), 0.0, core.AgentConfig())
    assert isinstance(s, core.StartVm) and "cold move from h1" in s.reason  # whatever its HA policy
    assert core.step(inp(**{**target, "reports": {"h3": frozenset({"vm1"})}}), 0.0, core.AgentConfig()) == []
    assert core.step(inp(**{**target, "placements": {"vm1": "h1"}}), 0.0, core.AgentConfig()) == []
    # the source does nothing with the second half (it must not restart what it shut down)
    assert core.step(inp(running=frozenset(), migrations=start), 0.0, core.AgentConfig()) == []


def test_unmanaged_vms_are_reported_and_their_orders_run_without_a_placement():
    fakes = FakeCluster()
    src = FakeHypervisor("fake:///h1", cluster=fakes)
    src.start(src.define(XML).uuid)  # no HA mark
    shell = VmShell("h1", src, Store(), K, lease=None, cache=None, config=core.AgentConfig())
    shell.refresh_inventory()
    assert shell.unmanaged == [{"uuid": UUID, "name": "web-1", "vcpus": 1, "memory_mib": 256}]
    assert shell.running == frozenset()  # not a managed VM

    class KV:
        def __init__(self, v):
            self.value, self.lease, self.mod_revision, self.create_revision = v.encode(), 0, 3, 3

    report = json.dumps({"cpus": 8, "memory_mib": 8192, "running_vms": [],
                         "unmanaged_vms": shell.unmanaged + [{"uuid": 5}]})  # a bad entry is skipped
    view = build_view({K.host_report("h1"): KV(report)}, K, 0)
    [(uuid, spec)] = view.hosts["h1"].unmanaged.items()
    assert (uuid, spec.name, spec.memory_mib, spec.policy) == (UUID, "web-1", 256, "migrate") and not view.bad_records
    # the source runs a live order for a VM with neither spec nor placement (drain --all) ...
    order = {"u1": Migration("u1", "h1", "h2", 7, 30.0, "drain-h1", 1)}
    [m] = core.step(inp(placements={}, specs={}, running=frozenset(), migrations=order), 0.0, core.AgentConfig())
    assert m.vm == "u1" and m.mode == "live"
    # ... but never a cold one, nor one for a VM placed on another host
    cold = {"u1": Migration("u1", "h1", "h2", 7, 30.0, "drain-h1", 1, (), "cold")}
    assert core.step(inp(placements={}, specs={}, running=frozenset(), migrations=cold), 0.0, core.AgentConfig()) == []
    assert core.step(inp(placements={"u1": "h3"}, specs={}, running=frozenset(), migrations=order), 0.0,
                     core.AgentConfig()) == []


def test_a_cold_moves_target_gives_its_start_up_at_the_deadline_and_never_starts_it_for_that_order():
    start = {"vm1": Migration("vm1", "h1", "h2", 7, 10.0, "drain-h1", 1, (), "cold-start")}
    target = dict(host="h2", host_state=HostState.ACTIVE, placements={"vm1": "h2"}, running=frozenset(),
                  migrations=start, cold_start_seen={("vm1", "drain-h1", 1): 100.0})
    # within the deadline (counted from when this agent first saw the order): it starts it
    assert [type(a) for a in core.step(inp(**target), 109.9, core.AgentConfig())] == [core.StartVm]
    # at the deadline, not running here: given up in this round, and not started in it
    [gave_up] = core.step(inp(**target), 110.0, core.AgentConfig())
    assert gave_up == core.AbandonColdStart("vm1", "h1", "drain-h1", 1, 10.0, 10.0)
    # whatever the host's state (a target drained meanwhile gives up too)
    assert core.step(inp(**{**target, "host_state": HostState.MAINTENANCE}), 110.0, core.AgentConfig()) == [gave_up]
    # answered (its outcome record, or this process's memory): never started for that order again
    answered = {**target, "migrations_run": frozenset({("vm1", "drain-h1", 1)})}
    assert core.step(inp(**answered), 105.0, core.AgentConfig()) == []
    assert core.step(inp(**answered), 200.0, core.AgentConfig()) == []
    # a new attempt (the leader's next order, here again) is a new order with its own clock
    again = {**answered, "migrations": {"vm1": replace(start["vm1"], attempt=2)},
             "cold_start_seen": {("vm1", "drain-h1", 2): 200.0}}
    assert [type(a) for a in core.step(inp(**again), 200.0, core.AgentConfig())] == [core.StartVm]
    # running here: nothing to give up; an order seen by no agent clock yet: not overdue
    assert core.step(inp(**{**target, "running": frozenset({"vm1"})}), 500.0, core.AgentConfig()) == []
    assert [type(a) for a in core.step(inp(**{**target, "cold_start_seen": {}}), 500.0,
                                       core.AgentConfig())] == [core.StartVm]


def test_the_source_undefines_a_cold_moved_vm_only_once_its_new_host_runs_it_and_the_move_is_settled():
    src = dict(host="h1", host_state=HostState.MAINTENANCE, placements={"vm1": "h2"}, running=frozenset(),
               migrations={}, stopped_here=frozenset({"vm1"}), cold_stopped=frozenset({"vm1"}),
               reports={"h2": frozenset({"vm1"})})
    [undefine] = core.step(inp(**src), 0.0, core.AgentConfig())
    assert undefine == core.UndefineVm("vm1", "cold-moved to h2, which runs it")
    # not while the target has not started it, nor while the move is unsettled, nor while placed here
    assert core.step(inp(**{**src, "reports": {"h2": frozenset()}}), 0.0, core.AgentConfig()) == []
    cold_start = {"vm1": Migration("vm1", "h1", "h2", 7, 10.0, "drain-h1", 1, (), "cold-start")}
    assert core.step(inp(**{**src, "migrations": cold_start}), 0.0, core.AgentConfig()) == []
    assert core.step(inp(**{**src, "placements": {"vm1": "h1"}, "host_state": HostState.DRAINING}),
                     0.0, core.AgentConfig()) != [undefine]
    # a stopped VM this host did not shut down for a cold move is left alone
    assert core.step(inp(**{**src, "cold_stopped": frozenset()}), 0.0, core.AgentConfig()) == []


class _Cache(Store):
    """The store as the VM shell's watch-fed cache sees it (each put a newer revision)."""

    def __init__(self):
        super().__init__()
        self.revs = {}

    def put(self, key, value, lease=None):
        super().put(key, value, lease)
        self.revs[key] = len(self.history)
        return len(self.history)

    def _kv(self, key):
        class KV:
            pass
        kv = KV()
        v = self.kvs[key]
        kv.value, kv.lease = (v if isinstance(v, bytes) else v.encode()), 0
        kv.mod_revision = kv.create_revision = self.revs[key]
        return kv

    def snapshot(self):
        return {k: self._kv(k) for k in self.kvs}, len(self.history)

    def get(self, key):
        return self._kv(key) if key in self.kvs else None


class _Lease:
    alive, grant_revision = True, 0


MARKED = XML.replace("</domain>", "<metadata><ha:vm xmlns:ha='https://haagent.dev/xmlns/ha/1' "
                                  "policy='restart'/></metadata></domain>")


def _host(store, h, state="active", running=()):
    store.put(K.host_alive(h), json.dumps({"host": h}))
    store.put(K.host_state(h), json.dumps({"state": state}))
    store.put(K.host_report(h), json.dumps({"host": h, "running_vms": list(running)}))


def test_after_a_cold_move_the_source_keeps_no_stopped_definition_once_the_target_runs_the_vm():
    fakes = FakeCluster()
    src = FakeHypervisor("fake:///h1", cluster=fakes)
    src.start(src.define(MARKED).uuid)
    store = _Cache()
    shell = VmShell("h1", src, store, K, _Lease(), store, core.AgentConfig(),
                    migration_target=lambda h: MigrationTarget(f"fake:///{h}"), spawn=lambda run, a: run())
    store.put(K.vm_placement(UUID), json.dumps({"host": "h1", "epoch": 1}))
    _host(store, "h1", "draining", [UUID])
    _host(store, "h2")
    shell.reconcile()  # registers its spec
    report = shell.migrate(core.MigrateVm(UUID, "h2", 60.0, "drain-h1", 1, (), "cold"))
    assert (report.outcome, report.location) == ("completed", "none")
    # placed on the target, which has not started it yet: the stopped definition stays here
    store.put(K.vm_placement(UUID), json.dumps({"host": "h2", "epoch": 1}))
    store.put(K.vm_migration(UUID), json.dumps({"from": "h1", "to": "h2", "epoch": 1, "op": "drain-h1",
                                                "attempt": 1, "deadline": 60, "mode": "cold-start"}))
    store.put(K.host_report("h1"), json.dumps({"host": "h1", "running_vms": []}))
    assert shell.reconcile() == [] and UUID in {i.uuid for i in src.list_vms()}
    # the target runs it and the leader settled the move: gone from the source (virsh list --all)
    del store.kvs[K.vm_migration(UUID)]
    store.put(K.host_report("h2"), json.dumps({"host": "h2", "running_vms": [UUID]}))
    assert shell.reconcile() == [core.UndefineVm(UUID, "cold-moved to h2, which runs it")]
    assert UUID not in {i.uuid for i in src.list_vms()}
    assert shell.reconcile() == []  # (and nothing else to do)


class _NoStart(FakeHypervisor):
    """A libvirtd that fails every domain start until ``works``."""

    works = False

    def start(self, vm):
        if not self.works:
            from haagent.errors import HypervisorError

            raise HypervisorError(f"start {vm}: internal error: process exited while connecting to monitor")
        return super().start(vm)


def test_the_target_shell_gives_a_cold_start_up_in_its_own_outcome_record_and_never_starts_it_late():
    fakes = FakeCluster()
    dst = _NoStart("fake:///h2", cluster=fakes)
    store = _Cache()
    clock = [100.0]
    shell = VmShell("h2", dst, store, K, _Lease(), store, core.AgentConfig(), clock=lambda: clock[0],
                    disks=(("/var/lib/libvirt/images",), (), ()))
    store.put(K.vm_spec(UUID), json.dumps(VmSpec(UUID, "web-1", xml=MARKED).to_dict()))
    store.put(K.vm_placement(UUID), json.dumps({"host": "h2", "epoch": 1}))
    store.put(K.vm_migration(UUID), json.dumps({"from": "h1", "to": "h2", "epoch": 1, "op": "drain-h1",
                                                "attempt": 1, "deadline": 10, "mode": "cold-start"}))
    _host(store, "h1", "draining")
    _host(store, "h2")
    assert [type(a) for a in shell.reconcile()] == [core.StartVm]  # tried (and failed)
    assert "process exited" in shell.start_errors[UUID]
    clock[0] = 110.0
    [gave_up] = shell.reconcile()
    assert isinstance(gave_up, core.AbandonColdStart)
    record = json.loads(store.kvs[K.host_migration("h2", UUID)])
    assert (record["op"], record["attempt"], record["outcome"], record["location"], record["to"]) == \
        ("drain-h1", 1, "failed", "none", "h2")
    assert "not started here within the order's 10s" in record["error"] and "process exited" in record["error"]
    # libvirt works again, and the leader has not answered yet (the order still names h2): no start
    dst.works = True
    clock[0] = 111.0
    assert shell.reconcile() == [] and not dst.vm_info(UUID).active
    # nor in a new process of this agent (its memory is gone; its outcome record is not)
    fresh = VmShell("h2", dst, store, K, _Lease(), store, core.AgentConfig(), clock=lambda: clock[0],
                    disks=(("/var/lib/libvirt/images",), (), ()))
    assert fresh.reconcile() == [] and not dst.vm_info(UUID).active


def test_the_inventory_says_which_disks_are_local_in_the_spec_and_the_unmanaged_list():
    disk = ("<devices><disk type='file' device='disk'><source file='/var/lib/libvirt/images/{}.qcow2'/>"
            "<target dev='vda'/></disk></devices></domain>")
    fakes = FakeCluster()
    hv = FakeHypervisor("fake:///h1", cluster=fakes)
    hv.start(hv.define(MARKED.replace("</domain>", disk.format("web-1"))).uuid)
    other = XML.replace("web-1", "db-1").replace("1111", "2222").replace("</domain>", disk.format("db-1"))
    hv.start(hv.define(other).uuid)
    store = _Cache()
    _host(store, "h1")

    def shell(shared):
        s = VmShell("h1", hv, store, K, _Lease(), store, core.AgentConfig(), shared_paths=shared)
        s.reconcile()
        return s

    local = shell(())
    spec = build_view(store.snapshot()[0], K, 0).specs[UUID]
    assert spec.local_disks == ("/var/lib/libvirt/images/web-1.qcow2",)
    [entry] = local.unmanaged
    assert entry["local_disks"] == ["/var/lib/libvirt/images/db-1.qcow2"]
    # once the directory is declared shared storage, neither has local disks
    shared = shell(("/var/lib/libvirt/images",))
    assert build_view(store.snapshot()[0], K, 0).specs[UUID].local_disks == ()
    assert "local_disks" not in shared.unmanaged[0]
    # the report's list as the leader reads it (drain --all refuses such a VM by name)
    store.put(K.host_report("h1"), json.dumps({"host": "h1", "running_vms": [UUID], "unmanaged_vms": local.unmanaged}))
    [(_, stand_in)] = build_view(store.snapshot()[0], K, 0).hosts["h1"].unmanaged.items()
    assert stand_in.local_disks == ("/var/lib/libvirt/images/db-1.qcow2",)
