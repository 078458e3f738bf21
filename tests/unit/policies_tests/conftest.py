"""Small builders for placement tests: hosts and VMs with sensible defaults."""

from __future__ import annotations

import pytest

from policies.model import Cluster, Host, NumaCell, Vm


def host(name: str, cpus: int = 16, memory_mib: int = 65536, *, cells: int = 2, hugepages=None,
         **kw) -> Host:
    """A host with ``cells`` equal NUMA cells (hugepages per cell: {size_kib: count})."""
    numa = tuple(NumaCell(i, cpus // cells, memory_mib // cells, dict(hugepages or {}))
                 for i in range(cells)) if cells else ()
    return Host(name, cpus, memory_mib, numa, **kw)


def vm(name: str, vcpus: int = 2, memory_mib: int = 4096, host: str | None = None, **kw) -> Vm:
    return Vm(name, vcpus, memory_mib, host, **kw)


@pytest.fixture
def build():
    """The builders, as one object: build.host(...), build.vm(...), build.cluster(hosts, vms)."""

    class Builders:
        pass

    b = Builders()
    b.host = host
    b.vm = vm
    b.cluster = lambda hosts, vms=(), groups=(): Cluster(tuple(hosts), tuple(vms), tuple(groups))
    return b
