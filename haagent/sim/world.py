"""The simulated cluster: hosts, VMs, BMCs and PDUs, partitions, etcd quorum, on a virtual clock.

The simulation runs the code that ships: the leader is ``haagent.manager.shell.LeaderShell`` and
each agent's VM reconcile is ``haagent.agent.vms.VmShell`` (both with the production codec),
over ports the simulator implements: a model etcd (``SimStore``, which passes the same store
contract as a real etcd), one ``FakeHypervisor`` per host (libvirt's events included), a cache
that goes stale while its host is cut off, and fences that finish on the virtual clock. The world
model is what the simulator keeps of its own:

* each agent, every tick: refresh its lease (or grant a new one, stamping ``hosts/<h>/lease``
  and clearing a clean-stop record in the same transaction), campaign when nobody leads, run its
  VM shell, publish ``hosts/<h>/report`` when its running VMs changed, and if it leads, run its
  leader shell (which journals finished fences, steps, and writes in one epoch-guarded
  transaction before dispatching fences);
* hosts lose power (their QEMUs die, definitions stay), are cut off, reset by their watchdog;
  fence devices confirm, fail, hang, never cut power, lie, or answer with no data, and may answer
  the leader's storm-guard power reads (only those) with lies, silence or garbage.

Hosts have separate hypervisors, so nothing prevents one VM from running on two hosts at once:
catching that is the invariant checker's job (a start is checked before it happens, too).

Deterministic: no wall clock, no threads of its own; hosts are visited in sorted order;
randomness only in the fault schedules, from a seeded RNG.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from haagent.agent.core import AbandonColdStart, AgentConfig, MigrateVm, RequestRelocation, StartVm, StopVm, UndefineVm
from haagent.agent.inventory import LoadSmoother, host_inventory, worth_writing
from haagent.agent.managed import HaMark, with_mark
from haagent.agent.vms import ViewCache, VmShell, spec_record
from haagent.manager import core as manager_core
from haagent.errors import HaagentError, HypervisorError, NotLeader, StoreError, StoreUnavailable
from haagent.hypervisor.fake import FakeCluster, FakeHypervisor
from haagent.hypervisor.port import MigrationTarget, RawStats
from haagent.hypervisor.stats import compute_usage
from haagent.state.requirements import local_disks, needs_from_xml
from haagent.state.codec import AckRefused, build_view, fence_ack_record, fence_result_step
from haagent.manager.core import ManagerConfig, Placer
from haagent.manager.placer import policy_mover, policy_placer, policy_rebalancer
from haagent.sim.fences import run_fence, run_status
from haagent.manager.shell import LeaderShell
from haagent.state.view import (Alert, ClusterView, FenceHost, JournalStep, PowerRead, ReadPower, SetHostState,
                                  SetPlacement, VmSpec)
from haagent.model import HostCell, HostState, VmState
from haagent.sim.store import NoQuorum, SimStore
from haagent.store.port import Compare, Delete, Put
from haagent.store.keys import Keys

GARBAGE = b'["not", "a", "record"]'
DEVICE_MODES = ("ok", "fail", "hang", "never-off", "lies", "empty")
READ_FAULTS = ("ok", "lies", "hang", "garbage")  # how devices answer the leader's power reads


@dataclass(frozen=True)
class SimConfig:
    tick: float = 0.5
    device_time: float = 1.0  # off + status read confirming it
    device_fail_time: float = 0.5  # a definite error comes back fast
    device_timeout: float = 5.0  # a hung device or one whose power never drops
    boot_time: float = 20.0  # a host reset by its watchdog is back (agent running) after this
    report_interval: float = 5.0  # as [timing] report_interval: load is published at most this often
    load_smoothing: float = 60.0  # as [agent] load_smoothing: the time constant of the reported load
    cold_shutdown_s: float = 1.0  # a guest asked to shut down (a cold move) is off after this
    cluster: str = "sim"
    shared_paths: tuple[str, ...] = ("/sim/shared",)  # as [agent] shared_paths: every host reaches these


@dataclass
class Device:
    """One fence device of one host (a BMC, or one PDU outlet)."""

    name: str
    mode: str = "ok"  # ok | fail | hang | never-off | lies | empty (status replies carry no data)
    switched_off: bool = False  # a PDU outlet a fence switched off (on again when the host is)


@dataclass
class AgentProc:
    """The agent process's memory; lost when it crashes or its host loses power."""

    lease: int = 0
    lease_ok_until: float = float("-inf")  # by the agent's own clock
    grant_rev: int = 0
    lease_ok: bool = False
    epoch: int = 0  # >0 while it believes it leads
    leader: LeaderShell | None = None  # the production leader shell, made at its first election
    vms: VmShell | None = None  # the production agent VM shell (its memory dies with the process)
    cache: tuple[dict, int] = ({}, 0)  # the last snapshot it could read (stale while cut off)
    last_report: dict | None = None  # the report last published (None: publish again)
    last_report_at: float = float("-inf")
    load: LoadSmoother = field(default_factory=LoadSmoother)  # the agent's smoothed load
    stats: RawStats | None = None  # its previous counters reading
    inventory: dict | None = None  # the last inventory it could read
    store_error: str = ""

    @property
    def alerts(self) -> frozenset[Alert]:
        return self.leader.alerts if self.leader is not None else frozenset()


