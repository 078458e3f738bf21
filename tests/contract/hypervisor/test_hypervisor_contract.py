"""The Hypervisor contract: every implementation must pass every test here."""

from __future__ import annotations

import time

import pytest

from haagent.errors import HypervisorError, InvalidDomain, MigrationAborted, VmNotFound
from haagent.hypervisor.options import MigrationOptions
from haagent.hypervisor.port import (EventKind, Location, MigrationControl, MigrationOutcome,
                                     MigrationProgress, ShutdownOutcome)
from haagent.lab import layout as L
from haagent.model import VmState

pytestmark = pytest.mark.timeout(120)

# haagent's usual move: live, p2p, PERSIST_DEST | UNDEFINE_SOURCE
MOVE = MigrationOptions()


def test_host_inventory(env):
    info = env.src.host_info()
    assert info.numa, "a host reports at least one NUMA cell"
    assert info.cpus == sum(len(c.cpus) for c in info.numa)
    assert info.memory_mib > 0
    assert info.cpu_model, "the CPU model is needed for migration compatibility"
    for cell in info.numa:
        assert cell.cpus and cell.memory_mib > 0
        assert cell.free_mib is not None and 0 <= cell.free_mib <= cell.memory_mib
    assert info.sockets * info.cores_per_socket * info.threads_per_core >= 1


def test_numa_cells_free_memory_hugepages_and_cpu_key(env):
    info = env.src.host_info()
    want = env.src_cells
    assert [c.id for c in info.numa] == list(range(len(want)))
    assert [c.memory_mib for c in info.numa] == [c.memory_mib for c in want]
    assert [c.free_mib for c in info.numa] == [c.free_mib for c in want]
    assert [c.hugepages for c in info.numa] == [{2048: (c.hugepages, c.free_pages)} for c in want]
    cpus = [cpu for c in info.numa for cpu in c.cpus]
    assert len(cpus) == len(set(cpus)) == info.cpus, "every CPU is in exactly one cell"
    assert 2048 in info.page_sizes_kib
    other = env.dst.host_info()
    assert [c.free_mib for c in other.numa] != [c.free_mib for c in info.numa], \
        "the two hosts' cells differ, as the layout says"
    # Same CPU on both hosts: one key, usable to tell where a VM may live-migrate.
    assert info.migration_key and info.migration_key == other.migration_key
    assert info.migration_key.startswith(f"{info.arch}:{info.cpu_vendor}:{info.cpu_model}:")
    # What a custom <cpu> may name, per domain type: TCG runs qemu64 anywhere.
    assert "qemu64" in info.cpu_models["qemu"]
    assert all(list(models) == sorted(set(models)) for models in info.cpu_models.values())
    assert info.cpu_models == other.cpu_models


