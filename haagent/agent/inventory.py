"""What a host publishes about itself in ``hosts/<h>/report``: inventory, smoothed load, its VMs.

The record (docs/design.md, "The host report") carries what the leader's placement needs:

- ``cpus``, ``memory_mib``: the host's size;
- ``cpu``: arch, vendor, model, ``key`` (the migration compatibility key: equal keys, a VM
  live-migrates between the hosts with its default CPU config) and ``models`` (the custom CPU
  models a guest may name here);
- ``numa``: cells with their cpus, memory, free memory and hugepages by size ``[total, free]``;
- ``tags``: from ``[host] tags`` in the config;
- ``load``: CPU in use (cores, host and per VM) and memory in use (MiB), each an exponentially
  weighted moving average with a one-minute time constant, so a burst does not move VMs;
- ``inventory_error``: set when the hypervisor could not be read; the leader then places on this
  host by cpu and memory only and raises a warning event;
- ``running_vms``, ``self_fence``, ``reported_at``.

Writing costs every watcher, so ``worth_writing`` publishes only on a meaningful change: the VM
list, the host's shape or an error at once; load and free memory at most once per
``report_interval``, and only when they moved past a threshold. In a steady state a host writes
nothing beyond its keepalives. Everything here is pure; the daemon and the simulator both build
their reports with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from haagent.hypervisor.port import HostInfo, StatsSample

SMOOTHING_S = 60.0  # the EWMA's time constant: a step change is 63 % through after a minute


def host_inventory(info: HostInfo, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    """The static part of a report from one ``host_info()`` reading (free memory included)."""
    cells = []
    for c in sorted(info.numa, key=lambda c: c.id):
        cells.append({"id": c.id, "cpus": list(c.cpus), "memory_mib": c.memory_mib,
                      "free_mib": c.free_mib,
                      "hugepages": {str(size): [total, free] for size, (total, free) in sorted(c.hugepages.items())}})
    return {"cpus": info.cpus, "memory_mib": info.memory_mib,
            "cpu": {"arch": info.arch, "vendor": info.cpu_vendor, "model": info.cpu_model,
                    "key": info.migration_key,  # haagent.hypervisor.port.cpu_migration_key
                    # custom models a guest may name here, whatever its domain type (kvm, qemu)
                    "models": sorted({m for models in info.cpu_models.values() for m in models})},
            "numa": cells, "tags": sorted(set(tags))}


@dataclass
class LoadSmoother:
    """EWMAs of host CPU (cores), memory in use (MiB) and each VM's CPU (cores)."""

    tau: float = SMOOTHING_S
    cpu: float | None = None
    memory_used_mib: float | None = None
    vms: dict[str, float] = field(default_factory=dict)
    _at: float | None = None

    def add(self, sample: StatsSample, cpus: int, vms_only: bool = False) -> None:
        """Fold in one usage sample (CPU figures need two readings; memory counts at once).

        ``vms_only``: the host's figures are its VMs' sums (hosts that share one machine, as the
        lab's, cannot tell their own use from their neighbours')."""
        dt = None if self._at is None else max(sample.at - self._at, 0.0)
        a = 1.0 if dt is None else 1.0 - math.exp(-dt / self.tau)
        self._at = sample.at

        def mix(old: float | None, new: float) -> float:
            return new if old is None else old + a * (new - old)

        if vms_only:
            if sample.interval_s is not None:
                self.cpu = mix(self.cpu, sum((u.cpu_percent or 0.0) for u in sample.vms.values()) / 100.0)
            self.memory_used_mib = mix(self.memory_used_mib, sum(u.memory_used_mib for u in sample.vms.values()))
        else:
            if sample.host_load is not None and cpus > 0:
                self.cpu = mix(self.cpu, sample.host_load * cpus)
            used = sample.host_memory_total_mib - sample.host_memory_free_mib
            if sample.host_memory_total_mib > 0:
                self.memory_used_mib = mix(self.memory_used_mib, used)
        seen = {}
        for uuid, u in sample.vms.items():
            if u.cpu_percent is not None:
                seen[uuid] = mix(self.vms.get(uuid), u.cpu_percent / 100.0)
            elif uuid in self.vms:
                seen[uuid] = self.vms[uuid]
        self.vms = seen  # a VM gone from the host leaves the average with it

    def record(self) -> dict[str, Any] | None:
        if self.cpu is None and self.memory_used_mib is None:
            return None
        return {"cpu": None if self.cpu is None else round(self.cpu, 2),
                "memory_used_mib": None if self.memory_used_mib is None else int(round(self.memory_used_mib)),
                "vms": {u: round(c, 2) for u, c in sorted(self.vms.items())}}


@dataclass(frozen=True)
class Thresholds:
    """How far load or free memory must move before a report is worth a write."""

    cpu_cores: float = 0.2  # or 10 % of the host's cpus, whichever is larger
    cpu_fraction: float = 0.10
    memory_mib: float = 256.0  # or 5 % of the host's memory, whichever is larger
    memory_fraction: float = 0.05
    vm_cpu_cores: float = 0.25  # one VM's smoothed CPU


def _moved(old: Any, new: Any, limit: float) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(float(new) - float(old)) > limit


def worth_writing(old: Mapping[str, Any] | None, new: Mapping[str, Any], since_last: float,
                  interval: float, limits: Thresholds = Thresholds()) -> bool:
    """Whether ``new`` should replace the published ``old``, ``since_last`` seconds after it.

    The VM list, shape, tags, CPU, self-fence record and errors are facts the leader acts on:
    any change is written at once. Load and free memory drift all the time: they are written at
    most once per ``interval``, and only past a threshold.
    """
    if old is None:
        return True
    volatile = ("load", "numa", "reported_at")
    if {k: v for k, v in old.items() if k not in volatile} != {k: v for k, v in new.items() if k not in volatile}:
        return True
    if _shape(old.get("numa")) != _shape(new.get("numa")):
        return True
    if since_last < interval:
        return False
    cpus = max(int(new.get("cpus") or 1), 1)
    memory = max(int(new.get("memory_mib") or 0), 0)
    cpu_limit = max(limits.cpu_cores, limits.cpu_fraction * cpus)
    mem_limit = max(limits.memory_mib, limits.memory_fraction * memory)
    for old_c, new_c in zip(old.get("numa") or (), new.get("numa") or ()):
        if _moved(old_c.get("free_mib"), new_c.get("free_mib"), mem_limit / max(len(new.get("numa") or ()), 1)):
            return True
        if old_c.get("hugepages") != new_c.get("hugepages"):
            return True
    ol, nl = old.get("load") or {}, new.get("load") or {}
    if not isinstance(ol, dict) or not isinstance(nl, dict):
        return ol != nl
    if _moved(ol.get("cpu"), nl.get("cpu"), cpu_limit) or \
            _moved(ol.get("memory_used_mib"), nl.get("memory_used_mib"), mem_limit):
        return True
    ov, nv = ol.get("vms") or {}, nl.get("vms") or {}
    return set(ov) != set(nv) or any(_moved(ov[u], nv[u], limits.vm_cpu_cores) for u in nv)


def _shape(cells: Any) -> Any:
    """A NUMA list without the figures that drift (free memory and free hugepages)."""
    if not isinstance(cells, list):
        return cells
    return [{"id": c.get("id"), "cpus": c.get("cpus"), "memory_mib": c.get("memory_mib"),
             "hugepages": {s: (v[0] if isinstance(v, list) and v else v) for s, v in (c.get("hugepages") or {}).items()}}
            for c in cells if isinstance(c, dict)]
