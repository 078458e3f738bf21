"""A domain XML's placement requirements: the one mapping from libvirt's elements to ``VmNeeds``.

=============================================  ==============================================
domain XML                                     placement request (the cluster file's fields)
=============================================  ==============================================
``<numatune><memory mode="strict|restrictive">``  ``numa = "strict"``, memory from ``nodeset``
``<numatune><memory mode="preferred">``           ``numa = "preferred"``
``<numatune><memory mode="interleave">``          ``numa = "none"``, cells in ``nodeset`` must exist
``<numatune><memnode cellid nodeset>``            the union of the nodesets bounds ``nodeset``
``<cputune><vcpupin>``, ``<vcpu cpuset>``         ``dedicated_cpus`` = vcpus pinned to one cpu
                                                  each; the target must have every pinned cpu id
``<memoryBacking><hugepages><page size>``         ``hugepages`` of that size (default 2 MiB),
                                                  ``count`` = memory / size
``<cpu mode="custom"><model>X``                   the target must list X as usable
``<cpu mode="host-passthrough|host-model">``      recorded; live migration needs an equal CPU
=============================================  ==============================================

What the mapping cannot honour faithfully (several hugepage sizes, per-cell page sizes, a
numatune mode it does not know, a nodeset or cpuset it cannot read) makes the VM
``unplaceable`` with the reason: placed nowhere rather than wrongly, and ``haagent plan explain``
says why.
"""

from __future__ import annotations

from haagent.errors import HaagentError
from haagent.hypervisor.xmlparse import parse_domain
from haagent.state.view import VmNeeds

DEFAULT_HUGEPAGE_KIB = 2048  # x86's default hugepage size, for <hugepages/> without a <page>
NUMA_MODES = {"strict": "strict", "restrictive": "strict", "preferred": "preferred", "interleave": "none"}


def needs_from_xml(xml: str) -> VmNeeds:
    """The placement requirements of one domain XML (never raises: bad XML is unplaceable)."""
    try:
        spec = parse_domain(xml)
    except (HaagentError, ValueError) as exc:
        return VmNeeds(unplaceable=f"domain XML cannot be read: {exc}")
    t = spec.numa
    why = []
    numa = "none"
    if t.mode:
        if t.mode not in NUMA_MODES:
            why.append(f"<numatune> memory mode {t.mode!r} is not understood")
        else:
            numa = NUMA_MODES[t.mode]
    nodeset = set(t.nodeset)
    for cells in t.memnodes.values():
        nodeset.update(cells)
    if t.memnodes and numa == "none" and not t.mode:
        numa = "strict"  # <memnode> without <memory>: libvirt binds each guest cell strictly
    pinned = {v for v, cpus in t.vcpu_pins.items() if len(cpus) == 1}  # to a set: a restriction only
    max_pin = max((c for cpus in t.vcpu_pins.values() for c in cpus), default=-1)
    size, count = None, 0
    if spec.hugepages_kib:
        sizes = [s or DEFAULT_HUGEPAGE_KIB for s in spec.hugepages_kib]
        if len(set(sizes)) > 1 or spec.hugepage_nodesets:
            why.append("hugepages of several sizes or per NUMA cell are not understood")
        else:
            size = sizes[0]
            count = -(-spec.memory_mib * 1024 // size)
    if why:
        return VmNeeds(unplaceable="; ".join(why))
    return VmNeeds(numa=numa, nodeset=tuple(sorted(nodeset)), dedicated_cpus=min(len(pinned), spec.vcpus),
                   max_pinned_cpu=max_pin, hugepage_size_kib=size, hugepage_count=count,
                   cpu_mode=spec.cpu_mode, cpu_model=spec.cpu_model if spec.cpu_mode == "custom" else "")


def local_disks(xml: str, shared_paths: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The sources of a domain's disks that are not on the cluster's shared storage: not a network
    disk (rbd, iscsi, nfs...), not marked ``<shareable/>``, and not under one of ``shared_paths``
    (``[agent] shared_paths``). A drive with no source (an empty CD-ROM) counts for nothing; a
    read-only image counts too: the target must open that same file. Unreadable XML: none
    (``needs_from_xml`` makes such a VM unplaceable already)."""
    try:
        spec = parse_domain(xml, shared_paths)
    except (HaagentError, ValueError):
        return ()
    return tuple(d.source for d in spec.disks if d.source and not d.shared)
