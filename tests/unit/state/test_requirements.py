"""Domain XML -> placement requirements (haagent/state/requirements.py)."""

from __future__ import annotations

from haagent.state.requirements import local_disks, needs_from_xml
from haagent.state.view import VmNeeds


def dom(inner: str = "", memory_kib: int = 1048576, vcpus: int = 2) -> str:
    return (f"<domain type='kvm'><name>v</name><uuid>00000000-0000-0000-0000-000000000001</uuid>"
            f"<memory unit='KiB'>{memory_kib}</memory><vcpu>{vcpus}</vcpu>{inner}</domain>")


def test_a_plain_domain_needs_nothing_beyond_size():
    assert needs_from_xml(dom()) == VmNeeds()


def test_strict_and_restrictive_numatune_are_strict_with_their_nodeset():
    n = needs_from_xml(dom("<numatune><memory mode='strict' nodeset='0-1'/></numatune>"))
    assert (n.numa, n.nodeset) == ("strict", (0, 1))
    assert needs_from_xml(dom("<numatune><memory mode='restrictive' nodeset='1'/></numatune>")).numa == "strict"
    assert needs_from_xml(dom("<numatune><memory nodeset='1'/></numatune>")).numa == "strict"  # libvirt's default


def test_preferred_and_interleave():
    assert needs_from_xml(dom("<numatune><memory mode='preferred' nodeset='1'/></numatune>")).numa == "preferred"
    n = needs_from_xml(dom("<numatune><memory mode='interleave' nodeset='0,1'/></numatune>"))
    assert (n.numa, n.nodeset) == ("none", (0, 1))


def test_memnodes_bound_the_nodeset():
    n = needs_from_xml(dom("<cpu><numa><cell id='0' cpus='0' memory='512' unit='MiB'/>"
                           "<cell id='1' cpus='1' memory='512' unit='MiB'/></numa></cpu>"
                           "<numatune><memnode cellid='0' mode='strict' nodeset='2'/>"
                           "<memnode cellid='1' mode='strict' nodeset='3'/></numatune>"))
    assert (n.numa, n.nodeset) == ("strict", (2, 3))


def test_vcpus_pinned_one_to_one_are_dedicated_and_a_cpuset_only_restricts():
    n = needs_from_xml(dom("<cputune><vcpupin vcpu='0' cpuset='6'/><vcpupin vcpu='1' cpuset='7'/></cputune>"))
    assert (n.dedicated_cpus, n.max_pinned_cpu) == (2, 7)
    n = needs_from_xml(dom("<cputune><vcpupin vcpu='0' cpuset='0-3'/></cputune>"))
    assert (n.dedicated_cpus, n.max_pinned_cpu) == (0, 3)
    n = needs_from_xml(dom().replace("<vcpu>2</vcpu>", "<vcpu cpuset='4-5'>2</vcpu>"))
    assert (n.dedicated_cpus, n.max_pinned_cpu) == (0, 5)


def test_hugepages_take_their_size_or_the_default_and_count_the_memory():
    n = needs_from_xml(dom("<memoryBacking><hugepages><page size='1' unit='GiB'/></hugepages></memoryBacking>"))
    assert (n.hugepage_size_kib, n.hugepage_count) == (1048576, 1)
    n = needs_from_xml(dom("<memoryBacking><hugepages/></memoryBacking>", memory_kib=1048576 + 3072))
    assert (n.hugepage_size_kib, n.hugepage_count) == (2048, 514)  # 1027 MiB: rounded up to whole pages


def test_the_cpu_model_is_required_only_for_a_custom_cpu():
    n = needs_from_xml(dom("<cpu mode='custom' match='exact'><model>EPYC-Rome</model></cpu>"))
    assert (n.cpu_mode, n.cpu_model) == ("custom", "EPYC-Rome")
    n = needs_from_xml(dom("<cpu mode='host-passthrough'/>"))
    assert (n.cpu_mode, n.cpu_model) == ("host-passthrough", "")


def test_what_the_parser_does_not_understand_is_placed_nowhere_and_says_why():
    n = needs_from_xml(dom("<numatune><memory mode='bogus' nodeset='0'/></numatune>"))
    assert "memory mode 'bogus' is not understood" in n.unplaceable
    n = needs_from_xml(dom("<memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/>"
                           "<page size='1048576' unit='KiB' nodeset='1'/></hugepages></memoryBacking>"))
    assert "hugepages of several sizes" in n.unplaceable
    assert needs_from_xml("<domain><name>v</name><vcpu>x</vcpu></domain>").unplaceable.startswith("domain XML cannot be read")
    assert needs_from_xml("not xml").unplaceable.startswith("domain XML cannot be read")


def disk(source: str, kind: str = "file", extra: str = "", device: str = "disk") -> str:
    return f"<disk type='{kind}' device='{device}'>{source}<target dev='vda'/>{extra}</disk>"


def test_local_disks_are_the_ones_outside_the_shared_storage():
    shared = ("/mnt/vms", "/dev/mapper")
    devices = ("<devices>" + disk("<source file='/mnt/vms/a.qcow2'/>")
               + disk("<source file='/var/lib/libvirt/images/b.qcow2'/>")
               + disk("<source dev='/dev/mapper/mpatha'/>", "block")
               + disk("<source dev='/dev/sdb'/>", "block")
               + disk("<source protocol='rbd' name='pool/c'/>", "network")
               + disk("<source file='/var/lib/libvirt/images/scratch.img'/>", extra="<shareable/>")
               + disk("<source file='/var/lib/libvirt/images/tools.iso'/>", extra="<readonly/>", device="cdrom")
               + disk("", device="cdrom")  # an empty drive: nothing to reach
               + "</devices>")
    assert local_disks(dom(devices), shared) == ("/var/lib/libvirt/images/b.qcow2", "/dev/sdb",
                                                 "/var/lib/libvirt/images/tools.iso")
    # nothing declared shared: every file and block device is local (network and shareable disks never are)
    assert local_disks(dom(devices)) == ("/mnt/vms/a.qcow2", "/var/lib/libvirt/images/b.qcow2", "/dev/mapper/mpatha",
                                         "/dev/sdb", "/var/lib/libvirt/images/tools.iso")
    # a prefix must end at a directory boundary
    assert local_disks(dom("<devices>" + disk("<source file='/mnt/vms2/d.qcow2'/>") + "</devices>"), shared) == \
        ("/mnt/vms2/d.qcow2",)
    assert local_disks(dom()) == () and local_disks("<domain", shared) == ()