def test_free_memory_and_hugepages_are_read_live(env):
    changed = tuple(L.LabCell(free_mib=c.free_mib // 2, memory_mib=c.memory_mib, hugepages=c.hugepages,
                              hugepages_free=c.free_pages // 2) for c in env.src_cells)
    env.set_src_cells(changed)
    try:
        cells = env.src.host_info().numa
        assert [c.free_mib for c in cells] == [c.free_mib for c in changed]
        assert [c.hugepages[2048][1] for c in cells] == [c.free_pages for c in changed]
    finally:
        env.set_src_cells(env.src_cells)
    assert [c.free_mib for c in env.src.host_info().numa] == [c.free_mib for c in env.src_cells]


@pytest.mark.parametrize("cell", [0, 1])
def test_strict_numatune_vm_starts_bound_to_a_cell(env, cell):
    xml = env.vm_xml(f"<numatune><memory mode='strict' nodeset='{cell}'/></numatune>")
    vm = env.src.define_and_start(xml)
    assert vm.active
    assert (vm.numa.mode, vm.numa.nodeset) == ("strict", (cell,))


def test_strict_numatune_on_a_cell_the_host_lacks_does_not_start(env):
    vm = env.src.define(env.vm_xml("<numatune><memory mode='strict' nodeset='7'/></numatune>"))
    with pytest.raises(HypervisorError, match="(?i)numa"):
        env.src.start(vm.uuid)
    assert not env.src.vm_info(vm.uuid).active


def test_raw_stats_counters_move_while_a_vm_runs(env):
    vm = env.src.define_and_start(env.vm_xml())
    first = env.src.raw_stats()
    # An idle lab VM uses <1 % of a CPU and libvirt counts it in 10 ms ticks (from /proc, as
    # the lab has no cgroups): wait, bounded, for the first tick rather than a fixed time.
    end = time.monotonic() + 10
    while True:
        time.sleep(0.2)
        second = env.src.raw_stats()
        moved = {v.uuid: v for v in second.vms}[vm.uuid].cpu_time_ns > \
            {v.uuid: v for v in first.vms}[vm.uuid].cpu_time_ns
        if moved or time.monotonic() > end:
            break
    assert second.at > first.at
    assert second.host_cpu_total_ns > first.host_cpu_total_ns
    assert second.host_cpu_busy_ns > first.host_cpu_busy_ns
    assert second.host_cpus == env.src.host_info().cpus
    assert 0 < second.host_memory_free_kib <= second.host_memory_total_kib
    before = {v.uuid: v for v in first.vms}[vm.uuid]
    after = {v.uuid: v for v in second.vms}[vm.uuid]
    assert after.active and after.memory_used_kib > 0
    assert after.cpu_time_ns > before.cpu_time_ns, "a running VM's CPU time grows"


def test_define_start_inventory_destroy_undefine(env, events_factory):
    ev = events_factory(env.src)
    xml = env.vm_xml()
    vm = env.src.define_and_start(xml)
    assert vm.active and vm.state is VmState.RUNNING
    assert vm.persistent and not vm.autostart, "managed VMs have autostart off"
    assert vm.vcpus == 1 and vm.memory_mib == 64 and vm.disks == ()
    ev.wait_for(EventKind.STARTED, vm.uuid)
    listed = {v.uuid: v for v in env.src.list_vms()}
    assert listed[vm.uuid].name == vm.name
    assert f"<name>{vm.name}</name>" in env.src.vm_xml(vm.name)
    assert env.src.vm_info(vm.uuid).name == env.src.vm_info(vm.name).name == vm.name

    env.src.start(vm.uuid)  # starting a running VM is a no-op
    env.src.destroy(vm.uuid)
    stopped = ev.wait_for(EventKind.STOPPED, vm.uuid)
    assert stopped.reason == "destroyed"
    after = env.src.vm_info(vm.uuid)
    assert after.state is VmState.SHUTOFF and after.reason == "destroyed"
    env.src.destroy(vm.uuid)  # destroying a stopped VM is a no-op
    env.src.undefine(vm.uuid)
    with pytest.raises(VmNotFound):
        env.src.vm_info(vm.uuid)


def test_shutdown_with_timeout_then_destroy(env):
    vm = env.src.define_and_start(env.vm_xml())
    env.make_guest_ignore_shutdown(vm.name)
    t0 = time.monotonic()
    assert env.src.shutdown(vm.uuid, timeout=1.0) is ShutdownOutcome.DESTROYED
    assert time.monotonic() - t0 < 10
    assert not env.src.vm_info(vm.uuid).active
    assert env.src.shutdown(vm.uuid, timeout=1.0) is ShutdownOutcome.ALREADY_OFF


def test_bad_input_gets_a_clear_error(env):
    with pytest.raises(InvalidDomain, match="malformed"):
        env.src.define("<domain type='qemu'><name>x</name>")
    with pytest.raises(InvalidDomain):
        env.src.define("<network><name>x</name></network>")
    for call in (env.src.vm_info, env.src.start, env.src.destroy, env.src.undefine):
        with pytest.raises(VmNotFound, match="no-such-vm"):
            call("no-such-vm")
    with pytest.raises(VmNotFound):
        env.src.migrate("no-such-vm", env.target, MOVE, deadline=5)
    with pytest.raises(InvalidDomain):
        MigrationOptions(postcopy_after_precopy=True)


def test_crash_is_reported_within_one_second(env, events_factory):
    vm = env.src.define_and_start(env.vm_xml())
    ev = events_factory(env.src)
    t0 = time.monotonic()
    env.kill_qemu(vm.name)
    crashed = ev.wait_for(EventKind.CRASHED, vm.uuid, timeout=5)
    took = time.monotonic() - t0
    assert took < 1.0, f"crash reported after {took:.2f}s"
    assert crashed.name == vm.name
    assert not env.src.vm_info(vm.uuid).active


def test_live_migration_persist_dest_undefine_source(env, events_factory):
    vm = env.src.define_and_start(env.vm_xml())
    dst_events = events_factory(env.dst)
    seen: list[MigrationProgress] = []
    res = env.src.migrate(vm.uuid, env.target, MOVE, progress=seen.append, deadline=60)
    assert res.ok, res.error
    assert res.outcome is MigrationOutcome.COMPLETED and res.error is None
    assert res.location is Location.DESTINATION
    assert (res.on_source, res.on_destination) == (False, True)
    assert (res.defined_on_source, res.defined_on_destination) == (False, True)
    assert 0 < res.duration_s < 60
    assert res.downtime_ms is not None and res.downtime_ms >= 0
    # Afterwards: defined and running only on the destination.
    there = env.dst.vm_info(vm.uuid)
    assert there.active and there.persistent and not there.autostart
    with pytest.raises(VmNotFound):
        env.src.vm_info(vm.uuid)
    migrated = dst_events.wait_for(EventKind.MIGRATED, vm.uuid)
    assert migrated.reason == "migrated-in"


def test_a_migration_with_the_leaders_tuning_completes_and_reports_the_dirty_rate(env):
    """[migration] bandwidth_cap, max_downtime_ms, auto_converge and post-copy as the leader writes
    them into an order (MigrationOptions.tuned): the hypervisor accepts them and moves the VM."""
    vm = env.src.define_and_start(env.vm_xml())
    tuned = MOVE.tuned((("auto_converge", True), ("bandwidth_cap", 500), ("max_downtime_ms", 400),
                        ("postcopy", True), ("postcopy_after_precopy", False)))
    seen: list[MigrationProgress] = []
    res = env.src.migrate(vm.uuid, env.target, tuned, progress=seen.append, deadline=60)
    assert res.ok, res.error
    assert res.location is Location.DESTINATION
    assert all(p.dirty_rate is None or p.dirty_rate >= 0 for p in seen)


def test_bandwidth_limited_migration_aborted_by_deadline_stays_on_source(env):
    vm = env.src.define_and_start(env.heavy_vm_xml())
    t0 = time.monotonic()
    res = env.src.migrate(vm.uuid, env.target, MigrationOptions(bandwidth=1), deadline=4)
    took = time.monotonic() - t0
    assert took <= 4.5, f"returned after {took:.2f}s, past its 4 s deadline"
    assert res.outcome is MigrationOutcome.ABORTED_DEADLINE
    assert isinstance(res.error, MigrationAborted) and res.error.transient
    assert res.location is Location.SOURCE
    assert env.src.vm_info(vm.uuid).active and env.src.vm_info(vm.uuid).persistent
    with pytest.raises(VmNotFound):
        env.dst.vm_info(vm.uuid)


def test_migration_aborted_on_request(env):
    vm = env.src.define_and_start(env.heavy_vm_xml())
    control = MigrationControl()
    res = env.src.migrate(vm.uuid, env.target, MigrationOptions(bandwidth=1),
                          progress=lambda p: control.abort(), deadline=30, control=control)
    assert res.outcome is MigrationOutcome.ABORTED_REQUEST
    assert res.last_progress is not None and res.last_progress.data_total > 0
    assert res.location is Location.SOURCE
    assert env.src.vm_info(vm.uuid).active


def test_migration_to_partitioned_host_fails_within_deadline(env):
    vm = env.src.define_and_start(env.vm_xml())
    env.partition_dst()
    try:
        t0 = time.monotonic()
        res = env.src.migrate(vm.uuid, env.target, MOVE, deadline=5)
        took = time.monotonic() - t0
    finally:
        env.heal_dst()
    # the deadline bounds the migration; locating the VM afterwards may take up to check_timeout
    assert took <= 5 + getattr(env.src, "_check_timeout", 0) + 0.5, f"returned after {took:.2f}s (libvirt alone would hang ~71 s)"
    assert not res.ok and res.error is not None and res.error.transient
    assert res.location is Location.SOURCE
    # Once healed, the abandoned libvirt call gets through to the peer; the aborted job must
    # not move the VM then.
    env.wait_source_job_gone(vm.uuid, timeout=45)
    assert env.src.vm_info(vm.uuid).active
    with pytest.raises(VmNotFound):
        env.dst.vm_info(vm.uuid)


def test_daemon_restart_reconnects_and_events_flow_again(env, events_factory):
    ev = events_factory(env.src)
    env.restart_src_daemon()
    ev.wait_for(EventKind.CONNECTION_LOST, timeout=10)
    ev.wait_for(EventKind.RECONNECTED, timeout=20)
    vm = env.src.define_and_start(env.vm_xml())
    ev.wait_for(EventKind.STARTED, vm.uuid, timeout=5)
    env.src.destroy(vm.uuid)
    ev.wait_for(EventKind.STOPPED, vm.uuid, timeout=5)


def test_managed_migration_without_p2p_keeps_source_definition(env):
    # Without p2p this process drives both sides (client_uri); without undefinesource the
    # source keeps a shut-off definition, as `virsh migrate --live --persistent` would.
    vm = env.src.define_and_start(env.vm_xml())
    opts = MigrationOptions(p2p=False, undefinesource=False)
    res = env.src.migrate(vm.uuid, env.target, opts, deadline=60)
    assert res.ok, res.error
    assert res.location is Location.DESTINATION
    assert (res.defined_on_source, res.defined_on_destination) == (True, True)
    left = env.src.vm_info(vm.uuid)
    assert not left.active and left.persistent
    assert env.dst.vm_info(vm.uuid).active
