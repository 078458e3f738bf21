"""Shared value types and the host state table.

Types here are plain frozen data with no behaviour beyond (de)serialisation, so the store, the
manager, the agent and the simulator can pass them around without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


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
class NumaCell:
    id: int
    cpus: tuple[int, ...]
    memory_mib: int
    free_mib: int | None = None
    # page size in KiB -> (total pages, free pages)
    hugepages: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class HostReport:
    """What an agent publishes about its host at ``hosts/<h>/report`` (only when it changes)."""

    host: str
    cpus: int = 0
    memory_mib: int = 0
    cpu_model: str = ""
    numa: tuple[NumaCell, ...] = ()
    load: float = 0.0
    memory_used_mib: int = 0
    running_vms: tuple[str, ...] = ()  # uuids
    health: dict[str, str] = field(default_factory=dict)
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HostReport":
        d = dict(d)
        d["numa"] = tuple(NumaCell(**{**c, "cpus": tuple(c.get("cpus", ())),
                                      "hugepages": {int(k): tuple(v) for k, v in c.get("hugepages", {}).items()}})
                          for c in d.get("numa", ()))
        d["running_vms"] = tuple(d.get("running_vms", ()))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})
