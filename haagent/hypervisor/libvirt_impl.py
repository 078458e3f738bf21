"""``LibvirtHypervisor``: the Hypervisor port on libvirt-python.

Threads, and why each exists:
- libvirt's default event loop (one per process): delivers lifecycle events, runs keepalive and
  notices a closed connection. Nothing slow may run on it, or keepalive itself would time out.
- ``hv-events``: calls subscribers, in order, with each VmEvent.
- ``hv-reconnect``: reopens a lost connection with exponential backoff and re-registers the
  event callbacks, then announces RECONNECTED so the caller resyncs its inventory.
- during ``migrate()``: one thread in the blocking libvirt call, one polling jobStats; the
  caller's thread enforces the deadline, so it returns in time even if libvirt does not.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from typing import Any, Callable, TypeVar

import libvirt
from tenacity import Retrying, retry_if_exception_type, wait_exponential, wait_random

from haagent.errors import (HaagentError, HypervisorError, HypervisorUnavailable, InvalidDomain,
                            MigrationAborted, OperationInvalid, VmNotFound)
from haagent.hypervisor.domcaps import usable_cpu_models
from haagent.hypervisor.translate import translate
from haagent.hypervisor.options import MigrationOptions
from haagent.hypervisor.port import (EventCallback, EventKind, HostInfo, Hypervisor, Location,
                                     MigrationControl, MigrationOutcome, MigrationProgress,
                                     MigrationResult, MigrationTarget, ProgressCallback,
                                     RawStats, RawVmCounters, ShutdownOutcome, Subscription,
                                     VmEvent, VmInfo)
from haagent.hypervisor.xmlparse import parse_capabilities, parse_domain
from haagent.log import get_logger
from haagent.model import HostCell, VmState

log = get_logger("haagent.hypervisor")
T = TypeVar("T")

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

# -- the process-wide libvirt event loop -------------------------------------------------------

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread, once."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        # libvirt prints every error to stderr by default; we translate and log them ourselves.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _loop_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _loop_thread.start()


# -- state and event tables --------------------------------------------------------------------

_STATE = {
    libvirt.VIR_DOMAIN_NOSTATE: VmState.OTHER, libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VmState.RUNNING, libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VmState.RUNNING,  # "being shut down": still running
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.SHUTOFF, libvirt.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.PAUSED,
}
_REASONS = {
    libvirt.VIR_DOMAIN_RUNNING: ["unknown", "booted", "migrated", "restored", "from-snapshot",
                                 "unpaused", "migration-canceled", "save-canceled", "wakeup",
                                 "crashed", "postcopy", "postcopy-failed"],
    libvirt.VIR_DOMAIN_PAUSED: ["unknown", "user", "migration", "save", "dump", "ioerror",
                                "watchdog", "from-snapshot", "shutting-down", "snapshot",
                                "crashed", "starting-up", "postcopy", "postcopy-failed",
                                "api-error"],
    libvirt.VIR_DOMAIN_SHUTOFF: ["unknown", "shutdown", "destroyed", "crashed", "migrated",
                                 "saved", "failed", "from-snapshot", "daemon"],
    libvirt.VIR_DOMAIN_SHUTDOWN: ["unknown", "user"],
    libvirt.VIR_DOMAIN_CRASHED: ["unknown", "panicked"],
    libvirt.VIR_DOMAIN_BLOCKED: ["unknown"],
    libvirt.VIR_DOMAIN_PMSUSPENDED: ["unknown"],
    libvirt.VIR_DOMAIN_NOSTATE: ["unknown"],
}


def _reason(state: int, reason: int) -> str:
    names = _REASONS.get(state, [])
    return names[reason] if 0 <= reason < len(names) else f"reason-{reason}"


E = libvirt
# (libvirt event, detail) -> (our kind, reason). Details not listed fall back per event below.
_EVENTS: dict[tuple[int, int], tuple[EventKind, str]] = {
    (E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED): (EventKind.DEFINED, "added"),
    (E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_UPDATED): (EventKind.DEFINED, "updated"),
    (E.VIR_DOMAIN_EVENT_UNDEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED): (EventKind.UNDEFINED, "removed"),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED): (EventKind.STARTED, "booted"),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_MIGRATED): (EventKind.MIGRATED, "migrated-in"),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_RESTORED): (EventKind.STARTED, "restored"),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT): (EventKind.STARTED, "from-snapshot"),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_WAKEUP): (EventKind.STARTED, "wakeup"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN): (EventKind.STOPPED, "shutdown"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): (EventKind.STOPPED, "destroyed"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_CRASHED): (EventKind.CRASHED, "crashed"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): (EventKind.MIGRATED, "migrated-out"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SAVED): (EventKind.STOPPED, "saved"),
    # QEMU exited behind libvirt's back (killed, OOM, segfault): that is a crash to us.
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_FAILED): (EventKind.CRASHED, "qemu-died"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT): (EventKind.STOPPED, "from-snapshot"),
    (E.VIR_DOMAIN_EVENT_SHUTDOWN, E.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED): (EventKind.SHUTDOWN, "finished"),
    (E.VIR_DOMAIN_EVENT_SHUTDOWN, E.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST): (EventKind.SHUTDOWN, "guest"),
    (E.VIR_DOMAIN_EVENT_SHUTDOWN, E.VIR_DOMAIN_EVENT_SHUTDOWN_HOST): (EventKind.SHUTDOWN, "host"),
    (E.VIR_DOMAIN_EVENT_CRASHED, E.VIR_DOMAIN_EVENT_CRASHED_PANICKED): (EventKind.CRASHED, "panicked"),
    (E.VIR_DOMAIN_EVENT_CRASHED, E.VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED): (EventKind.CRASHED, "crashloaded"),
    (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_MIGRATED): (EventKind.RESUMED, "migrated"),
    (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY): (EventKind.RESUMED, "postcopy"),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED): (EventKind.SUSPENDED, "migrated"),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY): (EventKind.SUSPENDED, "postcopy"),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR): (EventKind.SUSPENDED, "ioerror"),
}
_EVENT_FALLBACK = {
    E.VIR_DOMAIN_EVENT_DEFINED: EventKind.DEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED: EventKind.UNDEFINED,
    E.VIR_DOMAIN_EVENT_STARTED: EventKind.STARTED, E.VIR_DOMAIN_EVENT_SUSPENDED: EventKind.SUSPENDED,
    E.VIR_DOMAIN_EVENT_RESUMED: EventKind.RESUMED, E.VIR_DOMAIN_EVENT_STOPPED: EventKind.STOPPED,
    E.VIR_DOMAIN_EVENT_SHUTDOWN: EventKind.SHUTDOWN, E.VIR_DOMAIN_EVENT_CRASHED: EventKind.CRASHED,
    E.VIR_DOMAIN_EVENT_PMSUSPENDED: EventKind.SUSPENDED,
}


def map_lifecycle(event: int, detail: int) -> tuple[EventKind, str] | None:
    """libvirt lifecycle (event, detail) -> (kind, reason); None for events we do not report."""
    hit = _EVENTS.get((event, detail))
    if hit is not None:
        return hit
    kind = _EVENT_FALLBACK.get(event)
    return (kind, f"detail-{detail}") if kind is not None else None


def _bounded(fn: Callable[[], T], timeout: float, name: str) -> tuple[bool, T | BaseException | None]:
    """Run ``fn`` on a daemon thread; (True, value|exception) if it returned in time, else (False, None)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as e:  # handed back to the caller, who decides
            box.append(e)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join(max(timeout, 0.0))
    return (True, box[0]) if box else (False, None)


