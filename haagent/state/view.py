"""What the manager and agent steps see and emit: plain frozen data, no I/O.

The shells build a ``ClusterView`` from etcd (a watch-fed cache) and turn the emitted actions
into guarded etcd writes, fence calls and libvirt calls; the simulator does the same with its
models. Times are seconds on the caller's clock (monotonic in production, virtual in the sim).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from haagent.model import HostCell, HostState


@dataclass(frozen=True)
class VmSpec:
    """An HA VM as registered in ``vms/<uuid>/spec``."""

    uuid: str
    name: str
    vcpus: int = 1
    memory_mib: int = 64
    priority: int | None = None  # None: the naming convention (or 0) decides
    policy: str = "restart"  # restart | migrate | none
    xml: str = ""
    groups: tuple[str, ...] = ()
    # What placement must honour, from the domain XML (haagent/hypervisor/requirements.py).
    needs: "VmNeeds" = field(default_factory=lambda: VmNeeds())
    # Its own [migration] tuning (the HA mark's ``migration`` attribute), sorted (key, value) pairs.
    migration: tuple[tuple[str, Any], ...] = ()
    # The sources of its disks outside the cluster's shared storage, as the agent that registered
    # it judged them ([agent] shared_paths): such a VM never live-migrates (docs/design.md).
    local_disks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {"uuid": self.uuid, "name": self.name, "vcpus": self.vcpus, "memory_mib": self.memory_mib,
             "priority": self.priority, "policy": self.policy, "xml": self.xml, "groups": list(self.groups)}
        if self.needs != VmNeeds():
            d["needs"] = self.needs.to_dict()
        if self.migration:
            d["migration"] = dict(self.migration)
        if self.local_disks:
            d["local_disks"] = list(self.local_disks)
        return d


@dataclass(frozen=True)
class VmNeeds:
    """A VM's placement requirements beyond vcpus and memory, as its domain XML states them.

    ``numa``: none | preferred | strict; ``nodeset``: the host NUMA cells its memory may come
    from (empty: any); ``dedicated_cpus``: vcpus pinned to host cpus (never overcommitted);
    ``max_pinned_cpu``: the highest host cpu id it pins (-1: none), which the target must have;
    ``hugepage_size_kib``/``hugepage_count``: hugepage backing; ``cpu_mode``/``cpu_model``: the
    <cpu> element (a custom model must be usable on the target); ``unplaceable``: a requirement
    the parser does not understand, so the VM is placed nowhere rather than wrongly.
    """

    numa: str = "none"
    nodeset: tuple[int, ...] = ()
    dedicated_cpus: int = 0
    max_pinned_cpu: int = -1
    hugepage_size_kib: int | None = None
    hugepage_count: int = 0
    cpu_mode: str = ""
    cpu_model: str = ""
    unplaceable: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"numa": self.numa, "nodeset": list(self.nodeset), "dedicated_cpus": self.dedicated_cpus,
                "max_pinned_cpu": self.max_pinned_cpu, "hugepage_size_kib": self.hugepage_size_kib,
                "hugepage_count": self.hugepage_count, "cpu_mode": self.cpu_mode, "cpu_model": self.cpu_model,
                "unplaceable": self.unplaceable}


@dataclass(frozen=True)
class HostView:
    name: str
    alive: bool
    state: HostState | None  # None: the leader has never written one
    cpus: int = 0
    memory_mib: int = 0
    running: frozenset[str] = frozenset()  # uuids its last report says run there
    failover: str = ""  # the open failover (op id) its state record names, from suspect on
    granted_rev: int = 0  # store revision of its latest lease grant (hosts/<h>/lease), 0 unknown
    stopped: str = ""  # its agent stopped cleanly while holding its lease: "stopped:<lease id>", else ""
    # Seconds after losing its lease by which the host has reset itself (its armed watchdog), as
    # the host itself reported during its current lease; None: it does not self-fence.
    self_fence: float | None = None
    state_bad: bool = False  # its state record exists but cannot be read
    # Its inventory and smoothed load, from its report (haagent/agent/inventory.py).
    numa: tuple[HostCell, ...] = ()
    tags: frozenset[str] = frozenset()
    cpu_model: str = ""
    cpu_key: str = ""  # migration compatibility key
    cpu_models: frozenset[str] | None = None  # custom CPU models usable here (None: not reported)
    cpu_used: float | None = None  # cores, smoothed
    memory_used_mib: float | None = None
    vm_cpu: Mapping[str, float] = field(default_factory=dict)  # uuid -> cores, smoothed
    inventory_error: str = ""  # the hypervisor could not be read (or its record part is malformed)
    # The outcomes of the migrations this host ran as a source, by VM (its own records).
    migration_outcomes: Mapping[str, "MigrationReport"] = field(default_factory=dict)
    # Running domains without the HA mark, by uuid, as its report lists them (name, vcpus and
    # memory only; policy "migrate"): what ``host drain --all`` may live-migrate.
    unmanaged: Mapping[str, VmSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class Migration:
    """``vms/<uuid>/migration``: a live migration the leader ordered (the source agent runs it).

    ``deadline`` is how many seconds the source may spend on it (a duration, not a clock
    reading: the source times it on its own monotonic clock); ``op`` and ``attempt`` name it, so
    an outcome is matched to the order it answers. ``options`` is the libvirt tuning the leader
    resolved for it (``MigrationSection.tuning``): the source applies exactly that. ``mode`` is
    "live", or for a cold move (``--cold-ok``) "cold" (the source shuts the VM down) and then
    "cold-start" (the target starts it, once no host runs it).
    """

    vm: str
    source: str
    dest: str
    epoch: int
    deadline: float = 0.0
    op: str = ""
    attempt: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    mode: str = "live"


@dataclass(frozen=True)
class MigrationReport:
    """``hosts/<h>/migration/<uuid>``: what the source agent's last migration of a VM did."""

    vm: str
    source: str
    dest: str
    op: str
    attempt: int
    outcome: str  # running (progress, not an outcome yet) | completed | failed | aborted-deadline | aborted-request
    location: str  # source | destination | both | none | unknown (the hypervisor's answer)
    error: str = ""
    duration_s: float = 0.0
    downtime_ms: int | None = None
    data_total: int | None = None
    at: float = 0.0  # the agent's wall clock, for display
    # While ``outcome`` is "running": libvirt's job info, as the source last wrote it (bytes).
    data_processed: int | None = None
    data_remaining: int | None = None
    dirty_rate: int | None = None  # bytes/s the guest dirties memory (libvirt's memory_dirty_rate)


