"""``FakeHypervisor``: an in-memory hypervisor with the same contract as libvirt, for the simulator.

Deterministic: no threads, no wall clock (time comes from the ``clock`` port, waiting from the
optional ``sleep`` port, so a virtual clock drives it), events delivered synchronously, in order,
to subscribers. Hosts share a ``FakeCluster``: the network between them (migration, partitions)
and the faults a test injects (QEMU killed, daemon restarted, guest ignoring shutdown).
"""

from __future__ import annotations

import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Callable

from haagent.errors import (HypervisorError, HypervisorUnavailable, InvalidDomain,
                            MigrationAborted, MigrationUnsafe, NoRouteToHost, OperationInvalid,
                            VmNotFound)
from haagent.hypervisor.options import MigrationOptions
from haagent.hypervisor.port import (EventCallback, EventKind, HostInfo, Hypervisor, Location,
                                     MigrationControl, MigrationOutcome, MigrationProgress,
                                     MigrationResult, MigrationTarget, ProgressCallback,
                                     RawStats, RawVmCounters, ShutdownOutcome, Subscription,
                                     VmEvent, VmInfo)
from haagent.hypervisor.xmlparse import DomainSpec, parse_domain
from haagent.model import HostCell, VmState, water_fill

_NS = uuidlib.UUID("6b1f2a52-0e4f-4a53-9a43-3c1d5a1e7f10")


@dataclass
class _Vm:
    uuid: str
    name: str
    xml: str
    spec: DomainSpec
    state: VmState = VmState.SHUTOFF
    reason: str = "unknown"
    persistent: bool = True
    autostart: bool = False
    cpu_load: float = 2.0  # percent of one host CPU while running
    cpu_time_ns: float = 0.0
    since: float = 0.0  # clock reading when cpu_time_ns was last brought up to date
    ignores_shutdown: bool = False


@dataclass
class FakeCluster:
    """The world fake hosts share: a registry by URI, the link speed, and fault injection."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] | None = None
    link_mib_s: float = 1000.0
    hosts: dict[str, "FakeHypervisor"] = field(default_factory=dict)
    partitioned: set[str] = field(default_factory=set)

    def add_host(self, uri: str, **kw: object) -> "FakeHypervisor":
        return FakeHypervisor(uri, cluster=self, **kw)  # type: ignore[arg-type]

    def partition(self, uri: str) -> None:
        """Cut the host off the network: migrations to or from it hang until aborted."""
        self.partitioned.add(uri)

    def heal(self, uri: str) -> None:
        self.partitioned.discard(uri)

    def kill_qemu(self, uri: str, vm: str) -> None:
        """What SIGKILL of a VM's QEMU does: the VM stops, reason failed, a CRASHED event."""
        hv = self.hosts[uri]
        v = hv._find(vm)
        hv._set_state(v, VmState.SHUTOFF, "failed", EventKind.CRASHED, "qemu-died")
        if not v.persistent:
            hv._remove(v)

    def power_off(self, uri: str) -> None:
        """The host loses power: every QEMU dies at once and nobody hears of it (libvirtd died
        too). The definitions stay, as libvirt keeps them on disk."""
        hv = self.hosts[uri]
        for v in list(hv._vms.values()):
            if v.state in (VmState.RUNNING, VmState.PAUSED):
                hv._set_state(v, VmState.SHUTOFF, "destroyed", None, "")

    def restart_daemon(self, uri: str) -> None:
        """libvirtd restarts: the connection drops, comes back, and events flow again."""
        hv = self.hosts[uri]
        hv._up = False
        hv._emit(VmEvent(EventKind.CONNECTION_LOST, None, None, "eof", self.clock()))
        hv._up = True
        hv._emit(VmEvent(EventKind.RECONNECTED, None, None, "reconnected", self.clock()))

    def qemus(self, uri: str) -> frozenset[str]:
        """The uuids whose QEMU runs on the host, whether or not its libvirtd answers (an oracle
        for tests and the simulator's invariants, not part of the Hypervisor port)."""
        return frozenset(v.uuid for v in self.hosts[uri]._vms.values()
                         if v.state in (VmState.RUNNING, VmState.PAUSED))

    def set_daemon_up(self, uri: str, up: bool) -> None:
        hv = self.hosts[uri]
        if hv._up == up:
            return
        hv._up = up
        kind, why = (EventKind.RECONNECTED, "reconnected") if up else (EventKind.CONNECTION_LOST, "eof")
        hv._emit(VmEvent(kind, None, None, why, self.clock()))

    def ignore_shutdown(self, uri: str, vm: str, ignore: bool = True) -> None:
        """The guest ignores ACPI shutdown requests (no OS, hung guest)."""
        self.hosts[uri]._find(vm).ignores_shutdown = ignore

    def set_vm_load(self, uri: str, vm: str, cpu_percent: float) -> None:
        hv = self.hosts[uri]
        v = hv._find(vm)
        hv._account(v)
        v.cpu_load = cpu_percent


