"""LibvirtHypervisor on libvirt's test:///default driver: inventory, lifecycle, events, errors."""

from __future__ import annotations

import queue
import time

import pytest

from haagent.errors import HypervisorUnavailable, InvalidDomain, VmNotFound
from haagent.hypervisor.port import EventKind, ShutdownOutcome, cpu_migration_key
from haagent.hypervisor.stats import StatsSampler
from haagent.model import VmState

pytestmark = pytest.mark.libvirt


def xml(name: str, extra: str = "") -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory>"
            f"<vcpu>2</vcpu><os><type>hvm</type></os>{extra}</domain>")


def test_numa_inventory_on_test_driver(testdriver):
    info = testdriver.host_info()
    assert len(info.numa) == 2
    assert info.numa[0].cpus == tuple(range(8)) and info.numa[1].cpus == tuple(range(8, 16))
    assert info.cpus == 16
    assert [c.memory_mib for c in info.numa] == [2048, 4096]
    assert all(c.free_mib is not None for c in info.numa)
    assert 2048 in info.numa[0].hugepages and 1048576 in info.numa[0].hugepages
    assert 4 not in info.numa[0].hugepages
    assert info.migration_key == cpu_migration_key(info.arch, info.cpu_vendor, info.cpu_model,
                                                   info.cpu_features)


def test_builtin_domain_inventory(testdriver):
    test = testdriver.vm_info("test")
    assert test.state is VmState.RUNNING and test.persistent
    assert test.vcpus == 2 and test.memory_mib == 2048
    assert [d.target for d in test.disks] == ["vda"] and not test.disks[0].shared
    assert "<name>test</name>" in test.xml
    assert testdriver.vm_info(test.uuid).name == "test"


def test_lifecycle_events_and_autostart_off(testdriver):
    q: queue.Queue = queue.Queue()
    sub = testdriver.subscribe(q.put)
    vm = testdriver.define(xml("hvt-u-life"))
    assert not vm.autostart and vm.state is VmState.SHUTOFF
    vm = testdriver.start(vm.uuid)
    assert vm.state is VmState.RUNNING and vm.reason == "booted"
    testdriver.destroy(vm.uuid)
    assert testdriver.vm_info(vm.uuid).reason == "destroyed"
    testdriver.undefine(vm.uuid)
    kinds = []
    end = time.monotonic() + 5
    while len(kinds) < 4 and time.monotonic() < end:
        try:
            ev = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if ev.uuid == vm.uuid:
            kinds.append((ev.kind, ev.reason))
    sub.cancel()
    assert kinds == [(EventKind.DEFINED, "added"), (EventKind.STARTED, "booted"),
                     (EventKind.STOPPED, "destroyed"), (EventKind.UNDEFINED, "removed")]


def test_define_with_autostart_requested(testdriver):
    vm = testdriver.define(xml("hvt-u-auto"), autostart=True)
    assert vm.autostart
    testdriver.set_autostart(vm.uuid, False)
    assert not testdriver.vm_info(vm.uuid).autostart


def test_graceful_shutdown(testdriver):
    vm = testdriver.define_and_start(xml("hvt-u-shut"))
    assert testdriver.shutdown(vm.uuid, timeout=2) is ShutdownOutcome.GRACEFUL
    assert testdriver.shutdown(vm.uuid, timeout=2) is ShutdownOutcome.ALREADY_OFF


def test_bad_input_errors(testdriver):
    with pytest.raises(InvalidDomain, match="malformed domain XML"):
        testdriver.define("<domain type='test'><name>x")
    with pytest.raises(InvalidDomain, match="os <type>"):
        testdriver.define("<domain type='test'><name>hvt-u-noos</name><memory>1024</memory></domain>")
    with pytest.raises(VmNotFound, match="hvt-u-missing"):
        testdriver.vm_info("hvt-u-missing")
    with pytest.raises(VmNotFound):
        testdriver.vm_info("00000000-0000-0000-0000-000000000000")
    with pytest.raises(InvalidDomain):
        testdriver.vm_info("")


def test_stats_reading_and_sampler(testdriver):
    raw = testdriver.raw_stats()
    assert "test" in {v.name for v in raw.vms}
    assert raw.host_cpus == 16 and raw.host_memory_total_kib > 0
    sampler = StatsSampler(testdriver.raw_stats, interval=0.05).start()
    try:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            s = sampler.latest()
            if s is not None and s.interval_s is not None:
                break
            time.sleep(0.02)
        assert s is not None and s.interval_s is not None and s.interval_s > 0
        assert any(u.name == "test" for u in s.vms.values())
    finally:
        sampler.stop()


def test_unreachable_daemon_is_transient_and_retried():
    from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
    hv = LibvirtHypervisor("qemu+unix:///system?socket=/nonexistent/hvt-sock", reconnect_max_wait=0.2)
    try:
        assert not hv.connected
        with pytest.raises(HypervisorUnavailable) as ei:
            hv.list_vms()
        assert ei.value.transient
    finally:
        hv.close()


def test_migration_tuning_maps_to_libvirt_flags_params_and_calls(testdriver, monkeypatch):
    """The libvirt adapter turns MigrationOptions into migrateToURI3 flags and params, sets the
    max downtime first, switches to post-copy after the first pass, and reads the dirty rate from
    jobStats (the test driver cannot migrate: its domain is stood in for by a recording one)."""
    import threading

    import libvirt

    from haagent.hypervisor.options import MigrationOptions
    from haagent.hypervisor.port import MigrationTarget

    calls: list[tuple] = []
    returned = threading.Event()

    class Dom:
        def UUIDString(self):
            return "11111111-2222-3333-4444-555555555555"

        def migrateSetMaxDowntime(self, ms, flags):
            calls.append(("max_downtime", ms))

        def migrateToURI3(self, uri, params, flags):
            calls.append(("migrate", uri, params, flags))
            returned.wait(5)

        def migrateStartPostCopy(self, flags):
            calls.append(("postcopy",))
            returned.set()

        def jobStats(self, flags):
            return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "data_total": 100 << 20, "data_processed": 60 << 20,
                    "data_remaining": 40 << 20, "memory_iteration": 2, "memory_dirty_rate": 2500,
                    "memory_page_size": 4096}

        def abortJob(self):
            returned.set()

    monkeypatch.setattr(testdriver, "_lookup", lambda vm: Dom())
    monkeypatch.setattr(testdriver, "_sides", lambda dom, dest, budget: (False, True, False, True))
    monkeypatch.setattr(testdriver, "_completed_stats", lambda uuid, dest: (25, 100 << 20))
    monkeypatch.setattr(testdriver, "_poll", 0.02)
    seen = []
    opts = MigrationOptions().tuned((("auto_converge", True), ("bandwidth_cap", 64), ("max_downtime_ms", 200),
                                     ("postcopy", True), ("postcopy_after_precopy", True)))
    res = testdriver.migrate("web-1", MigrationTarget("qemu+tls://h2/system"), opts, progress=seen.append,
                             deadline=10)
    assert res.ok, res.error
    assert calls[0] == ("max_downtime", 200)
    [(_, uri, params, flags)] = [c for c in calls if c[0] == "migrate"]
    assert uri == "qemu+tls://h2/system" and params == {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 64}
    for name in ("LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "AUTO_CONVERGE", "POSTCOPY"):
        assert flags & getattr(libvirt, f"VIR_MIGRATE_{name}"), name
    assert ("postcopy",) in calls  # after the first pre-copy pass (memory_iteration 2)
    assert seen and seen[0].dirty_rate == 2500 * 4096