@dataclass(frozen=True)
class Request:
    """An operator or agent request: fence_ack, host_return, relocate."""

    id: str
    kind: str
    host: str = ""
    vm: str = ""
    failover: str = ""  # fence_ack: the failover (op id) the operator acknowledged
    options: Mapping[str, Any] = field(default_factory=dict)  # drain/undrain/migrate flags


@dataclass(frozen=True)
class OpStep:
    step: str  # intent, fence_start, fence, inconsistent, fenced, place, start, done
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)
    rev: int = 0  # store revision the step was written at (0: not yet written)


@dataclass(frozen=True)
class Op:
    """A journaled operation (failover, drain, migrate, return, rebalance): intent first, then each
    step; a new leader resumes from it."""

    id: str
    kind: str
    host: str
    epoch: int
    steps: tuple[OpStep, ...] = ()
    rev: int = 0  # store revision of its head (when it was opened)

    def has(self, step: str) -> bool:
        return any(s.step == step for s in self.steps)

    def last(self, step: str) -> OpStep | None:
        for s in reversed(self.steps):
            if s.step == step:
                return s
        return None

    @property
    def finished(self) -> bool:
        return self.has("done")


@dataclass(frozen=True)
class ClusterView:
    """Everything the leader's step decides from, at one store revision."""

    epoch: int
    hosts: Mapping[str, HostView]
    specs: Mapping[str, VmSpec]
    placements: Mapping[str, str]  # uuid -> host
    ops: Mapping[str, Op] = field(default_factory=dict)
    migrations: Mapping[str, Migration] = field(default_factory=dict)
    requests: tuple[Request, ...] = ()
    bad_records: tuple[tuple[str, str], ...] = ()  # (key, why) of records that cannot be read
    storm_hold: tuple[str, ...] = ()  # hosts the leader's storm record names as held (storm_hold key)
    storm_since: float = 0.0  # when that hold began (wall clock, for display)
    # Derived from hosts, specs and placements (``index``): kept by an incrementally updated view,
    # computed on first use otherwise. Not part of the view's value.
    derived: "ViewIndex | None" = field(default=None, compare=False, repr=False)

    @property
    def index(self) -> "ViewIndex":
        """Where each VM is reported and placed, without walking every VM (see ``ViewIndex``)."""
        found = self.derived
        if found is None or not found.fits(self):
            found = ViewIndex.of(self)
            object.__setattr__(self, "derived", found)  # a cache of what the frozen fields say
        return found


