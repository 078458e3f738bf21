"""The agent's VM shell: managed-VM inventory, spec registration, events, and reconcile actions.

The decisions are ``haagent.agent.core.step``; this module gathers its inputs from libvirt and
the watch-fed cache and carries out what it returns.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Mapping, Protocol

from haagent import metrics
from haagent.agent import core
from haagent.agent.domain_policy import SpecRejected, check_domain
from haagent.agent.managed import HaMark, parse_mark, with_mark
from haagent.state.requirements import local_disks, needs_from_xml
from haagent.errors import HypervisorError, InvalidDomain, StoreError, VmNotFound
from haagent.hypervisor.options import MigrationOptions
from haagent.hypervisor.port import EventKind, Hypervisor, MigrationProgress, MigrationTarget, VmEvent
from haagent.log import get_logger
from haagent.state.codec import DecodeMemo, build_view, migration_report_record
from haagent.state.view import MigrationReport, VmSpec
from haagent.model import VmState
from haagent.store.keys import Keys
from haagent.store.port import KV

log = get_logger("haagent.agent.vms")

# libvirt pause reasons of a domain that is arriving by live migration
_IN_TRANSIT = frozenset({"migration", "starting-up", "postcopy"})


class SpecStore(Protocol):
    """The writes the agent's VM shell makes: its specs and its relocation requests (``Store``)."""

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int: ...


class LeaseState(Protocol):
    """What the VM shell asks of the agent's lease (``LeaseKeeper``)."""

    @property
    def alive(self) -> bool: ...

    @property
    def grant_revision(self) -> int: ...


class StoreCache(Protocol):
    """The watch-fed copy of the cluster's keys (``PrefixCache``)."""

    def snapshot(self) -> tuple[Mapping[str, KV], int]: ...

    def get(self, key: str) -> KV | None: ...


