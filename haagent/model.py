"""Shared value types and the host state table.

Types here are plain frozen data with no behaviour beyond (de)serialisation, so the store, the
manager, the agent and the simulator can pass them around without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class HostState(str, Enum):
    """Lifecycle state of a host, owned by the leader (``hosts/<h>/state``)."""

    ACTIVE = "active"
    MAINTENANCE = "maintenance"
    DRAINING = "draining"
    SUSPECT = "suspect"
    FENCING = "fencing"
    FENCED = "fenced"
    RECOVERING = "recovering"
    FAILED = "failed"


# One-line gloss per state: what it means and who moves it on.
HOST_STATE_GLOSS: dict[HostState, str] = {
    HostState.ACTIVE: "healthy and holding a lease; takes VMs",
    HostState.MAINTENANCE: "operator took it out of service; takes no VMs, is never fenced for being down",
    HostState.DRAINING: "its VMs are being live-migrated away before maintenance",
    HostState.SUSPECT: "its lease is gone; waiting fence_delay (and the storm guard) before fencing",
    HostState.FENCING: "fencing levels are being walked; nothing of its VMs moves yet",
    HostState.FENCED: "power confirmed off (or self-fence wait elapsed, or operator ack); safe to recover",
    HostState.RECOVERING: "its HA VMs are being placed and started elsewhere",
    HostState.FAILED: "recovery done; stays out of service until an operator returns it",
}


class VmState(str, Enum):
    """libvirt-independent VM run state."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


@dataclass(frozen=True)
class HostCell:
    """One NUMA cell of a host as libvirt reports it (the placement engine's own cell, with
    capacity to bind, is ``policies.NumaCell``)."""

    id: int
    cpus: tuple[int, ...]
    memory_mib: int
    free_mib: int | None = None
    # page size in KiB -> (total pages, free pages)
    hugepages: dict[int, tuple[int, int]] = field(default_factory=dict)


def water_fill(free: list[float], amount: float) -> list[float]:
    """How much of ``amount`` each cell gives when memory is taken where most is free.

    The freest cells are drawn down to a common level, as the kernel's unbound allocations end up
    around memory bound to cells; what exceeds all the free memory is shared evenly. The result
    depends only on the total, so taking two amounts in turn equals taking their sum.
    """
    n = len(free)
    if n == 0 or amount <= 0:
        return [0.0] * n
    avail = [max(f, 0.0) for f in free]
    total = sum(avail)
    if amount >= total:
        extra = (amount - total) / n
        return [a + extra for a in avail]
    order = sorted(avail, reverse=True)
    level, taken = order[0], 0.0
    for i in range(1, n + 1):
        nxt = order[i] if i < n else 0.0
        step = (level - nxt) * i
        if taken + step >= amount:
            level -= (amount - taken) / i
            break
        taken += step
        level = nxt
    return [max(a - level, 0.0) for a in avail]
