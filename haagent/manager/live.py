"""The live cluster as the placement engine sees it: one conversion from a ``ClusterView``.

Failover placement, ``haagent cluster dump``, every ``haagent plan --live`` verb and
``haagent status`` read the cluster through ``live_cluster``, so what an operator inspects is
exactly what the leader decides from.

How the live figures map onto the engine's model (docs/placement.md, "The live cluster"):

- A host's state is its state record as it stands; an ``active`` host whose lease is gone is
  ``suspect`` and one the step is taking out of service (or a relocation's source) is ``failed``.
- A host's NUMA cells come from its report: their size, and what is in use there now (memory
  beyond the free figure and the hugepage pool, hugepages beyond the free pages) as the cell's
  ``memory_used_mib``/``hugepages_used``. The VMs running there are already in those figures, so
  they count once, at host level (``numa_cells = []``); a VM placed there that its report does
  not list yet (arriving by live migration, or placed and not started) and one placed by this run bind the free
  capacity of the cells it lands on, and a strict VM's width is still judged on whole cells. A VM
  placed unbound draws its memory evenly from its new host's cells (``unbound_memory =
  "spread"``), so a strict VM placed after it in the same failover sees what is really left.
- The migration compatibility key is the engine's ``cpu_family``; tags, smoothed CPU load (host
  and per VM) and memory in use come from the report as well.
- A host whose inventory cannot be read (``inventory_error``) is placed on by cpu and memory only,
  and only VMs that need nothing of its inventory (no NUMA binding, pinning, hugepages or custom
  CPU model) go there: placed nowhere rather than wrongly.
- VMs carry their domain XML's requirements (``haagent/state/requirements.py``). VMs go to the
  engine under their libvirt names so the naming convention applies; a name used twice falls
  back to the uuid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from haagent.model import HostCell, HostState
from haagent.state.view import ClusterView, HostView, VmSpec
from policies import Cluster, Group, Host, NumaCell, Vm
from policies.config import PolicyConfig


@dataclass(frozen=True)
class LiveCluster:
    cluster: Cluster
    label: Mapping[str, str]  # uuid -> the name the engine knows it by
    uuid: Mapping[str, str]  # engine name -> uuid
    warnings: tuple[str, ...] = ()  # hosts placed on without inventory, and why
    # uuid -> (spec, name, host view, the engine's Vm): what this call converted (or reused)
    converted: Mapping[str, tuple[VmSpec, str, HostView | None, Vm]] = field(default_factory=dict, compare=False,
                                                                              repr=False)


def host_state(hv: HostView, avoided: bool) -> str:
    state = hv.state.value if hv.state is not None else HostState.ACTIVE.value
    if state == HostState.ACTIVE.value and not hv.alive:
        return HostState.SUSPECT.value
    if state == HostState.ACTIVE.value and avoided:
        return HostState.FAILED.value
    return state


def live_host(hv: HostView, avoided: bool = False, pending_mib: int = 0) -> Host:
    """``pending_mib``: the memory of the VMs placed on the host that its report does not list
    running (not started yet, or failing to start). The engine takes a host's use beyond the
    VMs placed there as the host's own; such VMs are not in the reported use, so without them
    that own use (a VM haagent does not manage, say) would vanish behind them."""
    cells = ()
    if hv.numa and not hv.inventory_error:
        cells = tuple(_cell(c) for c in hv.numa)
    used = hv.memory_used_mib + pending_mib if hv.memory_used_mib is not None else None
    return Host(name=hv.name, cpus=max(hv.cpus, 1), memory_mib=max(hv.memory_mib, 1), numa=cells,
                state=host_state(hv, avoided), tags=hv.tags, cpu_family=hv.cpu_key or None,
                cpu_used=hv.cpu_used, memory_used_mib=used, cpu_models=hv.cpu_models,
                inventory_unknown=hv.inventory_error or None)


def _cell(c: HostCell) -> NumaCell:
    pages = {size: total for size, (total, _free) in sorted(c.hugepages.items()) if total}
    pool_mib = sum(size * total for size, total in pages.items()) // 1024
    memory = max(c.memory_mib, pool_mib, 1)
    used = 0 if c.free_mib is None else min(max(c.memory_mib - c.free_mib - pool_mib, 0), memory - pool_mib)
    return NumaCell(c.id, max(len(c.cpus), 1), memory, pages, used,
                    {size: min(total - free, total) for size, (total, free) in sorted(c.hugepages.items())
                     if total and total - free > 0})


def _vm(spec: VmSpec, label: str, host: HostView | None) -> Vm:
    n = spec.needs
    cpu_load = host.vm_cpu.get(spec.uuid) if host is not None else None
    # Running where free cell capacity is reported: already counted there (see the module doc).
    # Placed there but not running there yet (arriving by migration, or just placed): it binds
    # the cells it would land on, as one placed by this run does.
    cells = () if (host is not None and host.numa and not host.inventory_error
                   and spec.uuid in host.running) else None
    if cells is None and host is not None and n.numa == "strict" and n.nodeset:
        # Bound to named cells: it takes them even if they look full now (the engine would
        # otherwise count a VM that does not fit at host level only, and fill its cells again).
        ids = {c.id for c in host.numa}
        cells = tuple(c for c in n.nodeset if c in ids) or None
    return Vm(name=label, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
              host=host.name if host is not None else None, numa=n.numa,
              dedicated_cpus=min(n.dedicated_cpus, spec.vcpus), hugepage_size_kib=n.hugepage_size_kib,
              hugepage_count=n.hugepage_count, priority=spec.priority, groups=spec.groups,
              # local disks: no live migration (drain.not_live), so no rebalance move either
              migratable=spec.policy != "none" and not spec.local_disks, ha=spec.policy != "none", cpu_load=cpu_load,
              numa_cells=cells, nodeset=n.nodeset, max_pinned_cpu=n.max_pinned_cpu,
              cpu_model=n.cpu_model or None, unplaceable=n.unplaceable or None)


class LiveMemo:
    """What ``live_cluster`` converted last time, reused while its inputs are the very same objects:
    each VM (by its spec, name and host view), each host (by its view and whether it is avoided),
    and what follows from the specs mapping alone (names, groups)."""

    def __init__(self) -> None:
        self.vms: dict[str, tuple[VmSpec, str, HostView | None, Vm]] = {}
        self.hosts: dict[str, tuple[HostView, tuple[bool, int], Host]] = {}  # (avoided, pending MiB)
        self.specs: tuple[Mapping[str, VmSpec], dict[str, str], dict[str, str], list[str]] | None = None


def live_cluster(view: ClusterView, config: PolicyConfig | None = None, *,
                 avoid: Iterable[str] = (), unplaced: Iterable[str] = (),
                 memo: LiveMemo | None = None) -> LiveCluster:
    """The engine's cluster from a view: every host, every registered VM where it is placed.

    ``unplaced`` VMs (the ones a failover is about to place) are listed without a host. ``memo``
    (kept by the caller from one call to the next) reuses each VM's conversion while its spec,
    its name and the view of its host are the very same objects (a leader's view shares them
    from one tick to the next): at 20,000 VMs, converting them all was most of a failover's
    placement time.
    """
    cfg = config or PolicyConfig()
    avoid, unplaced = frozenset(avoid), frozenset(unplaced)
    if memo is not None and memo.specs is not None and memo.specs[0] is view.specs:
        _specs, label, uuids, names = memo.specs
    else:
        counts: dict[str, int] = {}
        for spec in view.specs.values():
            counts[spec.name] = counts.get(spec.name, 0) + 1
        label = {u: (s.name if counts[s.name] == 1 else u) for u, s in view.specs.items()}
        uuids = {name: u for u, name in label.items()}
        names = sorted({g for s in view.specs.values() for g in s.groups})
        if memo is not None:
            memo.specs = (view.specs, label, uuids, names)
    placed = view.index.placed
    pending = {h: sum(view.specs[u].memory_mib for u in placed.get(h, ())
                      if u in view.specs and u not in hv.running and u not in unplaced)
               for h, hv in view.hosts.items() if hv.memory_used_mib is not None}
    hosts = tuple(_live_host(hv, h in avoid, memo, pending.get(h, 0)) for h, hv in sorted(view.hosts.items()))
    warnings = tuple(f"{hv.name}: placed on by cpu and memory only ({hv.inventory_error})"
                     for _h, hv in sorted(view.hosts.items()) if hv.inventory_error)
    vms = []
    kept: dict[str, tuple[VmSpec, str, HostView | None, Vm]] = {}
    for u in sorted(view.specs):
        where = view.placements.get(u)
        host = view.hosts.get(where) if where is not None and u not in unplaced else None
        spec = view.specs[u]
        found = memo.vms.get(u) if memo is not None else None
        if found is None or found[0] is not spec or found[2] is not host or found[1] != label[u]:
            found = (spec, label[u], host, _vm(spec, label[u], host))
        kept[u] = found
        vms.append(found[3])
    if memo is not None:
        memo.vms = kept
    groups = tuple(Group(g, *cfg.groups.get(g, ("anti-affinity", False))) for g in names)
    return LiveCluster(Cluster(hosts=hosts, vms=tuple(vms), groups=groups, unbound_memory="spread"), label,
                       uuids, warnings, kept)


def _live_host(hv: HostView, avoided: bool, memo: LiveMemo | None, pending_mib: int = 0) -> Host:
    if memo is None:
        return live_host(hv, avoided, pending_mib)
    found = memo.hosts.get(hv.name)
    if found is None or found[0] is not hv or found[1] != (avoided, pending_mib):
        found = memo.hosts[hv.name] = (hv, (avoided, pending_mib), live_host(hv, avoided, pending_mib))
    return found[2]
