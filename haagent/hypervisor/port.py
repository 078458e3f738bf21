"""The ``Hypervisor`` port: what the agent may ask of one host's hypervisor, and its value types.

Two implementations honour it and pass one contract suite: ``LibvirtHypervisor`` (libvirt-python)
and ``FakeHypervisor`` (in memory, for the simulator). VMs are named by uuid or name everywhere.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from haagent.errors import HaagentError
from haagent.hypervisor.options import MigrationOptions
from haagent.model import HostCell, VmState

# -- host inventory ----------------------------------------------------------------------------


def cpu_migration_key(arch: str, vendor: str, model: str, features: tuple[str, ...] | list[str]) -> str:
    """A short stable string, equal for hosts whose libvirt reports the same host CPU.

    ``arch:vendor:model:hash`` where hash is 8 hex digits of SHA-256 over the sorted, unique
    feature names of the host capabilities' ``<cpu>`` (what libvirt's host-model expands to).
    Equal keys: a VM with a host-model (or no) CPU definition can live-migrate between the hosts
    both ways. Different keys do not prove the opposite: a VM with a custom model needs only
    that model to be usable on the destination. See docs/hypervisor.md.
    """
    digest = hashlib.sha256(",".join(sorted(set(features))).encode()).hexdigest()[:8]
    return f"{arch}:{vendor}:{model}:{digest}"


@dataclass(frozen=True)
class HostInfo:
    """CPU topology, NUMA cells and CPU model of one hypervisor host."""

    hostname: str
    uuid: str
    arch: str
    cpu_model: str  # e.g. "EPYC-Rome"; "" when the driver does not say
    cpu_vendor: str
    cpu_features: tuple[str, ...]
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    cpus: int
    memory_mib: int
    numa: tuple[HostCell, ...]
    page_sizes_kib: tuple[int, ...] = ()
    # The <cpu> element of the host capabilities, for libvirt's own compareCPU checks.
    cpu_xml: str = field(default="", repr=False)
    # cpu_migration_key(arch, vendor, model, features) unless given: one rule for every host.
    migration_key: str = ""
    # domain type ("kvm", "qemu") -> CPU models a custom <cpu> may name here (usable, sorted);
    # a type the host cannot run is absent.
    cpu_models: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.migration_key:
            object.__setattr__(self, "migration_key", cpu_migration_key(
                self.arch, self.cpu_vendor, self.cpu_model, self.cpu_features))


# -- domain inventory --------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskInfo:
    """One disk of a domain and whether its storage is shared between hosts."""

    target: str  # vda, sdb ...
    device: str  # disk, cdrom, lun
    source: str  # file path, block device, "proto:name" for network disks; "" when empty
    source_type: str  # file, block, network, volume
    shared: bool
    readonly: bool = False


@dataclass(frozen=True)
class NumaTuning:
    """A domain's <numatune>, guest NUMA cells and pinning."""

    mode: str = ""  # strict, preferred, interleave, restrictive; "" = none
    nodeset: tuple[int, ...] = ()
    # guest cell id -> host nodeset (<memnode>)
    memnodes: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # guest cell id -> (vcpus, memory MiB) (<cpu><numa><cell>)
    guest_cells: dict[int, tuple[tuple[int, ...], int]] = field(default_factory=dict)
    # vcpu -> host cpus (<vcpupin>)
    vcpu_pins: dict[int, tuple[int, ...]] = field(default_factory=dict)
    emulator_pin: tuple[int, ...] = ()


