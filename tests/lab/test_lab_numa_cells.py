"""NUMA cells of lab hosts as their real libvirtd reports them: from the layout, after a power
cycle, and with a hole in the node ids (the adapter must ask by cell id, not by position)."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
from haagent.hypervisor.port import HostInfo
from haagent.lab import layout as L
from haagent.lab.lab import Lab, machine_cpus

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(180)]

CELLS = (L.LabCell(free_mib=700, hugepages_free=5), L.LabCell(free_mib=2900))


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root: they create namespaces and run libvirtd (CI runs them as root)")


def host_info(lab: Lab, host: str) -> HostInfo:
    hv = LibvirtHypervisor(lab.libvirt_uri(host))
    try:
        assert hv.wait_connected(15)
        return hv.host_info()
    finally:
        hv.close()


def summary(info: HostInfo) -> list[tuple[int, int | None, tuple[int, int]]]:
    return [(c.id, c.free_mib, c.hugepages[L.HUGEPAGE_KIB]) for c in info.numa]


def test_layout_cells_after_a_power_cycle_a_live_change_and_with_a_hole_in_node_ids(make_lab) -> None:
    lab = make_lab("lbn", 2, 0, numa={"h1": CELLS})
    want = [(0, 700, (64, 5)), (1, 2900, (64, 64))]
    assert summary(host_info(lab, "h1")) == want
    assert summary(host_info(lab, "h2")) == [(i, c.free_mib, (c.hugepages, c.free_pages))
                                            for i, c in enumerate(L.default_cells("h2"))]
    assert lab.numa("h1") == CELLS
    assert lab.status()["hosts"][0]["numa"] == [c.to_json() for c in CELLS]

    lab.crash("h1")
    lab.revive("h1")  # a fresh init and mount namespace: the tree is bind-mounted again
    assert summary(host_info(lab, "h1")) == want

    # Totals and pool sizes are in the capabilities, which libvirtd and the adapter re-read.
    bigger = (L.LabCell(free_mib=6000, memory_mib=8192, hugepages=10), L.LabCell(free_mib=100))
    hv = LibvirtHypervisor(lab.libvirt_uri("h1"))  # one connection: nothing may be cached
    try:
        assert hv.wait_connected(15)
        lab.set_numa("h1", CELLS)
        assert summary(hv.host_info()) == want
        lab.set_numa("h1", bigger)
        info = hv.host_info()
        assert [(c.memory_mib, c.free_mib, c.hugepages[L.HUGEPAGE_KIB]) for c in info.numa] == \
            [(8192, 6000, (10, 10)), (4096, 100, (64, 64))]
        assert info.memory_mib == 8192 + 4096
    finally:
        hv.close()
    lab.set_numa("h1", CELLS)

    # A VM bound to cell 1 starts (the host's QEMU wrapper binds its memory to node 0, the
    # machine's only real node) and keeps cell 1 in its definition.
    name = "lbn-strict1"
    xml = L.domain_xml(name, lab.vm_uuid(name), lab.prefix, False, None, ha=False,
                       memory_mib=1024, numa_strict="1")
    hv = LibvirtHypervisor(lab.libvirt_uri("h1"))
    try:
        assert hv.wait_connected(15)
        vm = hv.define_and_start(xml)
        assert vm.active and (vm.numa.mode, vm.numa.nodeset, vm.memory_mib) == ("strict", (1,), 1024)
        maps = lab.exec("h1", ["sh", "-c", f"cat /proc/$(cat /run/libvirt/qemu/{name}.pid)/numa_maps"],
                        check=True).stdout
        assert " bind:0 " in maps and " bind:1 " not in maps
        hv.destroy(vm.uuid)
        hv.undefine(vm.uuid)
    finally:
        hv.close()

    # node0 and node2, as on a machine with node 1 offline: each cell keeps its own figures.
    lab.stop_libvirtd("h1")
    L.write_numa_tree(lab.layout.numa_dir("h1"), CELLS, machine_cpus(), node_ids=(0, 2))
    lab.start_libvirtd("h1")
    info = host_info(lab, "h1")
    assert summary(info) == [(0, 700, (64, 5)), (2, 2900, (64, 64))]
    assert sum(len(c.cpus) for c in info.numa) == info.cpus
