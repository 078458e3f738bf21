"""FakeHypervisor specifics the contract does not cover: virtual time, NUMA accounting, safety."""

from __future__ import annotations

from dataclasses import replace

import pytest

from haagent.errors import InvalidDomain, NoRouteToHost, OperationInvalid
from haagent.hypervisor.fake import FakeCluster, FakeHypervisor, default_cells
from haagent.hypervisor.options import MigrationOptions
from haagent.hypervisor.port import Location, MigrationOutcome, MigrationTarget, cpu_migration_key
from haagent.hypervisor.stats import compute_usage


class VirtualClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += dt


def vm(name, mib=1024, extra=""):
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>{mib}</memory>"
            f"<vcpu>2</vcpu><os><type>hvm</type></os>{extra}</domain>")


@pytest.fixture
def world():
    clock = VirtualClock()
    cluster = FakeCluster(clock=clock, sleep=clock.sleep, link_mib_s=1000)
    h1 = FakeHypervisor("fake://h1", cluster=cluster, numa=default_cells(2, 4, 4096, 512))
    h2 = FakeHypervisor("fake://h2", cluster=cluster, numa=default_cells(2, 4, 4096, 512))
    return clock, cluster, h1, h2


def test_migration_takes_virtual_time_only(world):
    clock, _, h1, h2 = world
    v = h1.define_and_start(vm("a", 2000))
    res = h1.migrate(v.uuid, MigrationTarget("fake://h2"), MigrationOptions(bandwidth=100), deadline=60)
    assert res.ok and res.location is Location.DESTINATION
    assert res.duration_s == pytest.approx(20.05)  # 2000 MiB at 100 MiB/s, plus setup
    assert clock.t == pytest.approx(20.05)


def test_partition_costs_the_deadline_minus_the_reserve(world):
    clock, cluster, h1, _ = world
    v = h1.define_and_start(vm("a"))
    cluster.partition("fake://h2")
    res = h1.migrate(v.uuid, MigrationTarget("fake://h2"), MigrationOptions(), deadline=10)
    assert res.outcome is MigrationOutcome.ABORTED_DEADLINE and res.location is Location.SOURCE
    assert clock.t == pytest.approx(7.0) and res.duration_s <= 10


def test_unknown_destination_and_same_host(world):
    _, _, h1, _ = world
    v = h1.define_and_start(vm("a"))
    res = h1.migrate(v.uuid, MigrationTarget("fake://nowhere"), MigrationOptions())
    assert isinstance(res.error, NoRouteToHost) and res.location is Location.UNKNOWN
    with pytest.raises(InvalidDomain, match="same host"):
        h1.migrate(v.uuid, MigrationTarget("fake://h1"), MigrationOptions())


def test_local_disk_needs_unsafe_or_copy(world):
    _, _, h1, _ = world
    disk = "<devices><disk type='file'><source file='/var/lib/img/a.qcow2'/><target dev='vda'/></disk></devices>"
    v = h1.define_and_start(vm("a", extra=disk))
    res = h1.migrate(v.uuid, MigrationTarget("fake://h2"), MigrationOptions())
    assert res.outcome is MigrationOutcome.FAILED and res.location is Location.SOURCE
    assert not res.error.transient
    assert h1.migrate(v.uuid, MigrationTarget("fake://h2"), MigrationOptions(unsafe=True)).ok


def test_never_two_copies(world):
    _, _, h1, h2 = world
    x = vm("a")
    v = h1.define_and_start(x)
    h2.define_and_start(x)
    res = h1.migrate(v.uuid, MigrationTarget("fake://h2"), MigrationOptions())
    assert isinstance(res.error, OperationInvalid) and res.location is Location.BOTH


def test_numa_and_hugepage_accounting(world):
    _, _, h1, _ = world
    h1.define_and_start(vm("pinned", 1024, "<numatune><memory mode='strict' nodeset='1'/></numatune>"))
    h1.define_and_start(vm("huge", 512, "<memoryBacking><hugepages><page size='2048'/></hugepages></memoryBacking>"
                                        "<numatune><memory nodeset='0'/></numatune>"))
    cells = h1.host_info().numa
    assert [c.free_mib for c in cells] == [4096, 3072]
    assert cells[0].hugepages[2048] == (512, 256) and cells[1].hugepages[2048] == (512, 512)


def test_configured_free_memory_and_hugepages_are_the_base_running_vms_take_from(world):
    clock, cluster, _, _ = world
    cells = tuple(replace(c, free_mib=free, hugepages={2048: (512, pages)})
                  for c, free, pages in zip(default_cells(2, 4, 4096), (1000, 3000), (100, 512)))
    h3 = FakeHypervisor("fake://h3", cluster=cluster, numa=cells, cpu_model="EPYC-Rome",
                        cpu_vendor="AMD", cpu_features=("avx2", "sse4.2"))
    assert [c.free_mib for c in h3.host_info().numa] == [1000, 3000]
    h3.define_and_start(vm("a", 256, "<numatune><memory mode='strict' nodeset='0'/></numatune>"))
    h3.define_and_start(vm("b", 100, "<memoryBacking><hugepages><page size='2048'/></hugepages></memoryBacking>"
                                     "<numatune><memory mode='strict' nodeset='1'/></numatune>"))
    info = h3.host_info()
    assert [c.free_mib for c in info.numa] == [744, 3000]
    assert [c.hugepages[2048] for c in info.numa] == [(512, 100), (512, 462)]
    assert (info.cpu_model, info.cpu_vendor) == ("EPYC-Rome", "AMD")
    assert info.migration_key == cpu_migration_key("x86_64", "AMD", "EPYC-Rome", ("sse4.2", "avx2"))
    assert info.migration_key != world[2].host_info().migration_key
    with pytest.raises(InvalidDomain, match="NUMA node 2 is unavailable"):
        h3.define_and_start(vm("c", 64, "<numatune><memory mode='strict' nodeset='0-2'/></numatune>"))


def test_cpu_usage_follows_the_virtual_clock(world):
    clock, cluster, h1, _ = world
    v = h1.define_and_start(vm("a"))
    cluster.set_vm_load("fake://h1", "a", 50.0)
    before = h1.raw_stats()
    clock.sleep(10)
    s = compute_usage(before, h1.raw_stats())
    assert s.vms[v.uuid].cpu_percent == pytest.approx(50.0)


def test_define_validates_and_keeps_uuid(world):
    _, _, h1, _ = world
    a = h1.define(vm("a"))
    assert h1.define(vm("a")).uuid == a.uuid  # redefine updates in place
    with pytest.raises(InvalidDomain, match="already exists"):
        h1.define(vm("a").replace("<name>", "<uuid>11111111-2222-3333-4444-555555555555</uuid><name>"))
    with pytest.raises(InvalidDomain):
        FakeHypervisor("fake://h1", cluster=h1.cluster)