@dataclass(frozen=True)
class VmInfo:
    """Inventory of one domain, as defined and as running."""

    uuid: str
    name: str
    state: VmState
    reason: str  # libvirt's state reason, e.g. "booted", "destroyed", "crashed", "migrated"
    vcpus: int
    memory_mib: int
    max_memory_mib: int
    numa: NumaTuning
    hugepages_kib: tuple[int, ...]  # page sizes backing guest memory; () = normal pages
    disks: tuple[DiskInfo, ...]
    persistent: bool
    autostart: bool
    xml: str = field(default="", repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.state in (VmState.RUNNING, VmState.PAUSED)

    @property
    def all_disks_shared(self) -> bool:
        return all(d.shared for d in self.disks if d.source)


# -- stats -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawVmCounters:
    """Cumulative counters of one VM at one instant (usage comes from deltas of two of these)."""

    uuid: str
    name: str
    active: bool
    cpu_time_ns: int
    memory_used_kib: int  # resident set when known, else the balloon's current size


@dataclass(frozen=True)
class RawStats:
    """One reading of cumulative host and VM counters; ``at`` is monotonic seconds."""

    at: float
    host_cpu_busy_ns: int
    host_cpu_total_ns: int
    host_cpus: int
    host_memory_total_kib: int
    host_memory_free_kib: int
    vms: tuple[RawVmCounters, ...]


@dataclass(frozen=True)
class VmUsage:
    uuid: str
    name: str
    cpu_percent: float | None  # of one host CPU; None until two samples exist
    memory_used_mib: float


@dataclass(frozen=True)
class StatsSample:
    """Usage derived from two readings: host load (0..1 of all CPUs) and per-VM usage."""

    at: float
    interval_s: float | None
    host_load: float | None
    host_memory_free_mib: float
    host_memory_total_mib: float
    vms: dict[str, VmUsage]  # by uuid
    error: str | None = None  # set when the last reading failed; figures are from the one before


# -- events ------------------------------------------------------------------------------------


class EventKind(str, Enum):
    """What happened to a VM, or to our connection to the hypervisor."""

    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    SHUTDOWN = "shutdown"  # the guest finished shutting down (before it stops)
    STOPPED = "stopped"  # destroyed, shut off, saved
    CRASHED = "crashed"  # QEMU died, or the guest panicked
    MIGRATED = "migrated"  # reason says migrated-in or migrated-out
    CONNECTION_LOST = "connection-lost"  # no events until RECONNECTED; resync after it
    RECONNECTED = "reconnected"


@dataclass(frozen=True)
class VmEvent:
    kind: EventKind
    uuid: str | None
    name: str | None
    reason: str
    at: float  # monotonic seconds when received


EventCallback = Callable[[VmEvent], None]


class Subscription:
    """Handle to an event subscription; ``cancel()`` stops delivery."""

    def __init__(self, cancel: Callable[[], None]):
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel()


# -- actions -----------------------------------------------------------------------------------


class ShutdownOutcome(str, Enum):
    GRACEFUL = "graceful"  # the guest shut down within the timeout
    DESTROYED = "destroyed"  # it did not; we pulled the plug
    ALREADY_OFF = "already-off"


# -- migration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationTarget:
    """Where to migrate to, as two URIs that may differ.

    ``uri`` is the destination as the *source* libvirtd resolves it in peer-to-peer mode (e.g.
    ``qemu+tcp://10.0.0.2/system``). ``client_uri`` is how *this process* reaches the destination
    to check where the VM runs and to drive a non-p2p migration (a unix socket in the lab);
    it defaults to ``uri``.
    """

    uri: str
    client_uri: str | None = None

    @property
    def check_uri(self) -> str:
        return self.client_uri or self.uri


class Location(str, Enum):
    """Where a VM is active after a migration attempt."""

    SOURCE = "source"
    DESTINATION = "destination"
    BOTH = "both"  # never acceptable: stop and alert for a human
    NONE = "none"
    UNKNOWN = "unknown"  # one side could not be asked (unreachable within the check timeout)

    @classmethod
    def from_sides(cls, on_source: bool | None, on_dest: bool | None) -> "Location":
        if on_source and on_dest:
            return cls.BOTH
        if on_source is None or on_dest is None:
            # One side is known active: that is a fact even if the other cannot be asked, but
            # "only there" is not, so the answer stays UNKNOWN unless the other side answered.
            return cls.UNKNOWN
        if on_source:
            return cls.SOURCE
        if on_dest:
            return cls.DESTINATION
        return cls.NONE


class MigrationOutcome(str, Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED_DEADLINE = "aborted-deadline"
    ABORTED_REQUEST = "aborted-request"


@dataclass(frozen=True)
class MigrationProgress:
    """One jobStats reading during a migration (bytes; downtime in ms)."""

    elapsed_s: float
    data_total: int
    data_processed: int
    data_remaining: int
    memory_iteration: int = 0
    downtime_ms: int | None = None  # expected downtime while running, actual when completed
    postcopy: bool = False
    dirty_rate: int | None = None  # bytes/s the guest dirties (libvirt's memory_dirty_rate x page size)


@dataclass(frozen=True)
class MigrationResult:
    """What a migration did, how long it took, and where the VM runs afterwards."""

    vm: str  # uuid
    outcome: MigrationOutcome
    location: Location
    duration_s: float
    downtime_ms: int | None
    data_total: int | None
    on_source: bool | None
    on_destination: bool | None
    defined_on_source: bool | None
    defined_on_destination: bool | None
    error: HaagentError | None = None
    last_progress: MigrationProgress | None = None
    # The libvirt call had not returned when we gave up waiting (e.g. stuck connecting to a
    # cut-off peer); the job was aborted, so it cannot complete later.
    call_abandoned: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is MigrationOutcome.COMPLETED

    def raise_for_error(self) -> "MigrationResult":
        if self.error is not None:
            raise self.error
        return self


class MigrationControl:
    """A handle the caller keeps to abort a running migration, or switch it to post-copy."""

    def __init__(self) -> None:
        self._abort = threading.Event()
        self._postcopy = threading.Event()

    def abort(self) -> None:
        self._abort.set()

    def switch_to_postcopy(self) -> None:
        self._postcopy.set()

    @property
    def abort_requested(self) -> bool:
        return self._abort.is_set()

    @property
    def postcopy_requested(self) -> bool:
        return self._postcopy.is_set()


ProgressCallback = Callable[[MigrationProgress], None]


# -- the port ----------------------------------------------------------------------------------


class Hypervisor(ABC):
    """One host's hypervisor. Every method may raise ``haagent.errors.HypervisorError``."""

    uri: str

    # inventory
    @abstractmethod
    def host_info(self) -> HostInfo:
        """CPU topology, NUMA cells with free memory and hugepages, CPU model."""

    @abstractmethod
    def list_vms(self) -> list[VmInfo]:
        """Every domain, defined or running, sorted by name."""

    @abstractmethod
    def vm_info(self, vm: str) -> VmInfo:
        """One domain by uuid or name; raises VmNotFound."""

    @abstractmethod
    def vm_xml(self, vm: str, migratable: bool = False) -> str:
        """The full domain XML (``migratable`` strips host-specific parts)."""

    # stats
    @abstractmethod
    def raw_stats(self) -> RawStats:
        """One reading of cumulative counters; blocking: the agent calls it from its inventory thread (haagent.agent.collector)."""

    # events
    @abstractmethod
    def subscribe(self, callback: EventCallback) -> Subscription:
        """Deliver every VmEvent to ``callback`` on one dispatch thread, in order."""

    # actions
    @abstractmethod
    def define(self, xml: str, autostart: bool = False) -> VmInfo:
        """Define (or redefine) a persistent domain; autostart stays off unless asked."""

    @abstractmethod
    def start(self, vm: str) -> VmInfo:
        """Start a defined domain; starting a running one is a no-op."""

    def define_and_start(self, xml: str) -> VmInfo:
        """Define from XML with autostart off, then start."""
        info = self.define(xml, autostart=False)
        return self.start(info.uuid)

    @abstractmethod
    def shutdown(self, vm: str, timeout: float) -> ShutdownOutcome:
        """Ask the guest to shut down; destroy it if it is still running after ``timeout`` s."""

    @abstractmethod
    def destroy(self, vm: str) -> None:
        """Stop the domain at once (pull the plug); destroying a stopped one is a no-op."""

    @abstractmethod
    def undefine(self, vm: str) -> None:
        """Remove the domain's persistent definition (a running domain becomes transient)."""

    @abstractmethod
    def set_autostart(self, vm: str, enabled: bool) -> None:
        """Turn libvirt autostart on or off."""

    @abstractmethod
    def set_metadata(self, vm: str, namespace: str, prefix: str, element: str | None) -> None:
        """Set (or with None remove) a custom ``<metadata>`` element, live and in the config."""

    # migration
    @abstractmethod
    def migrate(self, vm: str, dest: MigrationTarget, options: MigrationOptions,
                progress: ProgressCallback | None = None, deadline: float = 120.0,
                control: MigrationControl | None = None) -> MigrationResult:
        """Live-migrate ``vm`` to ``dest`` within ``deadline`` seconds from now.

        Raises VmNotFound or InvalidDomain before anything moves; every failure after that is in
        the returned result, which states where the VM actually runs.
        """

    @abstractmethod
    def close(self) -> None:
        """Stop threads and close connections."""