def default_cells(cells: int = 2, cpus_per_cell: int = 4, memory_mib_per_cell: int = 8192,
                  hugepages_2m_per_cell: int = 0) -> tuple[HostCell, ...]:
    huge = {2048: (hugepages_2m_per_cell, hugepages_2m_per_cell)} if hugepages_2m_per_cell else {}
    return tuple(HostCell(id=i, cpus=tuple(range(i * cpus_per_cell, (i + 1) * cpus_per_cell)),
                          memory_mib=memory_mib_per_cell, free_mib=memory_mib_per_cell,
                          hugepages=dict(huge)) for i in range(cells))


class FakeHypervisor(Hypervisor):
    """One simulated host. All calls are synchronous; faults come from its ``FakeCluster``."""

    def __init__(self, uri: str, *, cluster: FakeCluster | None = None, hostname: str | None = None,
                 numa: tuple[HostCell, ...] | None = None, cpu_model: str = "qemu64",
                 cpu_vendor: str = "AMD", cpu_features: tuple[str, ...] = (),
                 cpu_models: dict[str, tuple[str, ...]] | None = None,
                 shared_paths: tuple[str, ...] = ()):
        self.uri = uri
        self.cluster = cluster or FakeCluster()
        if uri in self.cluster.hosts:
            raise InvalidDomain(f"fake host {uri} already exists")
        self.cluster.hosts[uri] = self
        self.hostname = hostname or uri.rsplit("/", 1)[-1] or uri
        # The cells as the host would report them with no VM running: a cell's free_mib (None =
        # all of memory_mib) and hugepages {KiB: (total, free)}; running VMs are taken off both.
        # Public: a test changes them at any time, as other processes on a real host would.
        self.numa = numa or default_cells()
        self.cpu_model = cpu_model
        self.cpu_vendor = cpu_vendor
        # Default: its own model and qemu64 under both domain types, as a KVM host would say.
        own = tuple(sorted({cpu_model, "qemu64"}))
        self.cpu_models = dict(cpu_models) if cpu_models is not None else {"kvm": own, "qemu": own}
        self.cpu_features = tuple(sorted(cpu_features))
        self.shared_paths = tuple(shared_paths)
        self._vms: dict[str, _Vm] = {}
        self._subs: list[EventCallback] = []
        self._up = True
        self._closed = False
        # Every migrate() call: (uuid, destination URI, the options libvirt was given)
        self.migration_calls: list[tuple[str, str, MigrationOptions]] = []

    # -- internals ---------------------------------------------------------------------------

    def _now(self) -> float:
        return self.cluster.clock()

    def _check_up(self) -> None:
        if self._closed or not self._up:
            raise HypervisorUnavailable(f"not connected to {self.uri}")

    def _find(self, vm: str) -> _Vm:
        if not isinstance(vm, str) or not vm:
            raise InvalidDomain(f"a VM is named by a non-empty uuid or name, got {vm!r}")
        v = self._vms.get(vm.lower()) or next((x for x in self._vms.values() if x.name == vm), None)
        if v is None:
            raise VmNotFound(f"look up {vm}: Domain not found")
        return v

    def _emit(self, ev: VmEvent) -> None:
        for cb in list(self._subs):
            cb(ev)

    def _account(self, v: _Vm) -> None:
        now = self._now()
        if v.state is VmState.RUNNING:
            v.cpu_time_ns += (now - v.since) * 1e9 * v.cpu_load / 100.0
        v.since = now

    def _set_state(self, v: _Vm, state: VmState, reason: str, kind: EventKind | None,
                   event_reason: str) -> None:
        self._account(v)
        v.state, v.reason = state, reason
        if kind is not None:
            self._emit(VmEvent(kind, v.uuid, v.name, event_reason, self._now()))

    def _remove(self, v: _Vm) -> None:
        self._vms.pop(v.uuid, None)

    def _info(self, v: _Vm) -> VmInfo:
        s = v.spec
        return VmInfo(uuid=v.uuid, name=v.name, state=v.state, reason=v.reason, vcpus=s.vcpus,
                      memory_mib=s.memory_mib, max_memory_mib=s.max_memory_mib, numa=s.numa,
                      hugepages_kib=s.hugepages_kib, disks=s.disks, persistent=v.persistent,
                      autostart=v.autostart, xml=v.xml)

    # -- inventory ---------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        self._check_up()
        used = {c.id: 0.0 for c in self.numa}
        pages_used: dict[tuple[int, int], float] = {}
        unbound = 0.0  # memory of VMs not bound to cells: it goes where most is free (water_fill)
        for v in self._vms.values():
            if v.state not in (VmState.RUNNING, VmState.PAUSED):
                continue
            nodes = [n for n in (v.spec.numa.nodeset or tuple(used)) if n in used] or list(used)
            for n in nodes:
                if v.spec.hugepages_kib:
                    size = v.spec.hugepages_kib[0] or 2048
                    pages_used[(n, size)] = pages_used.get((n, size), 0) + \
                        v.spec.memory_mib * 1024 / size / len(nodes)
                elif v.spec.numa.nodeset:
                    used[n] += v.spec.memory_mib / len(nodes)
            if not v.spec.hugepages_kib and not v.spec.numa.nodeset:
                unbound += v.spec.memory_mib
        # Each cell's configured free memory is the starting point running VMs take from.
        base = {c.id: c.memory_mib if c.free_mib is None else c.free_mib for c in self.numa}
        ids = [c.id for c in self.numa]
        for cid, share in zip(ids, water_fill([base[c.id] - used[c.id] for c in self.numa], unbound)):
            used[cid] += share
        cells = tuple(replace(c, free_mib=max(int(base[c.id] - used[c.id]), 0),
                              hugepages={s: (t, max(int(f - pages_used.get((c.id, s), 0)), 0))
                                         for s, (t, f) in c.hugepages.items()})
                      for c in self.numa)
        cpus = sum(len(c.cpus) for c in self.numa)
        sizes = tuple(sorted({4, *(s for c in self.numa for s in c.hugepages)}))
        return HostInfo(hostname=self.hostname, uuid=str(uuidlib.uuid5(_NS, self.uri)),
                        arch="x86_64", cpu_model=self.cpu_model, cpu_vendor=self.cpu_vendor,
                        cpu_features=self.cpu_features, sockets=len(self.numa),
                        cores_per_socket=cpus // max(len(self.numa), 1), threads_per_core=1,
                        cpus=cpus, memory_mib=sum(c.memory_mib for c in self.numa),
                        numa=cells, page_sizes_kib=sizes, cpu_models=dict(self.cpu_models))

    def list_vms(self) -> list[VmInfo]:
        self._check_up()
        return sorted((self._info(v) for v in self._vms.values()), key=lambda i: i.name)

    def vm_info(self, vm: str) -> VmInfo:
        self._check_up()
        return self._info(self._find(vm))

    def vm_xml(self, vm: str, migratable: bool = False) -> str:
        self._check_up()
        return self._find(vm).xml

    # -- stats -------------------------------------------------------------------------------

    def raw_stats(self) -> RawStats:
        self._check_up()
        now = self._now()
        vms = []
        busy = 0.0
        for v in sorted(self._vms.values(), key=lambda x: x.name):
            self._account(v)
            busy += v.cpu_time_ns
            active = v.state in (VmState.RUNNING, VmState.PAUSED)
            vms.append(RawVmCounters(uuid=v.uuid, name=v.name, active=active,
                                     cpu_time_ns=int(v.cpu_time_ns),
                                     memory_used_kib=v.spec.memory_mib * 1024 if active else 0))
        info = self.host_info()
        total_mib = sum(c.memory_mib for c in info.numa)
        free_mib = sum(c.free_mib or 0 for c in info.numa)
        return RawStats(at=now, host_cpu_busy_ns=int(busy), host_cpu_total_ns=int(now * 1e9 * info.cpus),
                        host_cpus=info.cpus, host_memory_total_kib=total_mib * 1024,
                        host_memory_free_kib=free_mib * 1024, vms=tuple(vms))

    # -- events ------------------------------------------------------------------------------

    def subscribe(self, callback: EventCallback) -> Subscription:
        self._subs.append(callback)
        return Subscription(lambda: self._subs.remove(callback) if callback in self._subs else None)

    # -- actions -----------------------------------------------------------------------------

    def define(self, xml: str, autostart: bool = False) -> VmInfo:
        self._check_up()
        spec = parse_domain(xml, self.shared_paths)
        if spec.vcpus <= 0 or spec.memory_mib <= 0:
            raise InvalidDomain(f"define {spec.name}: vcpus and memory must be positive")
        uid = (spec.uuid or str(uuidlib.uuid5(_NS, spec.name))).lower()
        clash = next((v for v in self._vms.values() if v.name == spec.name and v.uuid != uid), None)
        if clash is not None:
            raise InvalidDomain(f"define {spec.name}: domain '{spec.name}' already exists with uuid {clash.uuid}")
        if not spec.uuid:
            root = ET.fromstring(xml)
            el = ET.SubElement(root, "uuid")
            el.text = uid
            xml = ET.tostring(root, encoding="unicode")
            spec = parse_domain(xml, self.shared_paths)
        v = self._vms.get(uid)
        if v is None:
            v = _Vm(uuid=uid, name=spec.name, xml=xml, spec=spec, since=self._now())
            self._vms[uid] = v
            reason = "added"
        else:
            v.xml, v.spec, reason = xml, spec, "updated"
        v.persistent, v.autostart = True, autostart
        self._emit(VmEvent(EventKind.DEFINED, v.uuid, v.name, reason, self._now()))
        return self._info(v)

    def start(self, vm: str) -> VmInfo:
        self._check_up()
        v = self._find(vm)
        if v.state not in (VmState.RUNNING, VmState.PAUSED):
            # libvirt checks <numatune> against the host's cells at start, not at define.
            have = {c.id for c in self.numa}
            wanted = set(v.spec.numa.nodeset).union(*v.spec.numa.memnodes.values())
            for node in sorted(wanted - have):
                raise InvalidDomain(f"start {vm}: unsupported configuration: NUMA node {node} is unavailable")
            self._set_state(v, VmState.RUNNING, "booted", EventKind.STARTED, "booted")
        return self._info(v)

    def shutdown(self, vm: str, timeout: float) -> ShutdownOutcome:
        self._check_up()
        v = self._find(vm)
        if v.state not in (VmState.RUNNING, VmState.PAUSED):
            return ShutdownOutcome.ALREADY_OFF
        if not v.ignores_shutdown:
            self._emit(VmEvent(EventKind.SHUTDOWN, v.uuid, v.name, "finished", self._now()))
            self._set_state(v, VmState.SHUTOFF, "shutdown", EventKind.STOPPED, "shutdown")
            if not v.persistent:
                self._remove(v)
            return ShutdownOutcome.GRACEFUL
        if self.cluster.sleep is not None:
            self.cluster.sleep(timeout)
        self.destroy(vm)
        return ShutdownOutcome.DESTROYED

    def destroy(self, vm: str) -> None:
        self._check_up()
        v = self._find(vm)
        if v.state in (VmState.RUNNING, VmState.PAUSED, VmState.CRASHED):
            self._set_state(v, VmState.SHUTOFF, "destroyed", EventKind.STOPPED, "destroyed")
            if not v.persistent:
                self._remove(v)

    def undefine(self, vm: str) -> None:
        self._check_up()
        v = self._find(vm)
        if not v.persistent:
            raise OperationInvalid(f"undefine {vm}: cannot undefine transient domain")
        if v.state in (VmState.RUNNING, VmState.PAUSED):
            v.persistent = False  # a running domain becomes transient, as in libvirt
        else:
            self._remove(v)
        self._emit(VmEvent(EventKind.UNDEFINED, v.uuid, v.name, "removed", self._now()))

    def set_autostart(self, vm: str, enabled: bool) -> None:
        self._check_up()
        v = self._find(vm)
        if not v.persistent:
            raise OperationInvalid(f"set autostart of {vm}: cannot set autostart for transient domain")
        v.autostart = enabled

    def set_metadata(self, vm: str, namespace: str, prefix: str, element: str | None) -> None:
        import xml.etree.ElementTree as ET

        self._check_up()
        v = self._find(vm)
        ET.register_namespace(prefix, namespace)
        root = ET.fromstring(v.xml)
        meta = root.find("metadata")
        if meta is None:
            meta = ET.SubElement(root, "metadata")
        for el in [e for e in meta if e.tag.startswith(f"{{{namespace}}}")]:
            meta.remove(el)
        if element is not None:
            el = ET.fromstring(element)
            el.tag = f"{{{namespace}}}{el.tag}"
            meta.append(el)
        v.xml = ET.tostring(root, encoding="unicode")

    # -- migration ---------------------------------------------------------------------------

    def _sides(self, uid: str, dest: MigrationTarget) -> tuple[bool | None, ...]:
        def side(hv: FakeHypervisor | None) -> tuple[bool | None, bool | None]:
            if hv is None or not hv._up:
                return None, None
            v = hv._vms.get(uid)
            if v is None:
                return False, False
            return v.state in (VmState.RUNNING, VmState.PAUSED), v.persistent

        s = side(self)
        d = side(self.cluster.hosts.get(dest.check_uri))
        return s[0], d[0], s[1], d[1]

    def migrate(self, vm: str, dest: MigrationTarget, options: MigrationOptions,
                progress: ProgressCallback | None = None, deadline: float = 120.0,
                control: MigrationControl | None = None) -> MigrationResult:
        if deadline <= 0:
            raise InvalidDomain(f"migration deadline must be positive, got {deadline}")
        self._check_up()
        v = self._find(vm)
        self.migration_calls.append((v.uuid, dest.uri, options))  # what libvirt was asked, for tests
        control = control or MigrationControl()
        if v.state not in (VmState.RUNNING, VmState.PAUSED) and not options.offline:
            raise OperationInvalid(f"migrate {vm}: domain is not running")
        if self.cluster.hosts.get(dest.uri) is self or self.cluster.hosts.get(dest.check_uri) is self:
            raise InvalidDomain(f"migrate {vm}: Attempt to migrate guest to the same host")
        reserve = min(3.0, 0.3 * deadline)  # the same budget split as the libvirt adapter
        abort_at = deadline - reserve
        target = self.cluster.hosts.get(dest.uri)
        total = v.spec.memory_mib * 2**20
        speed = min(float(options.bandwidth or self.cluster.link_mib_s), self.cluster.link_mib_s)
        needed = 0.05 + v.spec.memory_mib / speed  # setup, then one pass over memory
        last: MigrationProgress | None = None
        err: HypervisorError | None = None
        elapsed = 0.0
        kind = MigrationOutcome.COMPLETED

        def wait(dt: float) -> None:
            if self.cluster.sleep is not None and dt > 0:
                self.cluster.sleep(dt)

        if target is None or not target._up:
            kind, err = MigrationOutcome.FAILED, NoRouteToHost(
                f"migrate {vm} to {dest.uri}: Failed to connect to remote libvirt URI")
        elif self.uri in self.cluster.partitioned or dest.uri in self.cluster.partitioned:
            # The source libvirtd hangs connecting to the peer; only our deadline ends it.
            elapsed = abort_at
            wait(abort_at)
            kind, err = MigrationOutcome.ABORTED_DEADLINE, MigrationAborted(
                f"migration of {vm} aborted: deadline of {deadline:.1f}s passed (peer unreachable)")
        elif not v.spec.disks or all(d.shared for d in v.spec.disks if d.source) or \
                options.unsafe or options.copy_storage_all or options.copy_storage_inc:
            existing = target._vms.get(v.uuid)
            if existing is not None and existing.state in (VmState.RUNNING, VmState.PAUSED):
                kind, err = MigrationOutcome.FAILED, OperationInvalid(
                    f"migrate {vm}: domain is already active on {dest.uri}")
            else:
                steps = 4
                for i in range(1, steps + 1):
                    t = needed * i / steps
                    if control.abort_requested:
                        kind = MigrationOutcome.ABORTED_REQUEST
                        break
                    if t > abort_at:
                        wait(abort_at - elapsed)
                        kind, elapsed = MigrationOutcome.ABORTED_DEADLINE, abort_at
                        break
                    wait(t - elapsed)
                    elapsed = t
                    done = total * i // steps
                    last = MigrationProgress(elapsed_s=t, data_total=total, data_processed=done,
                                             data_remaining=total - done, memory_iteration=1,
                                             downtime_ms=30, dirty_rate=int(v.cpu_load * 2**20))
                    if progress is not None:
                        progress(last)
                if kind is not MigrationOutcome.COMPLETED:
                    why = "requested" if kind is MigrationOutcome.ABORTED_REQUEST else \
                        f"deadline of {deadline:.1f}s passed"
                    err = MigrationAborted(f"migration of {vm} aborted: {why}")
        else:
            kind, err = MigrationOutcome.FAILED, MigrationUnsafe(
                f"migrate {vm}: Unsafe migration: disks are not on storage known to be shared")

        downtime = None
        if kind is MigrationOutcome.COMPLETED and target is not None:
            downtime = 30
            self._set_state(v, VmState.SHUTOFF, "migrated", EventKind.MIGRATED, "migrated-out")
            dv = _Vm(uuid=v.uuid, name=options.dname or v.name, xml=v.xml, spec=v.spec,
                     persistent=options.persistent, autostart=False, cpu_load=v.cpu_load,
                     cpu_time_ns=v.cpu_time_ns, since=target._now())
            prior = target._vms.get(v.uuid)
            if prior is not None and not options.persistent:
                dv.persistent = prior.persistent
            target._vms[v.uuid] = dv
            target._set_state(dv, VmState.RUNNING, "migrated", EventKind.MIGRATED, "migrated-in")
            target._emit(VmEvent(EventKind.RESUMED, dv.uuid, dv.name, "migrated", target._now()))
            if options.undefinesource or not v.persistent:
                self._remove(v)
        on_src, on_dst, def_src, def_dst = self._sides(v.uuid, dest)
        return MigrationResult(
            vm=v.uuid, outcome=kind, location=Location.from_sides(on_src, on_dst),
            duration_s=elapsed, downtime_ms=downtime,
            data_total=(last.data_total if last else None), on_source=on_src,
            on_destination=on_dst, defined_on_source=def_src, defined_on_destination=def_dst,
            error=err, last_progress=last)

    def close(self) -> None:
        self._closed = True
        self._subs.clear()