@dataclass
class SimHost:
    name: str
    cpus: int
    memory_mib: int
    levels: list[list[Device]]
    powered: bool = True
    partitioned: bool = False
    agent: AgentProc | None = None
    hv: FakeHypervisor | None = None  # its libvirtd (the simulation gives every host one)
    watchdog_fed_at: float | None = None  # None: the watchdog device is not armed
    watchdog: bool | None = None  # this host's agent arms a watchdog (and reports it); None: the agent config
    numa: tuple[HostCell, ...] | None = None  # its NUMA cells; None: one cell with all of it
    tags: tuple[str, ...] = ()
    read_fault: str = "ok"  # its devices' answers to the leader's power reads (READ_FAULTS)
    cpu_model: str = "qemu64"  # its CPU (hosts of different models cannot live-migrate to each other)

    @property
    def running(self) -> frozenset[str]:
        """Domains QEMU runs here now (whatever the agent or etcd believe)."""
        if self.hv is None:
            return frozenset()
        return self.hv.cluster.qemus(self.hv.uri)

    def stop_all(self) -> None:
        """Power is gone: every QEMU dies (the definitions stay, as libvirt keeps them on disk)."""
        if self.hv is not None:
            self.hv.cluster.power_off(self.hv.uri)

    def device(self, name: str) -> Device:
        for level in self.levels:
            for d in level:
                if d.name == name:
                    return d
        raise KeyError(f"host {self.name} has no fence device {name!r}")


@dataclass
class PendingFence:
    host: str
    op: str
    issuer: str
    proc: AgentProc  # the leader process running it; the fence dies with it
    epoch: int  # the epoch that started it
    cancel: threading.Event  # set by the leader shell when that epoch ends
    done: Callable[[JournalStep], None]  # hands the result to the leader shell
    attempt: int
    started: float
    done_at: float
    result: str
    reason: str
    devices: dict[str, str]
    cuts_power: bool
    already_off: bool = False


@dataclass
class PendingRead:
    """A storm-guard power read under way: answered when the clock reaches ``done_at``."""

    issuer: str
    proc: AgentProc  # the leader process that asked; the read dies with it
    read: PowerRead
    done: Callable[[PowerRead], None]
    done_at: float


class InvariantViolation(AssertionError):
    """A safety invariant broke; the message says which, when and where."""


