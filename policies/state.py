"""The engine's working copy of a cluster: per-host free capacity kept up to date move by move.

``ClusterState`` is built once from a frozen ``Cluster``; placing or moving a VM updates only the
two hosts involved, so an operation never rescans every VM. Filters and weighers only read it;
the operations (place, evacuate, rebalance) are the only writers, through ``add`` and ``remove``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from policies import numa
from policies.config import PolicyConfig
from haagent.model import water_fill
from policies.model import ACTIVE, Cluster, Host, NumaCell, Vm
from policies.naming import parse_name


class CellState:
    __slots__ = ("id", "cpus", "memory", "hp_total", "shared_vcpus", "dedicated", "memory_used",
                 "hp_used")

    def __init__(self, cell: NumaCell):
        self.id = cell.id
        self.cpus = cell.cpus
        self.memory = cell.memory_mib - cell.hugepage_mib  # memory left for ordinary pages
        self.hp_total = dict(cell.hugepages)
        self.shared_vcpus = 0
        self.dedicated = 0
        self.memory_used = cell.memory_used_mib
        self.hp_used: dict[int, int] = dict(cell.hugepages_used)


class HostUsage:
    """One host as the placement engine tracks it: capacity, what is bound to it, its load."""

    __slots__ = ("name", "host", "active", "state", "tags", "family", "cpu_models", "inventory_unknown", "cpus", "memory", "normal_memory",
                 "shared_vcpus", "dedicated", "memory_alloc", "cpu_load", "mem_load", "cells",
                 "vms", "version", "shape", "memo")

    def __init__(self, host: Host):
        self.name = host.name
        self.host = host
        self.active = host.state == ACTIVE
        self.state = host.state  # what-if runs (capacity) set this to "failed" for a while
        self.tags = host.tags
        self.family = host.cpu_family
        self.cpu_models = host.cpu_models
        self.inventory_unknown = host.inventory_unknown
        self.cpus = host.cpus
        self.memory = host.memory_mib
        self.normal_memory = host.memory_mib - host.hugepage_mib
        self.shared_vcpus = 0  # allocated, unpinned vcpus
        self.dedicated = 0  # pinned cpus
        self.memory_alloc = 0.0  # ordinary memory allocated to VMs, plus the host's own use
        self.cpu_load = 0.0  # cores in use
        self.mem_load = 0.0  # MiB in use
        cells = host.numa or (NumaCell(0, host.cpus, host.memory_mib),)
        self.cells = [CellState(c) for c in sorted(cells, key=lambda c: c.id)]
        self.vms: set[str] = set()
        self.version = 0  # bumped on every add/remove, keys the NUMA fit cache
        self.shape = tuple((c.cpus, c.memory, tuple(sorted(c.hp_total.items()))) for c in self.cells)
        self.memo: tuple | None = None  # (req, version, fit) of the last NUMA fit asked here

    def cell(self, cell_id: int) -> CellState:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise KeyError(cell_id)


@dataclass(frozen=True)
class GroupRule:
    name: str
    policy: str
    hard: bool


class Req:
    """A VM resolved for placement: sizes split by kind, rules and priority made explicit."""

    __slots__ = ("vm", "name", "vcpus", "shared_vcpus", "dedicated", "memory", "memory_mib",
                 "hp_size", "hp_count", "numa", "binds_cells", "priority", "hard_groups",
                 "soft_groups", "host_aff", "host_aff_hard", "required_tags", "migratable", "ha",
                 "cpu_load", "mem_load", "source", "nodeset", "max_pinned_cpu", "cpu_model", "unplaceable")

    def __init__(self, vm: Vm, rules: dict[str, GroupRule], config: PolicyConfig, cpu_load: float):
        self.vm = vm
        self.name = vm.name
        self.vcpus = vm.vcpus
        self.dedicated = vm.dedicated_cpus
        self.shared_vcpus = vm.vcpus - vm.dedicated_cpus
        self.memory_mib = vm.memory_mib
        self.hp_size = vm.hugepage_size_kib if vm.hugepage_count else None
        self.hp_count = vm.hugepage_count
        # Hugepage-backed memory comes from the hugepage pool, not from ordinary memory.
        self.memory = 0 if self.hp_count else vm.memory_mib
        self.numa = vm.numa
        self.binds_cells = vm.numa == "strict" or bool(self.dedicated) or bool(self.hp_count)
        groups = [rules[g] for g in vm.groups]
        priority = vm.priority
        naming = config.naming
        if naming.enabled:
            parsed = parse_name(vm.name, naming.priority)
            if parsed is not None:
                if priority is None:
                    priority = naming.priority[parsed.environment]
                if naming.service_anti_affinity != "off":
                    groups.append(GroupRule(parsed.group, "anti-affinity",
                                            naming.service_anti_affinity == "hard"))
        self.priority = 0 if priority is None else priority
        self.hard_groups = tuple(g for g in groups if g.hard)
        self.soft_groups = tuple(g for g in groups if not g.hard)
        aff = vm.host_affinity
        self.host_aff = aff.hosts if aff else None
        self.host_aff_hard = bool(aff and aff.hard)
        self.required_tags = vm.required_tags
        self.migratable = vm.migratable
        self.ha = vm.ha
        self.cpu_load = cpu_load
        self.mem_load = float(vm.memory_mib)
        self.source = vm.host
        self.nodeset = frozenset(vm.nodeset)
        self.max_pinned_cpu = vm.max_pinned_cpu
        self.cpu_model = vm.cpu_model
        self.unplaceable = vm.unplaceable

    def order_key(self) -> tuple:
        """Placement order: priority first, then size (memory, then vcpus), then name."""
        return (-self.priority, -self.memory_mib, -self.vcpus, self.name)


# The Reqs the last ClusterState resolved, by VM name: (vm, rules, config, cpu load, req).
_REQS: dict[str, tuple[Vm, dict[str, GroupRule], PolicyConfig, float, Req]] = {}


class ClusterState:
    """Mutable per-host accounting for one operation; built from a frozen cluster."""

    def __init__(self, cluster: Cluster, config: PolicyConfig, *, leave_out: Iterable[str] = ()):
        self.config = config
        self.cpu_ratio = config.cpu_overcommit
        self.mem_ratio = config.memory_overcommit
        self.hosts = [HostUsage(h) for h in sorted(cluster.hosts, key=lambda h: h.name)]
        self.by_name = {hs.name: hs for hs in self.hosts}
        self.rules = {g.name: GroupRule(g.name, g.policy, g.hard) for g in cluster.groups}
        # group name -> host name -> member VM names there; filled as VMs are added.
        self.members: dict[str, dict[str, set[str]]] = {}
        self.placed: dict[str, tuple[str, tuple[int, ...]]] = {}  # vm -> (host, cells)
        self.reqs: dict[str, Req] = {}
        self.warnings: list[str] = []
        # (vm, host cell sizes) -> strict width: a pure memo, most hosts share a shape.
        self.width_cache: dict[tuple[Req, tuple], int | None] = {}
        self.spread_unbound = cluster.unbound_memory == "spread"
        self.spread: dict[str, list[float]] = {}  # VMs placed unbound -> what each cell gave them
        self._ready = False  # the cluster's own VMs are in; what is added from now on is placed
        loads = _estimate_cpu_loads(cluster)
        leave = set(leave_out)
        global _REQS
        before, _REQS = _REQS, {}
        for vm in sorted(cluster.vms, key=lambda v: v.name):
            # A Req never changes once made: the one made for this very VM last time is reused
            # (at 20,000 VMs, resolving them all was half of a failover's placement time).
            kept = before.get(vm.name)
            load = loads[vm.name]
            if (kept is None or kept[2] is not config or kept[3] != load or not (kept[0] is vm or kept[0] == vm)
                    or kept[1] != self.rules):
                kept = (vm, self.rules, config, load, Req(vm, self.rules, config, load))
            _REQS[vm.name] = kept
            req = kept[4]
            self.reqs[vm.name] = req
            if vm.host is None or vm.name in leave or vm.host not in self.by_name:
                continue
            hs = self.by_name[vm.host]
            cells = vm.numa_cells
            if cells is None:
                cells = self.fit(req, hs)
                if cells is None:
                    # It runs there already; account it at host level and say so.
                    self.warnings.append(f"{vm.name}: no NUMA fit on its current host {vm.host}; "
                                         "counted without cell binding")
                    cells = ()
            self.add(req, hs.name, cells)
        # The host's own use: whatever its report shows beyond all the VMs it runs (counting
        # those left out, which still ran there when the report was taken).
        vm_mem: dict[str, float] = {}
        vm_cpu: dict[str, float] = {}
        for vm in cluster.vms:
            if vm.host is not None:
                vm_mem[vm.host] = vm_mem.get(vm.host, 0.0) + vm.memory_mib
                vm_cpu[vm.host] = vm_cpu.get(vm.host, 0.0) + loads[vm.name]
        for hs in self.hosts:
            h = hs.host
            if h.memory_used_mib is not None and h.memory_used_mib > vm_mem.get(hs.name, 0.0):
                extra = h.memory_used_mib - vm_mem.get(hs.name, 0.0)
                hs.mem_load += extra
                hs.memory_alloc += extra
            if h.cpu_used is not None and h.cpu_used > vm_cpu.get(hs.name, 0.0):
                hs.cpu_load += h.cpu_used - vm_cpu.get(hs.name, 0.0)
        self._ready = True

    def req(self, vm: Vm) -> Req:
        """The resolved request for a VM (from the cluster, or resolved now if it is new)."""
        known = self.reqs.get(vm.name)
        if known is not None and known.vm == vm:
            return known
        req = Req(vm, self.rules, self.config, vm.cpu_load if vm.cpu_load is not None
                  else float(vm.vcpus))
        self.reqs[vm.name] = req
        return req

    def add(self, req: Req, host: str, cells: tuple[int, ...]) -> None:
        hs = self.by_name[host]
        hs.shared_vcpus += req.shared_vcpus
        hs.dedicated += req.dedicated
        hs.memory_alloc += req.memory
        hs.cpu_load += req.cpu_load
        hs.mem_load += req.mem_load
        hs.vms.add(req.name)
        hs.version += 1
        self._bind(hs, req, cells, +1)
        if not cells and req.memory and self.spread_unbound and self._ready:
            shares = water_fill([c.memory - c.memory_used for c in hs.cells], req.memory)
            for c, share in zip(hs.cells, shares):
                c.memory_used += share
            self.spread[req.name] = shares
        for g in req.hard_groups + req.soft_groups:
            self.members.setdefault(g.name, {}).setdefault(host, set()).add(req.name)
        self.placed[req.name] = (host, cells)

    def remove(self, req: Req) -> None:
        host, cells = self.placed.pop(req.name)
        hs = self.by_name[host]
        hs.shared_vcpus -= req.shared_vcpus
        hs.dedicated -= req.dedicated
        hs.memory_alloc -= req.memory
        hs.cpu_load -= req.cpu_load
        hs.mem_load -= req.mem_load
        hs.vms.discard(req.name)
        hs.version += 1
        self._bind(hs, req, cells, -1)
        for c, share in zip(hs.cells, self.spread.pop(req.name, ())):
            c.memory_used -= share
        for g in req.hard_groups + req.soft_groups:
            self.members[g.name][host].discard(req.name)

    def _bind(self, hs: HostUsage, req: Req, cells: tuple[int, ...], sign: int) -> None:
        if not cells:
            return
        part = numa.split(req, len(cells))
        for cid in cells:
            c = hs.cell(cid)
            c.shared_vcpus += sign * part[0]
            c.dedicated += sign * part[1]
            c.memory_used += sign * part[2]
            if part[3]:
                c.hp_used[req.hp_size] = c.hp_used.get(req.hp_size, 0) + sign * part[3]

    def fit(self, req: Req, hs: HostUsage) -> tuple[int, ...] | None:
        """``numa.fit`` for this VM on this host, memoised until the host changes."""
        memo = hs.memo
        if memo is not None and memo[0] is req and memo[1] == hs.version:
            return memo[2]
        width = None
        cells = self.cells_for(req, hs)
        if req.numa == "strict":
            wkey = (req, hs.shape)
            if wkey not in self.width_cache:
                self.width_cache[wkey] = numa.strict_width(req, cells, self.cpu_ratio) if cells else None
            width = self.width_cache[wkey]
        if req.numa == "strict" and width is None:
            result = None  # wider than the whole host (or than the cells its nodeset allows)
        else:
            result = numa.fit(req, cells, self.cpu_ratio, width=width) if cells else None
        hs.memo = (req, hs.version, result)
        return result

    @staticmethod
    def cells_for(req: Req, hs: HostUsage) -> list[CellState]:
        """The host's cells the VM may use: all, or those of its nodeset."""
        if not req.nodeset:
            return hs.cells
        return [c for c in hs.cells if c.id in req.nodeset]

    def group_hosts(self, group: str, exclude_vm: str) -> dict[str, int]:
        """Host -> count of the group's members there, not counting ``exclude_vm``."""
        out = {}
        for host, names in self.members.get(group, {}).items():
            n = len(names) - (exclude_vm in names)
            if n:
                out[host] = n
        return out


def _estimate_cpu_loads(cluster: Cluster) -> dict[str, float]:
    """Each VM's cpu load: its own figure, else its share (by vcpus) of its host's measured load.

    Without any measurement a VM counts as busy on all its vcpus, the conservative guess.
    """
    loads: dict[str, float] = {}
    by_host: dict[str | None, list[Vm]] = {}
    for vm in cluster.vms:
        by_host.setdefault(vm.host, []).append(vm)
    hosts = {h.name: h for h in cluster.hosts}
    for name, vms in by_host.items():
        host = hosts.get(name) if name else None
        known = sum(v.cpu_load for v in vms if v.cpu_load is not None)
        unknown = [v for v in vms if v.cpu_load is None]
        share = None
        if host is not None and host.cpu_used is not None and unknown:
            total_vcpus = sum(v.vcpus for v in unknown)
            share = max(0.0, host.cpu_used - known) / total_vcpus if total_vcpus else 0.0
        for v in vms:
            if v.cpu_load is not None:
                loads[v.name] = v.cpu_load
            elif share is not None:
                loads[v.name] = share * v.vcpus
            else:
                loads[v.name] = float(v.vcpus)
    return loads