class LibvirtHypervisor(Hypervisor):
    """One libvirt connection with keepalive, events and automatic reconnect."""

    def __init__(self, uri: str, *, shared_paths: tuple[str, ...] = (),
                 keepalive_interval: int = 1, keepalive_count: int = 3,
                 reconnect_max_wait: float = 5.0, check_timeout: float = 5.0,
                 poll_interval: float = 0.2, clock: Callable[[], float] = time.monotonic):
        ensure_event_loop()
        self.uri = uri
        self.shared_paths = tuple(shared_paths)
        self._keepalive = (keepalive_interval, keepalive_count)
        self._reconnect_max_wait = reconnect_max_wait
        self._check_timeout = check_timeout
        self._poll = poll_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self._cpu_models: dict[str, tuple[str, ...]] | None = None
        self._closed = threading.Event()
        self._need_reconnect = threading.Event()
        self._connected = threading.Event()
        self._subscribers: list[EventCallback] = []
        self._events: queue.Queue[VmEvent | None] = queue.Queue()
        self._dispatcher = threading.Thread(target=self._dispatch, name="hv-events", daemon=True)
        self._dispatcher.start()
        self._reconnector = threading.Thread(target=self._reconnect_loop, name="hv-reconnect",
                                             daemon=True)
        try:
            self._open()
        except HypervisorUnavailable as e:
            # Not fatal: the agent starts anyway and calls raise HypervisorUnavailable until the
            # reconnect thread gets through.
            log.warning("libvirt not reachable yet, will retry", uri=uri, error=str(e))
            self._need_reconnect.set()
        except HaagentError:
            self.close()
            raise
        self._reconnector.start()

    # -- connection --------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise translate(e, f"connect {self.uri}") from e
        try:
            # Keepalive needs the event loop; local drivers (test://) do not support it.
            conn.setKeepAlive(*self._keepalive)
        except libvirt.libvirtError:
            pass
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            pass
        ids = []
        try:
            ids.append(conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                   self._on_lifecycle, None))
        except libvirt.libvirtError as e:
            conn.close()
            raise translate(e, "register lifecycle events") from e
        with self._lock:
            self._conn, self._callback_ids = conn, ids
            self._cpu_models = None  # a restarted libvirtd may run an upgraded QEMU
            self._connected.set()
        log.info("libvirt connected", uri=self.uri)

    def _on_close(self, conn: Any, reason: int, _opaque: Any) -> None:
        # On the libvirt event loop thread: hand off, never block here.
        with self._lock:
            if self._conn is not conn and self._conn is not None:
                return
            self._conn = None
            self._callback_ids = []
            self._connected.clear()
        if self._closed.is_set():
            return
        why = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error", libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
               libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
               libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client"}.get(reason, str(reason))
        log.warning("libvirt connection lost", uri=self.uri, reason=why)
        self._events.put(VmEvent(EventKind.CONNECTION_LOST, None, None, why, self._clock()))
        self._need_reconnect.set()

    def _reconnect_loop(self) -> None:
        while not self._closed.is_set():
            self._need_reconnect.wait()
            if self._closed.is_set():
                return
            retry = Retrying(
                retry=retry_if_exception_type(HypervisorUnavailable),
                wait=wait_exponential(multiplier=0.05, min=0.05, max=self._reconnect_max_wait)
                + wait_random(0, 0.05),
                stop=lambda _state: self._closed.is_set(),
                reraise=True,
                before_sleep=lambda s: log.debug("libvirt reconnect failed", uri=self.uri,
                                                 attempt=s.attempt_number),
            )
            try:
                retry(self._open)
            except HaagentError as e:
                if self._closed.is_set():
                    return
                log.error("libvirt reconnect gave up", uri=self.uri, error=str(e))
                self._closed.wait(self._reconnect_max_wait)
                continue
            self._need_reconnect.clear()
            self._events.put(VmEvent(EventKind.RECONNECTED, None, None, "reconnected", self._clock()))

    def _mark_lost(self) -> None:
        """An API call found the connection dead before the close callback did."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                alive = conn.isAlive()
            except libvirt.libvirtError:
                alive = False
        if not alive:
            self._on_close(conn, libvirt.VIR_CONNECT_CLOSE_REASON_ERROR, None)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _c(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None:
                raise HypervisorUnavailable(f"not connected to {self.uri} (reconnecting)")
            return self._conn

    def _call(self, what: str, fn: Callable[[], T], migration: bool = False) -> T:
        try:
            return fn()
        except libvirt.libvirtError as e:
            err = translate(e, what, migration)
            if isinstance(err, HypervisorUnavailable):
                self._mark_lost()
            raise err from e

    def _lookup(self, vm: str) -> libvirt.virDomain:
        conn = self._c()
        if not isinstance(vm, str) or not vm:
            raise InvalidDomain(f"a VM is named by a non-empty uuid or name, got {vm!r}")
        if _UUID_RE.match(vm):
            try:
                return conn.lookupByUUIDString(vm)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise translate(e, f"look up {vm}") from e
        return self._call(f"look up {vm}", lambda: conn.lookupByName(vm))

    # -- events ------------------------------------------------------------------------------

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        mapped = map_lifecycle(event, detail)
        if mapped is None:
            return
        kind, reason = mapped
        # UUIDString and name are cached in the domain object: no RPC on the event loop thread.
        self._events.put(VmEvent(kind, dom.UUIDString(), dom.name(), reason, self._clock()))

    def _dispatch(self) -> None:
        while True:
            ev = self._events.get()
            if ev is None:
                return
            with self._lock:
                subs = list(self._subscribers)
            for cb in subs:
                try:
                    cb(ev)
                except Exception:  # a broken subscriber must not stop delivery to the others
                    log.exception("event subscriber failed", kind=ev.kind.value)

    def subscribe(self, callback: EventCallback) -> Subscription:
        with self._lock:
            self._subscribers.append(callback)

        def cancel() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return Subscription(cancel)

    # -- inventory ---------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        conn = self._c()
        # Read every time (~0.5 ms on a 2-CPU host): hugepage pools, memory and CPUs can change
        # while the host runs (nr_hugepages, hotplug), and libvirt re-reads sysfs for each call.
        topo = parse_capabilities(self._call("capabilities", conn.getCapabilities))
        node = self._call("node info", conn.getInfo)  # [model, MiB, cpus, MHz, nodes, sockets, cores, threads]
        # Cell ids can have holes (node0, node2 on a machine with a node offline): ask by range
        # only when they are 0..n-1, else cell by cell, so no cell gets another's figures.
        ids = [c.id for c in topo.cells]
        runs = [(0, len(ids))] if ids == list(range(len(ids))) else [(i, 1) for i in ids]
        free: dict[int, int] = {}
        for start, count in runs if ids else []:
            got = self._call("free memory", lambda: conn.getCellsFreeMemory(start, count))
            free.update({start + k: int(b) for k, b in enumerate(got)})
        sizes = sorted({s for c in topo.cells for s in c.hugepages})
        free_pages: dict[int, dict[int, int]] = {}
        if sizes and ids:
            try:
                for start, count in runs:
                    free_pages.update(conn.getFreePages(sizes, start, count) or {})
            except libvirt.libvirtError:
                free_pages = {}  # some drivers cannot say; totals are still right, free is 0
        cells = []
        for c in topo.cells:
            fp = free_pages.get(c.id, {})
            huge = {s: (tot, int(fp.get(s, 0))) for s, (tot, _) in c.hugepages.items()}
            cells.append(HostCell(id=c.id, cpus=c.cpus, memory_mib=c.memory_mib,
                                  free_mib=free[c.id] // 2**20 if c.id in free else None,
                                  hugepages=huge))
        return HostInfo(
            hostname=self._call("hostname", conn.getHostname), uuid=topo.uuid, arch=topo.arch,
            cpu_model=topo.cpu_model, cpu_vendor=topo.cpu_vendor, cpu_features=topo.cpu_features,
            sockets=topo.sockets, cores_per_socket=topo.cores_per_socket,
            threads_per_core=topo.threads_per_core, cpus=int(node[2]), memory_mib=int(node[1]),
            numa=tuple(cells), page_sizes_kib=topo.page_sizes_kib, cpu_xml=topo.cpu_xml,
            cpu_models=self._usable_cpu_models(conn, topo.arch))

    def _usable_cpu_models(self, conn: libvirt.virConnect, arch: str) -> dict[str, tuple[str, ...]]:
        """Per domain type, from the domain capabilities; once per connection (they change only
        with a QEMU or libvirt upgrade, which restarts libvirtd)."""
        if self._cpu_models is None:
            models = {}
            for virt in ("kvm", "qemu"):
                try:
                    xml = conn.getDomainCapabilities(None, arch or None, None, virt, 0)
                except libvirt.libvirtError as e:
                    err = translate(e, f"domain capabilities ({virt})")
                    if err.transient:
                        raise err from e
                    continue  # this host cannot run that domain type (no /dev/kvm...)
                models[virt] = usable_cpu_models(xml)
            self._cpu_models = models
        return dict(self._cpu_models)

    def _info(self, dom: libvirt.virDomain) -> VmInfo:
        name = dom.name()
        xml = self._call(f"XML of {name}", lambda: dom.XMLDesc(0))
        state, reason = self._call(f"state of {name}", dom.state)
        spec = parse_domain(xml, self.shared_paths)
        persistent = bool(self._call(f"persistence of {name}", dom.isPersistent))
        autostart = bool(self._call(f"autostart of {name}", dom.autostart)) if persistent else False
        return VmInfo(uuid=dom.UUIDString(), name=name, state=_STATE.get(state, VmState.OTHER),
                      reason=_reason(state, reason), vcpus=spec.vcpus, memory_mib=spec.memory_mib,
                      max_memory_mib=spec.max_memory_mib, numa=spec.numa,
                      hugepages_kib=spec.hugepages_kib, disks=spec.disks, persistent=persistent,
                      autostart=autostart, xml=xml)

    def list_vms(self) -> list[VmInfo]:
        conn = self._c()
        out = []
        for dom in self._call("list domains", lambda: conn.listAllDomains(0)):
            try:
                out.append(self._info(dom))
            except VmNotFound:
                continue  # undefined between the listing and the query
        return sorted(out, key=lambda v: v.name)

    def vm_info(self, vm: str) -> VmInfo:
        return self._info(self._lookup(vm))

    def vm_xml(self, vm: str, migratable: bool = False) -> str:
        dom = self._lookup(vm)
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0
        return self._call(f"XML of {vm}", lambda: dom.XMLDesc(flags))

    # -- stats -------------------------------------------------------------------------------

    def raw_stats(self) -> RawStats:
        conn = self._c()
        # No VCPU group: it doubles the cost (measured: ~2 ms per VM per group on a busy host)
        # and the vCPU count is in the inventory already.
        groups = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                  | libvirt.VIR_DOMAIN_STATS_BALLOON)
        at = self._clock()
        # NOTE: cpu.time from getAllDomainStats, not dom.getCPUStats(): the latter needs cgroups.
        records = self._call("domain stats", lambda: conn.getAllDomainStats(groups, 0))
        vms = []
        for dom, st in records:
            mem = st.get("balloon.rss") or st.get("balloon.current") or 0
            vms.append(RawVmCounters(
                uuid=dom.UUIDString(), name=dom.name(),
                active=st.get("state.state") in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                                                 libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_SHUTDOWN),
                cpu_time_ns=int(st.get("cpu.time", 0)),
                memory_used_kib=int(mem)))
        busy = total = 0
        try:
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
            busy = int(cpu.get("kernel", 0)) + int(cpu.get("user", 0))
            total = busy + int(cpu.get("idle", 0)) + int(cpu.get("iowait", 0))
        except libvirt.libvirtError as e:
            if translate(e, "").transient:
                raise translate(e, "host cpu stats") from e
        node = self._call("node info", conn.getInfo)
        try:
            mem = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
            mem_total = int(mem.get("total", 0))
            mem_free = int(mem.get("free", 0)) + int(mem.get("buffers", 0)) + int(mem.get("cached", 0))
        except libvirt.libvirtError:
            mem_total = int(node[1]) * 1024
            mem_free = int(self._call("free memory", conn.getFreeMemory)) // 1024
        return RawStats(at=at, host_cpu_busy_ns=busy, host_cpu_total_ns=total,
                        host_cpus=int(node[2]), host_memory_total_kib=mem_total,
                        host_memory_free_kib=mem_free, vms=tuple(sorted(vms, key=lambda v: v.name)))

    # -- actions -----------------------------------------------------------------------------

    def define(self, xml: str, autostart: bool = False) -> VmInfo:
        parse_domain(xml, self.shared_paths)  # a clear error for malformed XML before libvirt's
        conn = self._c()
        dom = self._call("define domain", lambda: conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE))
        # Managed VMs never autostart: after a host comes back, only placement decides.
        self._call(f"set autostart of {dom.name()}", lambda: dom.setAutostart(1 if autostart else 0))
        return self._info(dom)

    def start(self, vm: str) -> VmInfo:
        dom = self._lookup(vm)
        if not self._call(f"is {vm} active", dom.isActive):
            try:
                self._call(f"start {vm}", dom.create)
            except OperationInvalid:
                if not dom.isActive():  # lost a race with another start: that is fine
                    raise
        return self._info(dom)

    def shutdown(self, vm: str, timeout: float) -> ShutdownOutcome:
        dom = self._lookup(vm)
        if not self._call(f"is {vm} active", dom.isActive):
            return ShutdownOutcome.ALREADY_OFF
        try:
            self._call(f"shut down {vm}", dom.shutdown)
        except OperationInvalid:
            if not self._call(f"is {vm} active", dom.isActive):
                return ShutdownOutcome.ALREADY_OFF
            raise
        end = self._clock() + timeout
        while self._clock() < end:
            if not self._call(f"is {vm} active", dom.isActive):
                return ShutdownOutcome.GRACEFUL
            time.sleep(min(0.1, max(end - self._clock(), 0)))
        log.warning("guest ignored shutdown, destroying", vm=vm, timeout_s=timeout)
        self.destroy(vm)
        return ShutdownOutcome.DESTROYED

    def destroy(self, vm: str) -> None:
        dom = self._lookup(vm)
        try:
            self._call(f"destroy {vm}", dom.destroy)
        except OperationInvalid:
            if self._call(f"is {vm} active", dom.isActive):
                raise  # "not running" is success; anything else is not

    def undefine(self, vm: str) -> None:
        dom = self._lookup(vm)
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                 | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as e:
            if e.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                raise translate(e, f"undefine {vm}") from e
            # Drivers without snapshots/checkpoints reject those flags: undefine plainly.
            self._call(f"undefine {vm}", dom.undefine)

    def set_autostart(self, vm: str, enabled: bool) -> None:
        dom = self._lookup(vm)
        self._call(f"set autostart of {vm}", lambda: dom.setAutostart(1 if enabled else 0))

    def set_metadata(self, vm: str, namespace: str, prefix: str, element: str | None) -> None:
        dom = self._lookup(vm)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if self._call(f"state of {vm}", dom.isActive):
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._call(f"set metadata of {vm}", lambda: dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, prefix if element else None, namespace, flags))

    # -- migration ---------------------------------------------------------------------------

    def _sides(self, dom: libvirt.virDomain, dest: MigrationTarget, budget: float) -> tuple[
            bool | None, bool | None, bool | None, bool | None]:
        """(active on source, active on dest, defined on source, defined on dest); None = could not ask."""
        uuid = dom.UUIDString()

        def state(d: libvirt.virDomain) -> tuple[bool, bool]:
            try:
                return bool(d.isActive()), bool(d.isPersistent())
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False, False
                raise

        def probe_dest() -> tuple[bool, bool]:
            conn = libvirt.open(dest.check_uri)
            try:
                try:
                    d = conn.lookupByUUIDString(uuid)
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        return False, False
                    raise
                return state(d)
            finally:
                conn.close()

        results: dict[str, Any] = {}

        def src() -> None:
            # The domain object we already hold: a fresh lookup can wait on the domain lock
            # while a migration job is stuck connecting to its peer (measured: 1 s each).
            try:
                results["src"] = state(dom)
            except (libvirt.libvirtError, HaagentError) as e:
                log.warning("cannot ask the source where the VM runs", error=str(e))

        def dst() -> None:
            try:
                results["dst"] = probe_dest()
            except libvirt.libvirtError as e:
                log.warning("cannot ask the destination where the VM runs", error=str(e))

        ts = [threading.Thread(target=f, daemon=True, name=f"hv-check-{n}") for n, f in (("src", src), ("dst", dst))]
        for t in ts:
            t.start()
        end = self._clock() + budget
        for t in ts:
            t.join(max(end - self._clock(), 0))
        s = results.get("src")
        d = results.get("dst")
        return (s[0] if isinstance(s, tuple) else None, d[0] if isinstance(d, tuple) else None,
                s[1] if isinstance(s, tuple) else None, d[1] if isinstance(d, tuple) else None)

    @staticmethod
    def _progress(st: dict[str, Any], elapsed: float) -> MigrationProgress:
        return MigrationProgress(
            elapsed_s=elapsed, data_total=int(st.get("data_total", 0)),
            data_processed=int(st.get("data_processed", 0)),
            data_remaining=int(st.get("data_remaining", 0)),
            memory_iteration=int(st.get("memory_iteration", 0)),
            downtime_ms=int(st["downtime"]) if "downtime" in st else None,
            postcopy=bool(st.get("memory_postcopy_requests", 0)),
            # pages the guest dirties per second, times the page size: bytes/s
            dirty_rate=(int(st["memory_dirty_rate"]) * int(st.get("memory_page_size", 4096))
                        if "memory_dirty_rate" in st else None))

    def migrate(self, vm: str, dest: MigrationTarget, options: MigrationOptions,
                progress: ProgressCallback | None = None, deadline: float = 120.0,
                control: MigrationControl | None = None) -> MigrationResult:
        if deadline <= 0:
            raise InvalidDomain(f"migration deadline must be positive, got {deadline}")
        t0 = self._clock()
        dom = self._lookup(vm)
        uuid = dom.UUIDString()
        control = control or MigrationControl()
        flags = 0
        for name in options.flag_names():
            flags |= getattr(libvirt, name)
        params = {getattr(libvirt, k): v for k, v in options.param_values().items()}
        if options.max_downtime_ms:
            self._call(f"set max downtime of {vm}",
                       lambda: dom.migrateSetMaxDowntime(options.max_downtime_ms, 0), migration=True)
        # Time kept back from the deadline to abort, let libvirt unwind, and ask both sides.
        reserve = min(3.0, 0.3 * deadline)
        abort_at = t0 + deadline - reserve
        check_budget = min(self._check_timeout, reserve / 2)
        log.info("migration starting", vm=vm, uuid=uuid, dest=dest.uri,
                 virsh=" ".join(options.to_virsh_args(vm, dest.uri)), deadline_s=deadline)

        done = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                if options.p2p:
                    dom.migrateToURI3(dest.uri, params, flags)
                else:
                    dconn = libvirt.open(dest.check_uri)
                    try:
                        dom.migrate3(dconn, params, flags)
                    finally:
                        dconn.close()
                outcome["ok"] = True
            except libvirt.libvirtError as e:
                outcome["error"] = e
            finally:
                done.set()

        last: list[MigrationProgress] = []
        stop_poll = threading.Event()
        postcopy_started = threading.Event()

        def poll() -> None:
            while not stop_poll.wait(self._poll):
                try:
                    st = dom.jobStats(0)
                except libvirt.libvirtError:
                    continue
                if st.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                    continue
                p = self._progress(st, self._clock() - t0)
                if p.data_total == 0:
                    continue  # still setting up (connecting to the peer): nothing to report yet
                last[:] = [p]
                want_postcopy = control.postcopy_requested or (
                    options.postcopy_after_precopy and p.memory_iteration >= 2)
                if options.postcopy and want_postcopy and not postcopy_started.is_set():
                    try:
                        dom.migrateStartPostCopy(0)
                        postcopy_started.set()
                        log.info("migration switched to post-copy", vm=vm)
                    except libvirt.libvirtError as e:
                        log.warning("switch to post-copy failed", vm=vm, error=str(e))
                if progress is not None:
                    try:
                        progress(p)
                    except Exception:
                        log.exception("migration progress callback failed", vm=vm)

        worker = threading.Thread(target=run, name="hv-migrate", daemon=True)
        poller = threading.Thread(target=poll, name="hv-migrate-poll", daemon=True)
        worker.start()
        poller.start()

        aborted_by: MigrationOutcome | None = None
        while not done.wait(min(self._poll, max(abort_at - self._clock(), 0.01))):
            now = self._clock()
            if control.abort_requested:
                aborted_by = MigrationOutcome.ABORTED_REQUEST
            elif now >= abort_at:
                aborted_by = MigrationOutcome.ABORTED_DEADLINE
            if aborted_by is None:
                continue
            if postcopy_started.is_set():
                # NOTE: after the switch to post-copy the VM's state is split between hosts;
                # aborting would lose it. Let it finish and report where it ended up.
                log.error("post-copy migration overran, cannot abort", vm=vm)
                done.wait(max(t0 + deadline - check_budget - self._clock(), 0))
                break
            log.warning("aborting migration", vm=vm, why=aborted_by.value)
            # abortJob also marks a job still connecting to the peer as cancelled, so it cannot
            # go on later even if we stop waiting for the call below.
            ok, res = _bounded(dom.abortJob, max(abort_at + reserve / 2 - self._clock(), 0.2), "hv-abort")
            if ok and isinstance(res, libvirt.libvirtError):
                log.warning("abortJob failed", vm=vm, error=str(res))
            done.wait(max(t0 + deadline - check_budget - self._clock(), 0))
            break
        stop_poll.set()
        abandoned = not done.is_set()

        # Where the VM runs now decides everything after a failed or abandoned call, so both sides
        # are asked with a budget of their own (check_timeout), not whatever the deadline left: on
        # a busy machine a probe that got 50 ms answered "unknown" where it would have said "source".
        locate_until = max(t0 + deadline, self._clock() + self._check_timeout)
        on_src, on_dst, def_src, def_dst = self._sides(dom, dest, max(locate_until - self._clock(), 0.05))
        # Right after a failed migration the destination may still hold the paused incoming
        # domain for a moment while libvirt tears it down, and a side may not have answered yet:
        # ask again before saying "both" or "unknown".
        while (not outcome.get("ok") and ((on_src and on_dst) or on_src is None or on_dst is None)
               and self._clock() < locate_until - 0.1):
            time.sleep(0.1)
            on_src, on_dst, def_src, def_dst = self._sides(dom, dest, max(locate_until - self._clock() - 0.05, 0.05))

        err: HaagentError | None = None
        if outcome.get("ok"):
            result_kind = MigrationOutcome.COMPLETED
        elif aborted_by is not None:
            result_kind = aborted_by
            cause = outcome.get("error")
            text = (f"migration of {vm} aborted: " + ("deadline of %.1fs passed" % deadline
                    if aborted_by is MigrationOutcome.ABORTED_DEADLINE else "requested"))
            if abandoned:
                text += " (libvirt call still blocked, e.g. connecting to an unreachable peer; job cancelled)"
            err = MigrationAborted(text)
            if cause is not None:
                err.__cause__ = translate(cause, f"migrate {vm}", migration=True)
        else:
            result_kind = MigrationOutcome.FAILED
            cause = outcome.get("error")
            err = translate(cause, f"migrate {vm} to {dest.uri}", migration=True) if cause is not None \
                else HypervisorError(f"migration of {vm} ended without a result")
            err.__cause__ = cause

        downtime = total = None
        if result_kind is MigrationOutcome.COMPLETED:
            downtime, total = self._completed_stats(uuid, dest)
        if downtime is None and last:
            downtime = last[0].downtime_ms
        if total is None and last:
            total = last[0].data_total
        result = MigrationResult(
            vm=uuid, outcome=result_kind, location=Location.from_sides(on_src, on_dst),
            duration_s=self._clock() - t0, downtime_ms=downtime, data_total=total,
            on_source=on_src, on_destination=on_dst, defined_on_source=def_src,
            defined_on_destination=def_dst, error=err, last_progress=last[0] if last else None,
            call_abandoned=abandoned)
        log.info("migration finished", vm=vm, outcome=result.outcome.value,
                 location=result.location.value, duration_s=round(result.duration_s, 3),
                 downtime_ms=result.downtime_ms, error=str(err) if err else None)
        return result

    def _completed_stats(self, uuid: str, dest: MigrationTarget) -> tuple[int | None, int | None]:
        """Actual downtime and bytes of a finished migration, as the destination recorded them."""

        def fetch() -> dict[str, Any]:
            conn = libvirt.open(dest.check_uri)
            try:
                return conn.lookupByUUIDString(uuid).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            finally:
                conn.close()

        ok, st = _bounded(fetch, self._check_timeout, "hv-jobstats")
        if not ok or not isinstance(st, dict) or not st:
            return None, None
        return (int(st["downtime"]) if "downtime" in st else None,
                int(st["data_total"]) if "data_total" in st else None)

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        self._closed.set()
        self._need_reconnect.set()  # wake the reconnect thread so it sees _closed
        with self._lock:
            conn, ids = self._conn, self._callback_ids
            self._conn, self._callback_ids = None, []
            self._connected.clear()
        if conn is not None:
            for cid in ids:
                try:
                    conn.domainEventDeregisterAny(cid)
                except libvirt.libvirtError:
                    pass
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        self._events.put(None)

    def __enter__(self) -> "LibvirtHypervisor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