class Simulation:
    """A cluster and its faults, advanced tick by tick. ``log`` collects the story."""

    def __init__(self, hosts: list[SimHost], specs: list[VmSpec], placements: Mapping[str, str], *,
                 manager: ManagerConfig | None = None, agent: AgentConfig | None = None,
                 sim: SimConfig | None = None, placer: Placer | None = None,
                 migrations: Mapping[str, tuple[str, str]] | None = None,
                 running: Mapping[str, list[str]] | None = None,
                 unmanaged: Mapping[str, tuple[VmSpec, str]] | None = None,
                 disks: Mapping[str, str] | None = None):
        from haagent.log import configure

        # The production shells and the fence runner log as they would on a host; the simulation
        # tells its own story instead, so only what is critical gets through.
        configure("console", "critical", stream=sys.stderr)
        self.cfg = sim or SimConfig()
        self.mcfg = manager or ManagerConfig()
        self.acfg = agent or AgentConfig()
        self.placer = placer or policy_placer()
        self.mover = policy_mover()
        self.rebalancer = policy_rebalancer()
        self.keys = Keys(self.cfg.cluster)
        self.store = SimStore(clock=lambda: self.now)
        self.hosts = {h.name: h for h in sorted(hosts, key=lambda h: h.name)}
        self.specs = {s.uuid: s for s in specs}
        self.now = 0.0
        self.ticks = 0
        self.log: list[str] = []
        self.fences: list[PendingFence] = []
        self.reads: list[PendingRead] = []
        self.boots: dict[str, float] = {}  # host -> when it is back from a watchdog reset
        self.violations: list[str] = []
        self.corrupted: dict[str, bytes | None] = {}
        self._view_cache: tuple[int, ClusterView] | None = None
        self._seq = 0
        self.checkers: list[Callable[["Simulation"], None]] = []
        self.start_checkers: list[Callable[["Simulation", str, str], None]] = []
        self.on_commit: list[Callable[["Simulation", ClusterView, list], None]] = []
        self.on_round: list[Callable[["Simulation", object], None]] = []  # each rebalance round's record
        self.user_stopped: set[str] = set()  # VMs a user shut down (for the liveness check)
        self.vm_loads: dict[str, float] = {}  # uuid -> % of one host CPU its guest burns
        self.fence_cuts: set[tuple[str, str]] = set()  # (host, device) that accepted off in this run
        self.views = ViewCache(self.keys)  # decoded views, shared by the agents' VM shells
        # Live migrations under way: (when the job ends, source host, its agent process, the run)
        self.migrations: list[tuple[float, str, AgentProc, str, int, Callable[[], None]]] = []
        self.power_offs: dict[str, int] = {}  # host -> times it lost power (a job to it dies with it)
        self.orders: dict[str, tuple[str, float, float]] = {}  # vm -> (mode, when, deadline) of its last order
        self.fakes = FakeCluster(clock=lambda: self.now)
        self.failing_starts: set[str] = set()  # hosts whose libvirtd fails every domain start
        self.failed_starts: dict[tuple[str, str], str] = {}  # (host, vm) -> its last failed start's reason
        self.disks = dict(disks or {})  # vm -> the path of its one disk (none: diskless)
        for h in self.hosts.values():
            h.hv = _SimHypervisor(self, h.name)
        # The cluster as it stood before the run: VMs defined and running where placed (or where
        # ``running`` says), their specs as their agents register them, placements, states.
        up: dict[str, list[str]] = {u: [h] for u, h in placements.items()}
        up.update({u: list(w) for u, w in (running or {}).items()})
        init = []
        for s in sorted(specs, key=lambda s: s.uuid):
            xml = domain_xml(s, self.disks.get(s.uuid))
            for host in up.get(s.uuid, []):
                hv = self.hosts[host].hv
                hv.start(hv.define(xml, autostart=False).uuid)  # before any agent listens or checker runs
            owner = placements.get(s.uuid)
            if owner is not None and owner in up.get(s.uuid, []):
                hv = self.hosts[owner].hv
                record = spec_record(owner, hv, hv.vm_info(s.uuid), HaMark(s.priority, s.policy, s.groups, s.migration),
                                     shared_paths=tuple(self.cfg.shared_paths))
            else:
                record = json.dumps({**replace(s, xml=xml, needs=needs_from_xml(xml),
                                               local_disks=local_disks(xml, tuple(self.cfg.shared_paths))).to_dict(),
                                     "registered_by": ""}, sort_keys=True)
            init.append(Put(self.keys.vm_spec(s.uuid), record))
        for uuid, host in sorted(placements.items()):
            init.append(Put(self.keys.vm_placement(uuid), json.dumps({"host": host, "epoch": 0, "op": "",
                                                                      "reason": "initial"})))
        for name in self.hosts:
            init.append(Put(self.keys.host_state(name), json.dumps({"state": "active", "reason": "initial",
                                                                     "epoch": 0, "since": 0.0})))
        for uuid, (src, dst) in sorted((migrations or {}).items()):
            init.append(Put(self.keys.vm_migration(uuid), json.dumps({"from": src, "to": dst, "epoch": 0})))
        self.store.txn((), init)
        # VMs without the HA mark (no spec, no placement): defined and running where given
        self.unmanaged = {u: spec for u, (spec, _host) in (unmanaged or {}).items()}
        for uuid, (spec, host) in sorted((unmanaged or {}).items()):
            hv = self.hosts[host].hv
            xml = with_mark(domain_xml(spec, self.disks.get(uuid)), None)
            hv.start(hv.define(xml, autostart=False).uuid)
        for h in self.hosts.values():
            h.agent = AgentProc()
            h.watchdog = self.acfg.watchdog if h.watchdog is None else h.watchdog  # type: ignore[comparison-overlap]

    # -- logging ----------------------------------------------------------------------------

    def say(self, who: str, text: str) -> None:
        self.log.append(f"{self.now:7.1f} {who:<9} {text}")

    # -- the store as one host sees it --------------------------------------------------------

    def reaches_store(self, h: SimHost) -> bool:
        return h.powered and not h.partitioned and self.store.quorum

    def _view(self) -> tuple[ClusterView, int]:
        """The decoded store at its current revision (cached: most ticks write nothing)."""
        rev = self.store._revision  # no quorum check: the cache key only
        if self._view_cache is None or self._view_cache[0] != rev:
            kvs, _ = self.store.snapshot(self.keys.root)
            self._view_cache = (rev, build_view(kvs, self.keys, 0))
        return self._view_cache[1], rev

    # -- faults (the scenario and random schedules call these) ------------------------------

    def power(self, name: str, on: bool) -> None:
        h = self.hosts[name]
        if on == h.powered:
            return
        h.powered = on
        if on:
            for level in h.levels:  # whoever powers it on switches its outlets back on
                for d in level:
                    d.switched_off = False
            h.agent = AgentProc()  # boots; managed VMs have autostart off, so nothing runs yet
        else:
            self._host_down(h)

    def _host_down(self, h: SimHost) -> None:
        self.power_offs[h.name] = self.power_offs.get(h.name, 0) + 1
        self._agent_gone(h)
        h.stop_all()
        h.watchdog_fed_at = None

    def _agent_gone(self, h: SimHost) -> None:
        if h.agent is not None and h.agent.vms is not None:
            h.agent.vms.close()  # the process is gone: nobody listens to libvirt's events
        h.agent = None

    def network(self, name: str, up: bool) -> None:
        h = self.hosts[name]
        h.partitioned = not up
        if h.hv is not None:  # its libvirtd is cut off from its peers too (a migration hangs)
            (self.fakes.partitioned.discard if up else self.fakes.partitioned.add)(h.hv.uri)

    def agent_crash(self, name: str) -> None:
        h = self.hosts[name]
        if h.powered:
            self._agent_gone(h)  # QEMU processes live on; the watchdog (if armed) is no longer fed

    def agent_stop(self, name: str) -> None:
        """A clean agent stop (SIGTERM): record it while the lease lives, disarm, revoke."""
        h = self.hosts[name]
        a = h.agent
        if not h.powered or a is None:
            return
        ok = False
        if self.reaches_store(h) and a.lease:
            stopped = json.dumps({"policy": "freeze", "lease": a.lease, "at": self.now})
            ok = self.store.txn([Compare(self.keys.host_alive(name), "version", ">", 0)],
                                [Put(self.keys.host_stopped(name), stopped)]).succeeded
            if a.epoch:  # resign
                self.store.txn([Compare(self.keys.leader, "create", "==", a.epoch)], [Delete(self.keys.leader)])
            self.store.revoke(a.lease)
            self.say(f"agent {name}", "stopped cleanly" + ("" if ok else " (its lease was already gone)"))
        self._agent_gone(h)
        if ok or h.watchdog_fed_at is None:
            h.watchdog_fed_at = None  # magic close: the watchdog is disarmed, not starved
        else:  # as the daemon: the leader was not told, so the watchdog is left to reset the host
            self.say(f"agent {name}", "stopped, but the stop could not be recorded: watchdog left armed")

    def corrupt(self, key: str) -> None:
        """Overwrite a record with garbage, as a buggy tool or a careless operator with etcd access."""
        old = self.store.kvs.get(key)
        self.corrupted.setdefault(key, old.value if old else None)
        self.store.put(key, GARBAGE, old.lease if old and old.lease in self.store.leases else None)

    def repair(self) -> None:
        """Put back each corrupted record its owner has not rewritten since (an operator fixing
        what the alert named; a record already rewritten is left as its owner wrote it)."""
        for key, value in sorted(self.corrupted.items()):
            still = [Compare(key, "value", "==", GARBAGE)]
            self.store.txn(still, [Delete(key)] if value is None else [Put(key, value)])
        self.corrupted.clear()

    def agent_start(self, name: str) -> None:
        h = self.hosts[name]
        if h.powered and h.agent is None:
            h.agent = AgentProc()

    def set_device(self, name: str, device: str, mode: str) -> None:
        if mode not in DEVICE_MODES:
            raise ValueError(f"unknown device mode {mode!r} (one of {', '.join(DEVICE_MODES)})")
        h = self.hosts[name]
        if device == "pdu":  # every PDU outlet of the host
            devs = [d for level in h.levels for d in level if d.name.startswith("pdu")]
            if not devs:
                raise KeyError(f"host {name} has no PDU devices")
            for d in devs:
                d.mode = mode
        else:
            h.device(device).mode = mode

    def set_read_fault(self, name: str, fault: str) -> None:
        if fault not in READ_FAULTS:
            raise ValueError(f"unknown read fault {fault!r} (one of {', '.join(READ_FAULTS)})")
        self.hosts[name].read_fault = fault

    def set_quorum(self, ok: bool) -> None:
        self.store.set_quorum(ok)

    def vm_crash(self, uuid: str, by_user: bool = False) -> str | None:
        """Kill a running VM (a crash, or a user's shutdown); the host it ran on, or None."""
        for h in self.hosts.values():
            if h.powered and uuid in h.running:
                if by_user:
                    h.hv.shutdown(uuid, 0)  # libvirt tells the agent: stopped, reason shutdown
                    self.user_stopped.add(uuid)
                else:
                    self.fakes.kill_qemu(h.hv.uri, uuid)  # QEMU died: a CRASHED event
                return h.name
        return None

    def libvirtd(self, name: str, up: bool) -> None:
        """The host's libvirtd stops answering (or answers again); QEMU and its VMs run on."""
        h = self.hosts[name]
        assert h.hv is not None
        self.fakes.set_daemon_up(h.hv.uri, up)

    def starts(self, name: str, ok: bool) -> None:
        """The host's libvirtd fails every domain start (a broken QEMU, storage it cannot open), or works again."""
        (self.failing_starts.discard if ok else self.failing_starts.add)(name)

    def vm_load(self, uuid: str, cpu_percent: float) -> str | None:
        """The VM's guest now burns ``cpu_percent`` of one host CPU, wherever it runs from now on."""
        self.vm_loads[uuid] = cpu_percent
        for h in self.hosts.values():
            if h.powered and uuid in h.running:
                self.fakes.set_vm_load(h.hv.uri, uuid, cpu_percent)
                return h.name
        return None

    def request(self, kind: str, host: str = "", vm: str = "", options: Mapping[str, object] | None = None) -> str:
        """An operator request through the CLI (needs quorum, like any etcd write): "" if recorded,
        else why not. A fence ack goes through the CLI's own check and binding."""
        self._seq += 1
        rid = f"{kind}-{host or vm}-{int(self.now * 1000)}-{self._seq}"
        try:
            if kind == "fence_ack":
                view, _ = self._view()
                record = fence_ack_record(view, host)
            else:
                record = {"kind": kind, "host": host, "vm": vm}
                if options:
                    record["options"] = dict(options)
            self.store.put(self.keys.request(rid), json.dumps(record))
        except NoQuorum:
            return "no quorum"
        except AckRefused as exc:
            return str(exc)
        return ""

    # -- the clock --------------------------------------------------------------------------

    def advance_clock(self) -> None:
        self.ticks += 1
        self.now = round(self.ticks * self.cfg.tick, 6)

    def tick_body(self) -> None:
        """One tick at ``now``: leases expire, fences finish, watchdogs fire, every agent runs."""
        self.store.expire()
        self._finish_fences()
        self._finish_reads()
        self._finish_migrations()
        self._watchdogs()
        for h in self.hosts.values():
            if h.powered and h.agent is not None:
                self._agent_tick(h, h.agent)
        for check in self.checkers:
            check(self)

    # -- migrations -------------------------------------------------------------------------

    def _migration_spawn(self, h: SimHost) -> Callable[[Callable[[], None], MigrateVm], None]:
        """The agent's migration thread, on the virtual clock: the job takes one pass over the
        VM's memory at the link speed (or until its deadline), then ``hv.migrate`` runs at once."""
        def spawn(run: Callable[[], None], act: MigrateVm) -> None:
            spec = self.specs.get(act.vm) or self.unmanaged.get(act.vm)
            took = 0.05 + (spec.memory_mib if spec else 64) / self.fakes.link_mib_s
            cap = dict(act.options).get("bandwidth_cap")
            if cap:
                took = 0.05 + (spec.memory_mib if spec else 64) / min(cap, self.fakes.link_mib_s)
            abort_at = act.deadline - min(3.0, 0.3 * act.deadline)
            if act.mode == "cold":  # a clean shutdown: the guest answers ACPI in a second
                took, abort_at = self.cfg.cold_shutdown_s, act.deadline
            d = self.hosts.get(act.dest)
            # A target that is off when the job starts never takes it, even if it is powered on
            # before the job would have ended (libvirt fails to connect at once; it queues nothing).
            offs = self.power_offs.get(act.dest, 0) if d is None or d.powered else -1
            self.migrations.append((self.now + min(took, abort_at), h.name, h.agent,  # type: ignore[arg-type]
                                    act.dest, offs, run))
        return spawn

    def _finish_migrations(self) -> None:
        """Jobs whose time came: run them if their source still has power and the same agent
        (a crash of the source takes the job with it; one of the destination fails it, and the VM
        stays on the source)."""
        due = [m for m in self.migrations if m[0] <= self.now + 1e-9]
        self.migrations = [m for m in self.migrations if m[0] > self.now + 1e-9]
        for _at, host, proc, dest, offs, run in due:
            h, d = self.hosts[host], self.hosts.get(dest)
            if not (h.powered and h.agent is proc):
                continue
            if d is not None and d.hv is not None and (not d.powered or self.power_offs.get(dest, 0) != offs):
                # the destination is off, or died during the job: its libvirtd is gone for the job's end
                self.fakes.set_daemon_up(d.hv.uri, False)
                try:
                    run()
                finally:
                    self.fakes.set_daemon_up(d.hv.uri, True)
            else:
                run()  # a cut-off side makes the fake's job hang until its deadline, as libvirt's

    # -- fences -----------------------------------------------------------------------------

    def _start_fence(self, issuer: SimHost, proc: AgentProc, action: FenceHost, cancel: threading.Event,
                     done: Callable[[JournalStep], None]) -> None:
        """Run the real fence runner on virtual time now; deliver its result when that time comes."""
        result, took, cuts = run_fence(self, action.host, self.now)
        devices = {d.device: d.outcome.value for lvl in result.levels for d in lvl.devices}
        self.fences.append(PendingFence(action.host, action.op, issuer.name, proc, proc.epoch, cancel, done,
                                        action.attempt, self.now, self.now + took, result.outcome.value,
                                        result.reason, devices, cuts, result.found_off))

    def _start_read(self, issuer: SimHost, proc: AgentProc, action: ReadPower,
                    done: Callable[[PowerRead], None]) -> None:
        """Read with the real runner on virtual time now; answer when that time comes."""
        power, detail, took = run_status(self, action.host, self.now)
        read = PowerRead(action.host, action.failover, action.granted_rev, power, detail)
        self.reads.append(PendingRead(issuer.name, proc, read, done, self.now + took))

    def _finish_reads(self) -> None:
        due = [r for r in self.reads if r.done_at <= self.now + 1e-9]
        self.reads = [r for r in self.reads if r.done_at > self.now + 1e-9]
        for r in due:
            if self.hosts[r.issuer].agent is r.proc:
                r.done(r.read)

    def fence_cut(self, host: str, device: str) -> bool:
        """Whether ``device`` of ``host`` accepted "off" in the fence run under way."""
        return (host, device) in self.fence_cuts

    def _finish_fences(self) -> None:
        due = [f for f in self.fences if f.done_at <= self.now + 1e-9]
        self.fences = [f for f in self.fences if f.done_at > self.now + 1e-9]
        for f in due:
            issuer = self.hosts[f.issuer]
            if issuer.agent is not f.proc:
                self.say("fence", f"{f.host} abandoned: its leader process on {f.issuer} is gone")
                continue
            if f.cancel.is_set():
                # Deposed mid-fence: the cancel stops the runner before its next power command.
                self.say("fence", f"{f.host} cancelled: {f.issuer} no longer leads under epoch {f.epoch}")
                continue
            target = self.hosts[f.host]
            devs = " ".join(f"{k}:{v}" for k, v in sorted(f.devices.items()))
            self.say("fence", f"{f.host} {f.result} ({f.reason}) devices={devs or '-'} "
                              f"after {f.done_at - f.started:.1f}s")
            if f.cuts_power:
                for level in target.levels:
                    for d in level:
                        if d.name.startswith("pdu") and d.mode == "ok":
                            d.switched_off = True
            if f.result == "confirmed_off" and f.cuts_power and target.name in self.boots:
                del self.boots[target.name]  # switched off in the middle of its reset: it stays off
                self.say("host", f"{f.host} powered off by its fence device while resetting")
            elif f.result == "confirmed_off" and f.cuts_power and target.powered:
                target.powered = False
                self._host_down(target)
                self.say("host", f"{f.host} powered off by its fence device")
            f.done(fence_result_step(f.op, f.host, f.result, f.reason, f.done_at - f.started, self.now, f.devices,
                                     f.attempt, f.already_off))

    def _watchdogs(self) -> None:
        if not self.boots and not any(h.watchdog for h in self.hosts.values()):
            return
        for h in self.hosts.values():
            if h.powered and h.watchdog_fed_at is not None and \
                    self.now - h.watchdog_fed_at >= self.acfg.self_fence_timeout - 1e-9:
                self.say("host", f"{h.name} watchdog fired: reset (its VMs die; back in {self.cfg.boot_time:g}s)")
                h.powered = False
                self._host_down(h)
                self.boots[h.name] = self.now + self.cfg.boot_time
        for name, at in sorted(self.boots.items()):
            if at <= self.now + 1e-9:
                del self.boots[name]
                if not self.hosts[name].powered:
                    self.say("host", f"{name} booted after its watchdog reset")
                    self.power(name, True)

    # -- the agent shell --------------------------------------------------------------------

    def _agent_tick(self, h: SimHost, a: AgentProc) -> None:
        ttl = self.mcfg.lease_ttl
        reach = self.reaches_store(h)
        who = f"agent {h.name}"
        just_granted = False
        if reach:
            if a.lease and self.store.refresh(a.lease) > 0:
                a.lease_ok_until = self.now + ttl
            else:
                just_granted = True
                a.lease, _ = self.store.grant(ttl)
                # As the agent's LeaseKeeper.on_grant: stamp the grant and clear a clean-stop record
                # in the same transaction as the alive key.
                a.grant_rev = self.store.txn((), [
                    Put(self.keys.host_alive(h.name), json.dumps({"host": h.name}), a.lease),
                    Put(self.keys.host_lease(h.name), json.dumps({"lease": a.lease, "at": self.now})),
                    Delete(self.keys.host_stopped(h.name))]).revision
                a.lease_ok_until = self.now + ttl
                a.last_report = None  # a new lease: publish the report again
                self.say(who, "lease granted")
        lease_ok = self.now < a.lease_ok_until - 1e-9
        if a.lease_ok and not lease_ok:
            self.say(who, "lease lost (by its own clock)")
        elif lease_ok and not a.lease_ok and not just_granted:
            self.say(who, "lease refreshed again (etcd kept it through the outage)")
        a.lease_ok = lease_ok
        if lease_ok and h.watchdog:
            h.watchdog_fed_at = self.now  # fed from the heartbeat path, only while the lease lives
        if a.epoch and not lease_ok:
            self._step_down(h, a, "its lease expired")
        if reach and lease_ok and not a.epoch and (self.store.get(self.keys.leader) is None
                                                   or self.store.get(self.keys.leader).lease == a.lease):
            won = self.store.txn([Compare(self.keys.leader, "create", "==", 0)],
                                 [Put(self.keys.leader, json.dumps({"host": h.name, "lease": a.lease}), a.lease)])
            ok, rev = won.succeeded, won.revision
            how = "leader now"
            if not ok:
                # As Election.try_acquire: the key may still be ours, on a lease etcd kept alive.
                kv = self.store.get(self.keys.leader)
                if kv is not None and kv.lease == a.lease:
                    ok, rev, how = True, kv.create_revision, "leader again (the leader key is still ours)"
            if ok:
                a.epoch = rev
                if a.leader is None:
                    a.leader = LeaderShell(self.keys, self.mcfg, self.placer, _SimLeaderStore(self, h, a),
                                           _SimFences(self, h, a), clock=lambda: self.now, wall=lambda: self.now,
                                           sink=_SimSink(self, h, a), mover=self.mover,
                                           rebalancer=self.rebalancer)
                self.say(f"mgr {h.name}", f"{how} (epoch {rev})")

        # Reconcile local VMs to placement: the production VM shell, over this host's libvirt,
        # reading the store as the daemon's watch-fed cache would (stale while cut off).
        if a.vms is None:
            a.vms = VmShell(h.name, h.hv, _SimAgentStore(self, h), self.keys, _SimLease(a), _SimCache(self, h, a),
                            replace(self.acfg, watchdog=h.watchdog), clock=lambda: self.now, disks=SIM_DISKS,
                            views=self.views, migration_target=lambda host: MigrationTarget(f"sim:///{host}"),
                            spawn=self._migration_spawn(h), wall=lambda: self.now,
                            shared_paths=tuple(self.cfg.shared_paths))
        try:
            actions = a.vms.reconcile()
        except (StoreError, HaagentError):
            actions = []  # no quorum for a spec, libvirtd down: the daemon logs it and goes on
        for act in actions:
            if isinstance(act, StartVm):
                self.user_stopped.discard(act.vm)
                failed = a.vms.start_errors.get(act.vm)
                if failed is None:
                    self.failed_starts.pop((h.name, act.vm), None)
                    self.say(who, f"start vm={act.vm} ({act.reason})")
                elif self.failed_starts.get((h.name, act.vm)) != act.reason:  # (its retries are not told)
                    self.failed_starts[(h.name, act.vm)] = act.reason
                    self.say(who, f"start vm={act.vm} ({act.reason}) failed: {failed}")
            elif isinstance(act, AbandonColdStart):
                self.say(who, f"give up starting vm={act.vm} (cold move from {act.source}, {act.op} attempt "
                              f"{act.attempt}: not started {act.waited:g}s after the order, deadline {act.deadline:g}s)")
            elif isinstance(act, UndefineVm):
                self.say(who, f"undefine vm={act.vm} ({act.reason})")
            elif isinstance(act, StopVm):
                self.say(who, f"stop vm={act.vm} ({act.reason})")
            elif isinstance(act, RequestRelocation):
                self.say(who, f"request relocation vm={act.vm} ({act.crashes} crashes in the window)")
            elif isinstance(act, MigrateVm):
                self.say(who, f"migrate vm={act.vm} to={act.dest} (attempt {act.attempt})")
        if reach:
            self._publish_report(h, a, lease_ok)
        else:
            a.last_report = None  # re-publish once back: the world may have moved on
        if a.leader is not None:
            a.leader.tick()

    def _publish_report(self, h: SimHost, a: AgentProc, lease_ok: bool) -> None:
        """As the daemon's publish_report: inventory and smoothed load from this host's libvirt,
        written only when ``worth_writing`` says so."""
        assert h.hv is not None
        managed = sorted(u for u in h.running if u not in self.unmanaged)
        if (a.last_report is not None and self.now - a.last_report_at < self.cfg.report_interval
                and a.last_report["running_vms"] == managed
                and a.last_report.get("unmanaged_vms", []) == (a.vms.unmanaged if a.vms is not None else [])):
            return  # only a new VM list is written within the interval (worth_writing): save the reads
        try:
            cur = h.hv.raw_stats()
            a.load.tau = self.cfg.load_smoothing
            a.load.add(compute_usage(a.stats, cur), cur.host_cpus)
            a.stats = cur
            inventory = a.inventory = host_inventory(h.hv.host_info(), h.tags)
        except HaagentError as exc:  # its libvirtd is down: the last inventory, marked (as the collector)
            inventory = {**(a.inventory or {"cpus": h.cpus, "memory_mib": h.memory_mib, "tags": sorted(h.tags)}),
                         "inventory_error": f"host capabilities: {exc}"}
        if not lease_ok:
            return
        self_fence = ({"watchdog": True, "timeout": self.acfg.self_fence_timeout,
                       "self_fence_timeout": self.acfg.self_fence_timeout} if h.watchdog else None)
        report = {"host": h.name, **inventory, "load": a.load.record(),
                  "running_vms": managed, "self_fence": self_fence}
        if a.vms is not None and a.vms.unmanaged:  # as the daemon: the VM shell's last inventory
            report["unmanaged_vms"] = list(a.vms.unmanaged)
        if worth_writing(a.last_report, report, self.now - a.last_report_at, self.cfg.report_interval):
            self.store.put(self.keys.host_report(h.name), json.dumps(report, sort_keys=True))
            a.last_report, a.last_report_at = report, self.now

    def _step_down(self, h: SimHost, a: AgentProc, why: str) -> None:
        self.say(f"mgr {h.name}", f"leadership lost: {why}")
        a.epoch = 0
        if a.leader is not None:
            a.leader.deposed(why)

    # -- questions the checkers and the final summary ask -----------------------------------

    def leader(self) -> tuple[str, AgentProc] | None:
        for name, h in self.hosts.items():
            if h.powered and h.agent is not None and h.agent.epoch:
                kv = self.store.kvs.get(self.keys.leader)
                if kv is not None and kv.create_revision == h.agent.epoch:
                    return name, h.agent
        return None

    def where(self, uuid: str) -> list[str]:
        return sorted(n for n, h in self.hosts.items() if h.powered and uuid in h.running)

    def stored_state(self, host: str) -> HostState | None:
        kv = self.store.kvs.get(self.keys.host_state(host))
        if kv is None:
            return None
        try:
            return HostState(json.loads(kv.value).get("state"))
        except ValueError:
            return None

    def stored_placement(self, uuid: str) -> str | None:
        kv = self.store.kvs.get(self.keys.vm_placement(uuid))
        return json.loads(kv.value).get("host") if kv is not None else None