class VmShell:
    def __init__(self, host: str, hv: Hypervisor, store: SpecStore, keys: Keys, lease: LeaseState,
                 cache: StoreCache, config: core.AgentConfig, *, wake: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic,
                 disks: tuple[tuple[str, ...], ...] | None = None,
                 views: "ViewCache | None" = None,
                 migration_target: Callable[[str], MigrationTarget] | None = None,
                 migration_options: MigrationOptions | None = None,
                 spawn: "Callable[[Callable[[], None], core.MigrateVm], None] | None" = None,
                 wall: Callable[[], float] = time.time, shared_paths: tuple[str, ...] = ()):
        self.host, self.hv, self.store, self.keys, self.lease, self.cache = host, hv, store, keys, lease, cache
        self.config, self.wake, self.clock = config, wake, clock
        self.views = views or ViewCache(keys)
        # Live migrations the leader orders from this host: where a host's libvirtd is reached,
        # the virsh-migrate flags, and how a migration is run off the reconcile loop.
        self.migration_target = migration_target
        self.migration_options = migration_options or MigrationOptions()
        self.spawn = spawn or _thread
        self.wall = wall
        self.migrations_run: set[tuple[str, str, int]] = set()
        self._unreported: dict[str, str] = {}  # uuid -> an outcome record whose write failed
        # (image_dirs, block_device_dirs, network_disk_protocols[, metadata_namespaces]) a domain
        # spec may use here: check_domain's arguments
        self.disks = disks if disks is not None else (("/var/lib/libvirt/images",), (), ())
        self._rejected: dict[str, str] = {}  # uuid -> the domain XML the allowlist refused
        # [agent] shared_paths: a disk outside them (and not a network or shareable one) is local
        self.shared_paths = tuple(shared_paths)
        self._local: dict[str, tuple[str, ...]] = {}  # domain XML -> its local disks, as last parsed
        # (uuid, op, attempt) of each cold-start order naming this host -> when first seen (clock)
        self.cold_start_seen: dict[tuple[str, str, int], float] = {}
        self.start_errors: dict[str, str] = {}  # uuid -> why its last start here failed
        self._lock = threading.Lock()
        self.crashes: dict[str, list[float]] = {}
        self.stopped_by_user: set[str] = set()
        self.relocation_requested: set[str] = set()
        self.migrated_away: set[str] = set()
        self.local_since: dict[str, int] = {}
        self.arrived: dict[str, float] = {}  # uuid -> first seen running here after an incoming live migration
        self._our_stops: set[str] = set()
        self._specs_written: dict[str, str] = {}
        self._marks: dict[str, HaMark | None] = {}  # domain XML -> its HA mark, as last parsed
        self._records: dict[str, tuple[str, HaMark, str]] = {}  # uuid -> (XML, mark, spec record)
        self.running: frozenset[str] = frozenset()
        self.managed: dict[str, tuple[Any, HaMark]] = {}
        # Running domains without the HA mark, for the report (``host drain --all`` moves them live)
        self.unmanaged: list[dict[str, Any]] = []
        self._sub = hv.subscribe(self.on_event)

    def close(self) -> None:
        self._sub.cancel()

    # -- events -----------------------------------------------------------------------------

    def on_event(self, ev: VmEvent) -> None:
        if ev.uuid is None:
            if ev.kind in (EventKind.RECONNECTED, EventKind.CONNECTION_LOST):
                self.wake()
            return
        with self._lock:
            if ev.kind is EventKind.CRASHED:
                self.crashes.setdefault(ev.uuid, []).append(self.clock())
                log.warning("vm_crashed", vm=ev.uuid, name=ev.name, reason=ev.reason)
            elif ev.kind in (EventKind.STOPPED, EventKind.SHUTDOWN):
                if ev.uuid in self._our_stops:
                    if ev.kind is EventKind.STOPPED:  # (a clean shutdown says "shutdown" first)
                        self._our_stops.discard(ev.uuid)
                elif ev.reason in ("shutdown", "destroyed") and ev.kind is EventKind.STOPPED:
                    # stopped by someone else: an operator's virsh shutdown/destroy
                    self.stopped_by_user.add(ev.uuid)
                    log.info("vm_stopped_by_user", vm=ev.uuid, name=ev.name, reason=ev.reason)
                elif ev.reason == "crashed" or ev.reason == "failed":
                    self.crashes.setdefault(ev.uuid, []).append(self.clock())
                    log.warning("vm_crashed", vm=ev.uuid, name=ev.name, reason=ev.reason)
            elif ev.kind is EventKind.MIGRATED:
                if ev.reason == "migrated-out":
                    self.migrated_away.add(ev.uuid)
                else:
                    self.migrated_away.discard(ev.uuid)
                    self.stopped_by_user.discard(ev.uuid)
            elif ev.kind is EventKind.STARTED:
                self.stopped_by_user.discard(ev.uuid)
                self.migrated_away.discard(ev.uuid)
        self.wake()

    # -- inventory --------------------------------------------------------------------------

    def refresh_inventory(self, placements: dict[str, str] | None = None) -> None:
        """Managed VMs defined here, and which of them count as running here.

        A VM paused for an incoming live migration (placed on another host) is the source's VM
        in transit, not a copy of ours: it is neither reported nor removed, or every migration to
        this host would be destroyed on arrival.
        """
        placements = placements or {}
        managed = {}
        unmanaged = []
        marks: dict[str, HaMark | None] = {}
        local: dict[str, tuple[str, ...]] = {}
        for info in self.hv.list_vms():
            try:
                xml = info.xml or self.hv.vm_xml(info.uuid)
                # most rounds see the same XML as the last one: parse each distinct text once
                mark = self._marks[xml] if xml in self._marks else parse_mark(xml)
            except (InvalidDomain, VmNotFound):
                continue
            marks[xml] = mark
            if mark is not None:
                managed[info.uuid] = (info, mark)
            elif info.active and not (info.state is VmState.PAUSED and info.reason in _IN_TRANSIT):
                entry: dict[str, Any] = {"uuid": info.uuid, "name": info.name, "vcpus": info.vcpus,
                                         "memory_mib": info.memory_mib}
                disks = self._local[xml] if xml in self._local else local_disks(xml, self.shared_paths)
                local[xml] = disks
                if disks:  # (drain --all refuses it by name: a live migration cannot take them along)
                    entry["local_disks"] = list(disks)
                unmanaged.append(entry)
        self._marks = marks
        self._local = local
        self.managed = managed
        self.unmanaged = unmanaged
        self.running = frozenset(
            u for u, (i, _) in managed.items() if i.active
            and not (i.state is VmState.PAUSED and i.reason in _IN_TRANSIT
                     and placements.get(u, self.host) != self.host))
        now = self.clock()
        self.arrived = {u: self.arrived.get(u, now) for u in self.running
                        if managed[u][0].state is VmState.RUNNING and managed[u][0].reason == "migrated"}

    def register_specs(self, placements: dict[str, str]) -> None:
        """Put vms/<uuid>/spec for managed VMs defined here that no other host owns."""
        for uuid, (info, mark) in sorted(self.managed.items()):
            owner = placements.get(uuid)
            if owner not in (None, self.host):
                continue
            source = self.hv.vm_xml(uuid, migratable=True)
            known = self._records.get(uuid)
            if known is not None and known[:2] == (source, mark):
                value = known[2]
            else:
                value = spec_record(self.host, self.hv, info, mark, source, self.shared_paths)
                self._records[uuid] = (source, mark, value)
            if self._specs_written.get(uuid) == value:
                continue
            current = self.cache.get(self.keys.vm_spec(uuid))
            if current is None or current.value != value.encode():
                self.store.put(self.keys.vm_spec(uuid), value)
                log.info("vm_spec_registered", vm=uuid, name=info.name, priority=mark.priority, policy=mark.policy)
            self._specs_written[uuid] = value

    # -- reconcile --------------------------------------------------------------------------

    def reconcile(self) -> list[core.AgentAction]:
        kvs, revision = self.cache.snapshot()
        view = self.views.view(kvs, revision)
        me = view.hosts.get(self.host)
        host_state = me.state if me is not None else None  # as the leader wrote it (None: unreadable)
        # A cold move's start is timed from when this agent first sees the order, even while its
        # libvirtd does not answer (this round then ends below, having started nothing)
        now = self.clock()
        orders = [(u, m.op, m.attempt) for u, m in view.migrations.items()
                  if m.mode == "cold-start" and m.dest == self.host]
        self.cold_start_seen = {key: self.cold_start_seen.get(key, now) for key in orders}
        self.refresh_inventory(dict(view.placements))
        with self._lock:
            # Placed elsewhere now: this host's crash history of it, and its request, are moot
            # (if it ever comes back here it restarts in place again before being relocated).
            for u in sorted(u for u in self.relocation_requested if view.placements.get(u) != self.host):
                self.relocation_requested.discard(u)
                self.crashes.pop(u, None)
            # Gone by migration and the leader has moved its placement since: if it is ever placed
            # here again (a failover back), it is to be started here like any other.
            self.migrated_away -= {u for u in self.migrated_away if u in view.placements
                                   and view.placements[u] != self.host}
        self.local_since = {u: self.local_since.get(u, revision + 1) for u in self.running}
        report_revisions = {}
        for h in view.hosts:
            kv = kvs.get(self.keys.host_report(h))
            report_revisions[h] = kv.mod_revision if kv is not None else 0
        if self.lease.alive:
            self.register_specs(dict(view.placements))
            if self._unreported:
                self.flush_migration_reports()
        with self._lock:
            inp = core.AgentInput(
                host=self.host, host_state=host_state, lease_ok=self.lease.alive,
                lease_grant_revision=self.lease.grant_revision, placement_revision=revision,
                placements=dict(view.placements), specs=dict(view.specs), running=self.running,
                reports={h: hv.running for h, hv in view.hosts.items() if h != self.host and hv.alive},
                crashes={u: tuple(ts) for u, ts in self.crashes.items()},
                stopped_by_user=frozenset(self.stopped_by_user),
                relocation_requested=frozenset(self.relocation_requested),
                migrated_away=frozenset(u for u in self.migrated_away if view.placements.get(u) == self.host),
                local_since=dict(self.local_since), report_revisions=report_revisions,
                arrived=dict(self.arrived),
                migrations=dict(view.migrations),
                migrations_run=frozenset(self.migrations_run | {
                    (u, r.op, r.attempt) for u, r in (me.migration_outcomes.items() if me else ())
                    if r.outcome != "running"}),
                cold_start_seen=dict(self.cold_start_seen),
                stopped_here=frozenset(u for u, (i, _) in self.managed.items() if not i.active),
                # shut down here by a cold order (its own outcome: for another host, running nowhere)
                cold_stopped=frozenset(u for u, r in (me.migration_outcomes.items() if me else ())
                                       if r.outcome != "running" and r.location == "none" and r.dest != self.host))
        actions = core.step(inp, now, self.config)
        for a in actions:
            self.execute(a, view.specs)
        return actions

    def execute(self, a: core.AgentAction, specs: dict[str, VmSpec]) -> None:
        try:
            if isinstance(a, core.StartVm):
                try:
                    self._start(a.vm, specs[a.vm], a.reason)
                except HypervisorError as exc:
                    self.start_errors[a.vm] = f"{type(exc).__name__}: {exc}"
                    raise
                if self._rejected.get(a.vm) is None:  # (a refused spec is no start: its reason stays)
                    self.start_errors.pop(a.vm, None)
            elif isinstance(a, core.StopVm):
                with self._lock:
                    self._our_stops.add(a.vm)
                self.hv.destroy(a.vm)
                metrics.VM_ACTIONS.labels(action="stop", result="ok").inc()
                log.warning("vm_stopped", vm=a.vm, reason=a.reason)
            elif isinstance(a, core.MigrateVm):
                with self._lock:
                    self.migrations_run.add((a.vm, a.op, a.attempt))
                self.spawn(lambda a=a: self.migrate(a), a)
            elif isinstance(a, core.AbandonColdStart):
                self._abandon_cold_start(a)
            elif isinstance(a, core.UndefineVm):
                self.hv.undefine(a.vm)
                metrics.VM_ACTIONS.labels(action="undefine", result="ok").inc()
                log.info("vm_undefined", vm=a.vm, reason=a.reason)
            elif isinstance(a, core.RequestRelocation):
                self.store.put(self.keys.request(f"relocate-{a.vm}"),
                               json.dumps({"kind": "relocate", "vm": a.vm, "host": self.host, "crashes": a.crashes}))
                with self._lock:
                    self.relocation_requested.add(a.vm)
                log.warning("vm_relocation_requested", vm=a.vm, crashes=a.crashes)
        except HypervisorError as exc:
            metrics.VM_ACTIONS.labels(action=type(a).__name__, result="error").inc()
            log.error("vm_action_failed", action=type(a).__name__, vm=getattr(a, "vm", ""), error=str(exc))

    def migrate(self, a: core.MigrateVm) -> MigrationReport:
        """Run one ordered live migration and put its outcome in ``hosts/<me>/migration/<uuid>``.

        The outcome says where the hypervisor found the VM afterwards; the leader settles the
        migration by the hosts' reports, so a lost outcome write costs a retry, never a copy.
        """
        started = self.clock()
        if a.mode == "cold":
            return self._cold_stop(a)
        options = self.migration_options.tuned(a.options)
        log.info("vm_migration_started", vm=a.vm, to=a.dest, op=a.op, attempt=a.attempt, deadline_s=a.deadline,
                 virsh=" ".join(options.to_virsh_args(a.vm, a.dest)))
        try:
            if self.migration_target is None:
                raise InvalidDomain("no migration URI configured ([migration] uri)")
            result = self.hv.migrate(a.vm, self.migration_target(a.dest), options,
                                     progress=self._progress_writer(a), deadline=a.deadline)
            report = MigrationReport(a.vm, self.host, a.dest, a.op, a.attempt, result.outcome.value,
                                     result.location.value, str(result.error or ""), result.duration_s,
                                     result.downtime_ms, result.data_total, self.wall())
        except HypervisorError as exc:  # refused before anything moved: the VM is where it was
            report = self._failed(a, exc, started)
        metrics.VM_ACTIONS.labels(action="migrate", result="ok" if report.outcome == "completed" else "error").inc()
        metrics.record_migration(report)
        log.info("vm_migration_finished", vm=a.vm, to=a.dest, outcome=report.outcome, location=report.location,
                 duration_s=round(report.duration_s, 3), downtime_ms=report.downtime_ms, error=report.error)
        with self._lock:
            self._unreported[a.vm] = migration_report_record(report)
        self.flush_migration_reports()
        self.wake()
        return report

    def _failed(self, a: core.MigrateVm, exc: HypervisorError, started: float) -> MigrationReport:
        """The outcome of an order the hypervisor refused: failed, and where the VM runs now."""
        try:
            where = "source" if self.hv.vm_info(a.vm).active else "none"
        except HypervisorError:
            where = "none" if isinstance(exc, VmNotFound) else "unknown"
        return MigrationReport(a.vm, self.host, a.dest, a.op, a.attempt, "failed", where,
                               f"{type(exc).__name__}: {exc}", self.clock() - started, None, None, self.wall())

    def _cold_stop(self, a: core.MigrateVm) -> MigrationReport:
        """A cold move's first half: shut the VM down here (ACPI; destroyed if still running after
        ``a.deadline`` s). The outcome says where it runs now ("none": stopped; the leader then
        places it on the target, whose agent starts it)."""
        started = self.clock()
        log.info("vm_cold_move_started", vm=a.vm, to=a.dest, op=a.op, attempt=a.attempt, timeout_s=a.deadline)
        with self._lock:
            self._our_stops.add(a.vm)  # not an operator's shutdown: it must not block a later start here
        try:
            how = self.hv.shutdown(a.vm, a.deadline)
            active = self.hv.vm_info(a.vm).active
            report = MigrationReport(a.vm, self.host, a.dest, a.op, a.attempt, "failed" if active else "completed",
                                     "source" if active else "none",
                                     f"still running after shutdown ({how.value})" if active else "",
                                     self.clock() - started, None, None, self.wall())
        except HypervisorError as exc:
            with self._lock:
                self._our_stops.discard(a.vm)
            report = self._failed(a, exc, started)
        metrics.VM_ACTIONS.labels(action="cold_stop", result="ok" if report.outcome == "completed" else "error").inc()
        log.info("vm_cold_move_stopped", vm=a.vm, to=a.dest, outcome=report.outcome, location=report.location,
                 duration_s=round(report.duration_s, 3), error=report.error)
        with self._lock:
            self._unreported[a.vm] = migration_report_record(report)
        self.flush_migration_reports()
        self.wake()
        return report

    def _abandon_cold_start(self, a: core.AbandonColdStart) -> None:
        """Give up a cold move's start here: never again for this order (remembered at once, and
        in the outcome record, which outlives this process), and tell the leader it may place the
        VM elsewhere. Runs on the reconcile loop, the only one that starts VMs: no start of this
        VM is under way here while it runs."""
        with self._lock:
            self.migrations_run.add((a.vm, a.op, a.attempt))
        why = self.start_errors.get(a.vm, "")
        report = MigrationReport(a.vm, self.host, self.host, a.op, a.attempt, "failed", "none",
                                 f"not started here within the order's {a.deadline:g}s (seen {a.waited:.0f}s ago)"
                                 + (f" (last start: {why})" if why else ""), a.waited, None, None, self.wall())
        metrics.VM_ACTIONS.labels(action="cold_start", result="error").inc()
        log.warning("vm_cold_start_abandoned", vm=a.vm, source=a.source, op=a.op, attempt=a.attempt,
                    waited_s=round(a.waited, 1), error=report.error)
        with self._lock:
            self._unreported[a.vm] = migration_report_record(report)
        self.flush_migration_reports()

    def _progress_writer(self, a: core.MigrateVm, every: float = 1.0) -> Callable[[MigrationProgress], None]:
        """libvirt's job info, put at most once a second as a "running" record (for ``--wait``;
        a lost one is not written again: the next one supersedes it)."""
        last = [float("-inf")]

        def write(p: MigrationProgress) -> None:
            now = self.clock()
            if now - last[0] < every:
                return
            last[0] = now
            report = MigrationReport(a.vm, self.host, a.dest, a.op, a.attempt, "running", "source",
                                     duration_s=p.elapsed_s, downtime_ms=p.downtime_ms, data_total=p.data_total,
                                     at=self.wall(), data_processed=p.data_processed,
                                     data_remaining=p.data_remaining, dirty_rate=p.dirty_rate)
            try:
                self.store.put(self.keys.host_migration(self.host, a.vm), migration_report_record(report))
            except StoreError:
                pass
        return write

    def flush_migration_reports(self) -> None:
        """Write the outcomes not written yet (the store was out of reach): the leader waits for them."""
        with self._lock:
            todo = sorted(self._unreported.items())
        for uuid, record in todo:
            try:
                self.store.put(self.keys.host_migration(self.host, uuid), record)
            except StoreError as exc:
                log.warning("vm_migration_report_failed", vm=uuid, error=str(exc), retry="next round")
                return
            with self._lock:
                if self._unreported.get(uuid) == record:
                    del self._unreported[uuid]

    def _start(self, uuid: str, spec: VmSpec, reason: str) -> None:
        try:
            self.hv.vm_info(uuid)
        except VmNotFound:
            if not spec.xml:
                raise InvalidDomain(f"no domain XML registered for {uuid}") from None
            if self._rejected.get(uuid) == spec.xml:
                return  # refused already: said and counted once, until the spec changes
            try:
                check_domain(spec.xml, *self.disks)  # etcd write access must not be root here
            except SpecRejected as exc:
                self._rejected[uuid] = spec.xml
                self.start_errors[uuid] = f"spec rejected here: {exc}"
                metrics.VM_SPECS_REJECTED.labels(rule=exc.rule).inc()
                log.error("vm_spec_rejected", vm=uuid, name=spec.name, rule=exc.rule, reason=str(exc))
                return
            self._rejected.pop(uuid, None)
            self.hv.define(spec.xml, autostart=False)
        self.hv.set_autostart(uuid, False)
        self.hv.start(uuid)
        metrics.VM_ACTIONS.labels(action="start", result="ok").inc()
        log.info("vm_started", vm=uuid, name=spec.name, reason=reason)


