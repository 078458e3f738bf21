"""The placement input model: frozen hosts, NUMA cells, VMs, groups and the cluster holding them.

Sizes are whole numbers: cpus, MiB of memory, hugepage sizes in KiB. Loads are floats (cores in
use, MiB in use). The manager converts etcd host reports and VM specs into these; the JSON loader
(``policies.io``) is the one place that validates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

# Host states that matter here; only ``active`` hosts take VMs (see DESIGN section 3).
ACTIVE = "active"
HOST_STATES = ("active", "maintenance", "draining", "suspect", "fencing", "fenced", "recovering",
               "failed")

NUMA_MODES = ("none", "preferred", "strict")
UNBOUND_MEMORY = ("host", "spread")
GROUP_POLICIES = ("affinity", "anti-affinity")


@dataclass(frozen=True)
class NumaCell:
    """One NUMA cell: its cpus, memory, and hugepage pool (size KiB -> page count).

    ``memory_used_mib`` and ``hugepages_used`` are what is in use there now beyond the VMs the
    cluster binds to the cell (the live cluster measures them; a cluster file may give them).
    """

    id: int
    cpus: int
    memory_mib: int
    hugepages: Mapping[int, int] = field(default_factory=dict)
    memory_used_mib: int = 0
    hugepages_used: Mapping[int, int] = field(default_factory=dict)

    @property
    def hugepage_mib(self) -> int:
        """Memory set aside as hugepages: not available to ordinary VMs."""
        return sum(size * count for size, count in self.hugepages.items()) // 1024


@dataclass(frozen=True)
class Host:
    """A KVM host as the placement engine sees it."""

    name: str
    cpus: int
    memory_mib: int
    numa: tuple[NumaCell, ...] = ()
    state: str = ACTIVE
    tags: frozenset[str] = frozenset()
    cpu_family: str | None = None
    # Measured load; None means "not reported" and the VMs' own figures stand in for it.
    cpu_used: float | None = None
    memory_used_mib: float | None = None
    # Custom CPU models a guest may use here; None: not known (any model is accepted).
    cpu_models: frozenset[str] | None = None
    # Why its NUMA cells, hugepages and CPU models are not known now (its inventory cannot be
    # read): it takes only VMs that need none of them. None: known (or not modelled at all).
    inventory_unknown: str | None = None

    @property
    def hugepage_mib(self) -> int:
        return sum(c.hugepage_mib for c in self.numa)


@dataclass(frozen=True)
class HostAffinity:
    """A VM's wish (soft) or requirement (hard) to run on one of ``hosts``."""

    hosts: frozenset[str]
    hard: bool = True


@dataclass(frozen=True)
class Vm:
    """A VM to place or already placed. ``host`` is where it runs now (None: nowhere yet)."""

    name: str
    vcpus: int
    memory_mib: int
    host: str | None = None
    numa: str = "none"  # none | preferred | strict
    dedicated_cpus: int = 0  # pinned cpus, taken whole from NUMA cells, never overcommitted
    hugepage_size_kib: int | None = None
    hugepage_count: int = 0
    priority: int | None = None  # None: from the naming convention, else 0; higher goes first
    groups: tuple[str, ...] = ()
    host_affinity: HostAffinity | None = None
    required_tags: frozenset[str] = frozenset()
    migratable: bool = True
    ha: bool = True
    cpu_load: float | None = None  # cores in use; None: estimated from the host's report
    numa_cells: tuple[int, ...] | None = None  # cells it is bound to now, when known
    nodeset: tuple[int, ...] = ()  # host cells its memory may come from (its numatune); () = any
    max_pinned_cpu: int = -1  # highest host cpu id it pins; the host must have it
    cpu_model: str | None = None  # a custom CPU model the host must offer
    unplaceable: str | None = None  # a requirement that cannot be honoured: placed nowhere, and why


@dataclass(frozen=True)
class Group:
    """A named affinity or anti-affinity rule over the VMs that list it in ``groups``."""

    name: str
    policy: str  # affinity | anti-affinity
    hard: bool


@dataclass(frozen=True)
class Cluster:
    """A snapshot: hosts, VMs and rules. Everything is sorted by name for deterministic runs."""

    hosts: tuple[Host, ...]
    vms: tuple[Vm, ...] = ()
    groups: tuple[Group, ...] = ()
    # Where the memory of a VM that is not bound to cells comes from, for VMs an operation places:
    # "host" (counted at host level only) or "spread" (drawn from its host's cells where most is
    # free, ``haagent.model.water_fill``, so a strict VM placed after it in the same run sees what
    # is left in each cell; the live cluster uses this, its cells' use being measured).
    unbound_memory: str = "host"

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def vm(self, name: str) -> Vm:
        for v in self.vms:
            if v.name == name:
                return v
        raise KeyError(name)
