"""Capabilities and domain XML parsing (pure): NUMA cells, hugepages, pinning, shared disks."""

from __future__ import annotations

import pytest

from haagent.errors import InvalidDomain
from haagent.hypervisor.xmlparse import parse_capabilities, parse_cpuset, parse_domain, to_kib


@pytest.mark.parametrize("text,expected", [
    ("0-3", (0, 1, 2, 3)), ("0-3,^2,8", (0, 1, 3, 8)), ("5", (5,)), ("", ()), (None, ()),
    ("8-15,^9", (8, 10, 11, 12, 13, 14, 15)), (" 1 , 3 ", (1, 3)),
])
def test_parse_cpuset(text, expected):
    assert parse_cpuset(text) == expected


def test_bad_cpuset_is_invalid():
    with pytest.raises(InvalidDomain, match="cpuset"):
        parse_cpuset("0-x")


def test_units():
    assert to_kib("2", "MiB") == 2048
    assert to_kib("1", "GiB") == 1048576
    assert to_kib("64", None) == 64  # libvirt's default unit is KiB
    with pytest.raises(InvalidDomain):
        to_kib("1", "parsecs")


def test_two_cells_with_hugepages(data):
    topo = parse_capabilities((data / "caps-2cell-hugepages.xml").read_text())
    assert topo.cpu_model == "Skylake-Server-IBRS" and topo.cpu_vendor == "Intel"
    assert (topo.sockets, topo.cores_per_socket, topo.threads_per_core) == (2, 4, 2)
    assert topo.page_sizes_kib == (4, 2048, 1048576)
    assert "pdpe1gb" in topo.cpu_features
    assert [c.id for c in topo.cells] == [0, 1]
    c0, c1 = topo.cells
    assert c0.cpus == tuple(range(8)) and c1.cpus == tuple(range(8, 16))
    assert c0.memory_mib == 65842092 // 1024
    # hugepages per size: totals from capabilities; base 4 KiB pages are not hugepages
    assert c0.hugepages == {2048: (1024, 0), 1048576: (4, 0)}
    assert c1.hugepages == {2048: (512, 0), 1048576: (0, 0)}
    assert "<model>Skylake-Server-IBRS</model>" in topo.cpu_xml


def test_four_cells_with_hugepages(data):
    topo = parse_capabilities((data / "caps-4cell-hugepages.xml").read_text())
    assert len(topo.cells) == 4
    assert sum(len(c.cpus) for c in topo.cells) == 16
    assert [c.hugepages[2048][0] for c in topo.cells] == [256, 256, 0, 128]
    assert [c.hugepages[1048576][0] for c in topo.cells] == [1, 1, 0, 0]
    assert all(c.memory_mib == 32768 for c in topo.cells)
    assert topo.cpu_model == "EPYC-Rome" and topo.cpu_vendor == "AMD"


def test_malformed_capabilities():
    with pytest.raises(InvalidDomain, match="malformed capabilities"):
        parse_capabilities("<capabilities><host>")
    with pytest.raises(InvalidDomain, match="no <host>"):
        parse_capabilities("<capabilities/>")


def test_domain_numa_pinning_hugepages_disks(data):
    spec = parse_domain((data / "domain-numa-pinned.xml").read_text(), shared_paths=("/srv/shared/",))
    assert spec.name == "acme-prod-db-01" and spec.uuid.startswith("0b7a2f3e")
    assert spec.vcpus == 4
    assert (spec.memory_mib, spec.max_memory_mib) == (6144, 8192)
    assert spec.hugepages_kib == (2048, 1048576)
    n = spec.numa
    assert (n.mode, n.nodeset) == ("strict", (0, 1))
    assert n.memnodes == {0: (0,), 1: (1,)}
    assert n.guest_cells == {0: ((0, 1), 4096), 1: ((2, 3), 4096)}
    assert n.vcpu_pins == {0: (2,), 1: (3,), 2: (10, 11), 3: (8, 10, 11, 12, 13, 14, 15)}
    assert n.emulator_pin == (0, 1)
    disks = {d.target: d for d in spec.disks}
    assert disks["vda"].shared, "under a declared shared path"
    assert not disks["vdb"].shared, "local image"
    assert disks["vdc"].shared and disks["vdc"].source == "rbd:pool/db-01-data"
    assert disks["sda"].shared, "<shareable/> LUN"
    assert disks["sdb"].device == "cdrom" and disks["sdb"].readonly and disks["sdb"].source == ""


def test_shared_path_prefix_is_a_directory_boundary():
    xml = ("<domain><name>x</name><memory>65536</memory><devices>"
           "<disk type='file'><source file='/srv/shared-not/a.img'/><target dev='vda'/></disk>"
           "</devices></domain>")
    assert not parse_domain(xml, shared_paths=("/srv/shared",)).disks[0].shared


def test_vcpu_cpuset_pins_every_vcpu():
    xml = "<domain><name>x</name><memory>65536</memory><vcpu cpuset='4-5'>2</vcpu></domain>"
    assert parse_domain(xml).numa.vcpu_pins == {0: (4, 5), 1: (4, 5)}


@pytest.mark.parametrize("xml,match", [
    ("<domain><name>x</name>", "malformed domain XML"),
    ("<network><name>x</name></network>", "expected a <domain>"),
    ("<domain><memory>1</memory></domain>", "no <name>"),
])
def test_bad_domain_xml(xml, match):
    with pytest.raises(InvalidDomain, match=match):
        parse_domain(xml)