def _thread(fn: Callable[[], None], _action: object) -> None:
    threading.Thread(target=fn, name="migration", daemon=True).start()


def spec_record(host: str, hv: Hypervisor, info: Any, mark: HaMark, source: str | None = None,
                shared_paths: tuple[str, ...] = ()) -> str:
    """The ``vms/<uuid>/spec`` value an agent registers for a managed VM defined on its host
    (``shared_paths``: ``[agent] shared_paths``, which say which of its disks are local)."""
    xml = source if source is not None else hv.vm_xml(info.uuid, migratable=True)
    marked = with_mark(xml, mark)
    spec = VmSpec(info.uuid, info.name, info.vcpus, info.memory_mib, mark.priority, mark.policy,
                  marked, mark.groups, needs_from_xml(marked), mark.migration, local_disks(marked, shared_paths))
    return json.dumps({**spec.to_dict(), "registered_by": host}, sort_keys=True)


class ViewCache:
    """Decoded views by store revision: most rounds see a revision already decoded (a heartbeat
    with no change), and the simulator's agents share one. A new revision decodes only the
    records that changed (``DecodeMemo``): every agent reads the whole cluster's view, and at
    20,000 VMs decoding it all took a third of a second per change."""

    def __init__(self, keys: Keys, keep: int = 8):
        self.keys, self.keep = keys, keep
        self._views: dict[int, Any] = {}
        self.memo = DecodeMemo()  # the daemon's leader shares it: a new leader starts warm

    def view(self, kvs: Any, revision: int) -> Any:
        found = self._views.get(revision)
        if found is None:
            found = self._views[revision] = build_view(kvs, self.keys, 0, self.memo)
            if len(self._views) > self.keep:
                del self._views[min(self._views)]
        return found