SIM_DISKS = (("/sim/images", "/sim/shared"), (), ())  # what a simulated agent's domain allowlist accepts


def domain_xml(spec: VmSpec, disk: str | None = None) -> str:
    """A simulated VM's domain: its size, NUMA binding and hugepages, its one disk if it has one
    (``disk``: a path; local unless under ``SimConfig.shared_paths``), and its HA mark (what
    ``haagent vm manage`` leaves); ``needs_from_xml`` reads the same needs back."""
    n = spec.needs
    numatune = ""
    if n.numa != "none" or n.nodeset:
        where = f"nodeset='{','.join(map(str, n.nodeset))}'" if n.nodeset else "placement='auto'"
        numatune = f"<numatune><memory mode='{n.numa if n.numa != 'none' else 'interleave'}' {where}/></numatune>"
    huge = ""
    if n.hugepage_count:
        huge = f"<memoryBacking><hugepages><page size='{n.hugepage_size_kib}' unit='KiB'/></hugepages></memoryBacking>"
    xml = (f"<domain type='qemu'><name>{spec.name}</name><uuid>{spec.uuid}</uuid>"
           f"<memory unit='MiB'>{spec.memory_mib}</memory><vcpu>{spec.vcpus}</vcpu>{numatune}{huge}"
           "<os><type arch='x86_64'>hvm</type></os>"
           "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
           + (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
              f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>" if disk else "")
           + "</devices></domain>")
    return with_mark(xml, HaMark(spec.priority, spec.policy, spec.groups, spec.migration))


class _SimHypervisor(FakeHypervisor):
    """A host's libvirtd; a start is checked against every other host first (a double start is
    a violation even if it lasts one tick)."""

    def __init__(self, sim: "Simulation", host: str):
        h = sim.hosts[host]
        # (its shared storage is the agents': libvirt told, a live migration with a disk there is safe)
        super().__init__(f"sim:///{host}", cluster=sim.fakes, hostname=host, cpu_model=h.cpu_model,
                         numa=h.numa or (HostCell(0, tuple(range(h.cpus)), h.memory_mib, h.memory_mib),),
                         shared_paths=tuple(sim.cfg.shared_paths))
        self.sim, self.host = sim, host

    def start(self, vm: str):  # type: ignore[override]
        if self.host in self.sim.failing_starts:
            self._check_up()
            raise HypervisorError(f"start {vm}: internal error: process exited while connecting to monitor")
        for check in self.sim.start_checkers:
            check(self.sim, self.host, vm)
        info = super().start(vm)
        load = self.sim.vm_loads.get(info.uuid)
        if load is not None:  # a VM's work goes with it
            self.sim.fakes.set_vm_load(self.uri, info.uuid, load)
        return info


class _SimLease:
    """The agent's lease as its VM shell asks about it (``LeaseKeeper``'s two answers)."""

    def __init__(self, proc: AgentProc):
        self.proc = proc

    @property
    def alive(self) -> bool:
        return self.proc.lease_ok

    @property
    def grant_revision(self) -> int:
        return self.proc.grant_rev


class _SimCache:
    """The daemon's watch-fed cache: current while the host reaches the store, else the last copy."""

    def __init__(self, sim: "Simulation", host: SimHost, proc: AgentProc):
        self.sim, self.host, self.proc = sim, host, proc

    def snapshot(self) -> tuple[dict, int]:
        if self.sim.reaches_store(self.host):
            kvs, rev = self.sim.store.snapshot(self.sim.keys.root)
            self.proc.cache = (dict(kvs), rev)
        return dict(self.proc.cache[0]), self.proc.cache[1]

    def get(self, key: str):
        return self.proc.cache[0].get(key)


class _SimAgentStore:
    """The agent's store calls (spec registration, relocation requests); a cut-off host's fail."""

    def __init__(self, sim: "Simulation", host: SimHost):
        self.sim, self.host = sim, host

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        if not self.sim.reaches_store(self.host):
            raise StoreUnavailable("store unreachable")
        return self.sim.store.put(key, value, lease)


class _SimLeaderStore:
    """The model etcd as one agent's leader shell sees it (see ``LeaderStore``)."""

    def __init__(self, sim: Simulation, host: SimHost, proc: AgentProc):
        self.sim, self.host, self.proc = sim, host, proc

    def epoch(self) -> int | None:
        if not self.proc.epoch:
            return None
        if self.sim.reaches_store(self.host):
            leader = self.sim.store.get(self.sim.keys.leader)
            if leader is None or leader.create_revision != self.proc.epoch:
                self.sim._step_down(self.host, self.proc, "the leader key is no longer ours")
                return None
        return self.proc.epoch  # cut off, it cannot tell: it goes on believing until its lease lapses

    def view(self) -> ClusterView:
        if not self.sim.reaches_store(self.host):
            h = self.host
            raise StoreUnavailable("no quorum" if h.powered and not h.partitioned else "store unreachable")
        return self.sim._view()[0]

    def write(self, ops: list, compares: list) -> int:
        sim = self.sim
        result = sim.store.txn([Compare(sim.keys.leader, "create", "==", self.proc.epoch), *compares], ops)
        if result.succeeded:
            return result.revision
        leader = sim.store.get(sim.keys.leader)
        if leader is not None and leader.create_revision == self.proc.epoch:
            return 0
        sim._step_down(self.host, self.proc, "guarded write rejected")
        raise NotLeader("guarded write rejected")

    def caught_up(self, revision: int) -> bool:
        return True  # the model store is read synchronously

    def events_lease(self) -> int | None:
        return None


class _SimFences:
    """Fences on the virtual clock: they finish after their devices' durations (see ``_start_fence``)."""

    def __init__(self, sim: Simulation, host: SimHost, proc: AgentProc):
        self.sim, self.host, self.proc = sim, host, proc

    def start(self, action: FenceHost, cancel: threading.Event, done: Callable[[JournalStep], None]) -> None:
        self.sim._start_fence(self.host, self.proc, action, cancel, done)

    def read_power(self, action: ReadPower, done: Callable[[PowerRead], None]) -> None:
        self.sim._start_read(self.host, self.proc, action, done)


class _SimSink:
    """The leader shell's reports, told as the simulation's story."""

    def __init__(self, sim: Simulation, host: SimHost, proc: AgentProc):
        self.sim, self.proc, self.who = sim, proc, f"mgr {host.name}"

    def __call__(self, event: str, f: Mapping[str, object]) -> None:
        say = lambda text: self.sim.say(self.who, text)  # noqa: E731
        if event == "action":
            say(str(f["line"]))
        elif event == "committed":
            for hook in self.sim.on_commit:
                hook(self.sim, f["view"], f["actions"])  # type: ignore[arg-type]
        elif event == "alert_raised":
            say(manager_core.actions_summary([f["alert"]])[0])  # type: ignore[list-item]
        elif event == "alert_cleared":
            al = f["alert"]
            say(" ".join(x for x in (f"alert cleared {al.name}", al.host and f"host={al.host}",  # type: ignore[attr-defined]
                                     al.vm and f"vm={al.vm}") if x))  # type: ignore[attr-defined]
        elif event == "store_error":
            if self.proc.store_error != f["error"]:
                say(f"cannot read the store ({f['error']}): decides nothing")
            self.proc.store_error = str(f["error"])
        elif event == "store_ok":
            self.proc.store_error = ""
        elif event == "step_retry":
            say("step not written: a host's lease changed under it; deciding again")
        elif event == "rebalance_round":
            r = f["round"]
            say(f"rebalance round: {r.result} ({r.mode}){f' {r.moves} move(s)' if r.moves else ''}"
                f"{f', score {r.score:.4f}' if r.score is not None else ''}{f': {r.reason}' if r.reason else ''}")
            for hook in self.sim.on_round:
                hook(self.sim, r)
        elif event == "power_read":
            say(f"power read host={f['host']}: {f['power']} ({f['detail']})")
        elif event == "result_dropped":
            say(f"fence result of epoch {f['epoch']} dropped (op={f['op']})")


__all__ = ["AgentProc", "Device", "InvariantViolation", "PendingFence", "PendingRead", "READ_FAULTS", "SetHostState", "SetPlacement",
           "SimConfig", "SimHost", "Simulation", "DEVICE_MODES"]