class ViewIndex:
    """What a leader's step asks of every VM, indexed so that it need not walk them all:

    * ``reported``: uuid -> the hosts whose report lists it running, sorted by name;
    * ``placed``: host -> the uuids placed on it;
    * ``odd``: the VMs with a spec whose reports do not simply agree with their placement: listed
      by two or more hosts, or by one host it is not placed on (unplaced ones included).

    It belongs to the ``hosts``, ``specs`` and ``placements`` mappings it was made from (``fits``):
    a view with any of them replaced computes its own.
    """

    __slots__ = ("hosts", "specs", "placements", "reported", "placed", "odd")

    def __init__(self, hosts: Mapping[str, HostView], specs: Mapping[str, VmSpec], placements: Mapping[str, str],
                 reported: Mapping[str, tuple[str, ...]], placed: Mapping[str, frozenset[str]], odd: frozenset[str]):
        self.hosts, self.specs, self.placements = hosts, specs, placements
        self.reported, self.placed, self.odd = reported, placed, odd

    def fits(self, view: ClusterView) -> bool:
        return self.hosts is view.hosts and self.specs is view.specs and self.placements is view.placements

    @staticmethod
    def odd_one(uuid: str, specs: Mapping[str, VmSpec], placements: Mapping[str, str],
                reported: Mapping[str, tuple[str, ...]]) -> bool:
        where = reported.get(uuid, ())
        return uuid in specs and (len(where) > 1 or (len(where) == 1 and placements.get(uuid) != where[0]))

    @classmethod
    def of(cls, view: ClusterView) -> "ViewIndex":
        reported: dict[str, tuple[str, ...]] = {}
        for name in sorted(view.hosts):
            for uuid in view.hosts[name].running:
                reported[uuid] = reported.get(uuid, ()) + (name,)
        placed: dict[str, set[str]] = {}
        for uuid, host in view.placements.items():
            placed.setdefault(host, set()).add(uuid)
        odd = frozenset(u for u in reported if cls.odd_one(u, view.specs, view.placements, reported))
        return cls(view.hosts, view.specs, view.placements, reported,
                   {h: frozenset(us) for h, us in placed.items()}, odd)


# -- actions the manager step emits ------------------------------------------------------------


@dataclass(frozen=True)
class SetHostState:
    host: str
    old: HostState | None
    new: HostState
    reason: str
    failover: str = ""  # the open failover, kept in the state record until the host is active


@dataclass(frozen=True)
class JournalStep:
    """Append a step to ``ops/<op>`` (creating the op on ``intent``)."""

    op: str
    host: str
    step: OpStep
    kind: str = "failover"  # the op's kind, written in its head on ``intent``


@dataclass(frozen=True)
class FenceHost:
    """Run the host's fencing levels; the shell journals the outcome as a ``fence`` step."""

    host: str
    op: str
    attempt: int = 0  # matches the fence_start journal step written (guarded) before dispatch


@dataclass(frozen=True)
class SetPlacement:
    vm: str
    host: str
    op: str
    reason: str


@dataclass(frozen=True)
class ClearMigration:
    vm: str


@dataclass(frozen=True)
class StartMigration:
    """Write ``vms/<uuid>/migration``: the source agent migrates the VM to ``dest``."""

    vm: str
    source: str
    dest: str
    deadline: float
    op: str
    attempt: int
    options: tuple[tuple[str, Any], ...] = ()  # the effective libvirt tuning (MigrationSection.tuning)
    mode: str = "live"  # live | cold | cold-start (Migration.mode)


@dataclass(frozen=True)
class ConsumeRequest:
    id: str


@dataclass(frozen=True)
class ForgetVm:
    """An operator unmanaged this VM: its spec, placement and any migration record go."""

    vm: str


@dataclass(frozen=True)
class DeleteOp:
    """Forget a finished operation's journal (its timeline went out as events already)."""

    op: str


@dataclass(frozen=True)
class Alert:
    """A condition a human must look at; raised as a metric and an event until it clears."""

    name: str
    host: str = ""
    vm: str = ""
    message: str = ""


@dataclass(frozen=True)
class Event:
    kind: str
    host: str = ""
    vm: str = ""
    op: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadPower:
    """Read a lost host's fence devices (status only, never a power command): evidence for the
    storm guard. Answered by a ``PowerRead`` the shell feeds back to the step."""

    host: str
    failover: str  # the loss it is asked for: an answer about another loss counts for nothing
    granted_rev: int


@dataclass(frozen=True)
class PowerRead:
    """The answer to a ``ReadPower``: ``power`` is "off" only when every device of one level said
    off; "on" when a device said on; "unknown" otherwise (no answer, errors, garbage)."""

    host: str
    failover: str
    granted_rev: int
    power: str
    detail: str = ""


@dataclass(frozen=True)
class SetStormHold:
    """Write the storm record (the held hosts, for ``haagent status``); delete it when empty."""

    hosts: tuple[str, ...]


ManagerAction = (SetHostState | JournalStep | FenceHost | SetPlacement | ClearMigration | ConsumeRequest | DeleteOp
                 | ForgetVm | ReadPower | SetStormHold | StartMigration
                 | Alert | Event)
