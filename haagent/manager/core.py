"""The leader's decisions: a pure step over a cluster view.

``step(view, status, now, config, placer) -> (status, actions)`` reads no clock and does no I/O.
The host state machine is the table in ``TRANSITIONS`` (glosses in ``haagent.model``); every
state change goes through ``change_state``. Safety rules (DESIGN §4) are enforced here:

* placement moves off a host only once it is confirmed fenced (power confirmed off and its lease
  gone, or the watchdog wait elapsed, or an operator acknowledged it);
* a new leader waits ``new_leader_grace`` before declaring any host dead;
* the storm guard holds all fencing and recovery when too many hosts turn suspect at once and
  their fence devices, read first (status only), do not say their power is off;
* a VM reported running on two hosts freezes that VM and raises an alert for a human.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Sequence

from haagent.state.view import (Alert, ClearMigration, ClusterView, ConsumeRequest, DeleteOp, Event, FenceHost, ForgetVm,
                                  HostView, JournalStep, ManagerAction, Op, OpStep, PowerRead, ReadPower,
                                  SetHostState, SetPlacement, SetStormHold, StartMigration, VmSpec)
from haagent.config import MigrationSection, RebalanceSection
from haagent.manager.rebalance import RebalanceMemory, Rebalancer
from haagent.model import HostState as S

# Allowed transitions: (from, to) -> one-line gloss of why.
TRANSITIONS: dict[tuple[S | None, S], str] = {
    (None, S.ACTIVE): "a new host joined with a live lease",
    (S.ACTIVE, S.SUSPECT): "its lease is gone",
    (S.DRAINING, S.SUSPECT): "its lease is gone while draining",
    (S.SUSPECT, S.ACTIVE): "its lease came back before fencing started",
    (S.SUSPECT, S.FENCING): "fence_delay passed with no lease and no storm",
    (S.ACTIVE, S.FENCING): "an operator acked a host frozen by a clean agent stop (its agent is not back)",
    (None, S.SUSPECT): "its state record cannot be read and it holds no lease",
    (S.FENCING, S.FENCED): "power confirmed off by a fence started after its last lease grant, its own "
                           "reported watchdog wait elapsed, or operator ack",
    (S.FENCING, S.ACTIVE): "its lease came back and no fence confirmed power off (or, after fence_inconsistent, "
                           "an operator returned it): failover called off",
    (S.FENCED, S.RECOVERING): "its HA VMs are being placed elsewhere",
    (S.RECOVERING, S.FAILED): "every HA VM was placed (or reported unplaceable)",
    (S.FAILED, S.ACTIVE): "an operator returned it (or it stayed healthy for auto_return_after)",
    (S.ACTIVE, S.MAINTENANCE): "operator",
    (S.MAINTENANCE, S.ACTIVE): "operator",
    (S.ACTIVE, S.DRAINING): "operator",
    (S.DRAINING, S.ACTIVE): "operator",
    (S.DRAINING, S.MAINTENANCE): "drained: no VMs left",
}

# Hosts whose VMs may be restarted elsewhere: power is confirmed off (DESIGN §4 invariant 2).
CONFIRMED_FENCED = frozenset({S.FENCED, S.RECOVERING, S.FAILED})
# Hosts that take VMs.
TAKES_VMS = frozenset({S.ACTIVE})


@dataclass(frozen=True)
class ManagerConfig:
    fence_delay: float = 1.0
    new_leader_grace: float = 3.0
    lease_ttl: float = 3.0
    storm_threshold: float = 0.5  # hold when at least this fraction of known hosts turn suspect in storm_window
    storm_window: float = 30.0
    storm_read_timeout: float = 5.0  # a storm candidate's power read unanswered this long says nothing
    fence_retry_interval: float = 10.0
    watchdog_margin: float = 2.0
    auto_return_after: float | None = None  # seconds healthy before a failed host returns
    keep_finished_ops: int = 50  # journals of finished operations kept in etcd (newest first)
    migration: MigrationSection = field(default_factory=MigrationSection)  # the migration executor's limits
    rebalance: RebalanceSection = field(default_factory=RebalanceSection)  # scheduled rebalancing


@dataclass(frozen=True)
class ManagerStatus:
    """The leader's own memory between steps (timers on the leader's clock; not persisted)."""

    leader_since: float
    suspect_since: Mapping[str, float] = field(default_factory=dict)
    lost_at: Mapping[str, float] = field(default_factory=dict)
    fence_inflight: Mapping[str, int] = field(default_factory=dict)  # host -> fence steps seen at issue
    fence_issued_at: Mapping[str, float] = field(default_factory=dict)
    suspect_log: tuple[tuple[str, float], ...] = ()
    healthy_since: Mapping[str, float] = field(default_factory=dict)
    alerts: frozenset[Alert] = frozenset()
    storm_hold: frozenset[str] = frozenset()  # hosts caught in a storm, held until back or acked
    # Hosts known dead, not cut off: a fence found the power already off, or an operator acked
    # them. They leave the storm count (kept while they are in the storm window).
    known_dead: frozenset[str] = frozenset()
    alive_after_off: Mapping[str, float] = field(default_factory=dict)  # host -> first seen alive after an "off"
    # Power reads of storm candidates: host -> (failover, granted_rev, asked at, power); power is
    # "" while the answer is awaited, else "off", "on" or "unknown".
    power_reads: Mapping[str, tuple[str, int, float, str]] = field(default_factory=dict)
    # Hosts still lost when a storm hold ended -> not fenced before then (a lease TTL and
    # fence_delay after the release: hosts cut off together come back one by one).
    released: Mapping[str, float] = field(default_factory=dict)
    seeded: bool = False  # the first step has taken over the hosts already suspect or fencing
    rebalance: RebalanceMemory = field(default_factory=RebalanceMemory)  # rounds (manager/rebalance.py)
    # Cold moves' starts awaiting their target's answer: (vm, op, attempt) -> first seen (drain.py)
    cold_starts: Mapping[tuple[str, str, int], float] = field(default_factory=dict)


# placer(vms to place, view, hosts to avoid) -> ({uuid: host}, {uuid: reasons})
Placer = Callable[[Sequence[VmSpec], ClusterView, frozenset[str]], tuple[dict[str, str], dict[str, tuple[str, ...]]]]


class _Placements(dict):
    """The step's placements: a copy of the view's that remembers which VMs it changed, so the
    rules that look at one host's VMs need not walk every VM (``_Step.placed_on``)."""

    def __init__(self, base: Mapping[str, str]):
        super().__init__(base)
        self.touched: set[str] = set()

    def __setitem__(self, uuid: str, host: str) -> None:
        self.touched.add(uuid)
        super().__setitem__(uuid, host)

    def __delitem__(self, uuid: str) -> None:
        self.touched.add(uuid)
        super().__delitem__(uuid)

    def pop(self, uuid: str, *default):  # type: ignore[override]
        self.touched.add(uuid)
        return super().pop(uuid, *default)

    def setdefault(self, uuid: str, host: str) -> str:  # type: ignore[override]
        self.touched.add(uuid)
        return super().setdefault(uuid, host)

    def update(self, *args, **kw) -> None:  # type: ignore[override]
        for uuid, host in dict(*args, **kw).items():
            self[uuid] = host


class _Step:
    """Accumulates actions and the next status for one step."""

    def __init__(self, view: ClusterView, status: ManagerStatus, now: float, config: ManagerConfig, placer: Placer):
        self.view, self.now, self.cfg, self.placer = view, now, config, placer
        self.status = status
        self.actions: list[ManagerAction] = []
        self.states: dict[str, S | None] = {h: hv.state for h, hv in view.hosts.items()}
        self.placements = _Placements(view.placements)
        self.alerts: set[Alert] = set()
        self.s_since = dict(status.suspect_since)
        self.lost_at = dict(status.lost_at)
        self.inflight = dict(status.fence_inflight)
        self.issued_at = dict(status.fence_issued_at)
        self.healthy = dict(status.healthy_since)
        self.suspect_log = [(h, t) for h, t in status.suspect_log if now - t <= config.storm_window]
        if not status.seeded:
            # A new leader inherits failures in progress: they count towards a storm as if just seen.
            self.suspect_log += [(h, now) for h, hv in sorted(view.hosts.items())
                                 if hv.state in (S.SUSPECT, S.FENCING)]
        self.storm_hold = set(status.storm_hold)
        recent = {h for h, _ in self.suspect_log}
        self.known_dead = {h for h in status.known_dead if h in recent}
        self.alive_after_off = dict(status.alive_after_off)
        self.power_reads = dict(status.power_reads)
        self.reading = False  # storm candidates' power reads are awaited (the hold is not settled)
        self.released = {h: t for h, t in status.released.items() if t > now}
        self.failover: dict[str, str] = {h: hv.failover for h, hv in view.hosts.items() if hv.failover}
        self.acks: dict[str, object] = {}  # host -> its valid fence_ack request
        # uuid -> the hosts whose report lists it running, by name (the view's index: an
        # incrementally kept view keeps it too, so a step walks no list of every VM)
        self.reported: Mapping[str, tuple[str, ...]] = view.index.reported
        self.consumed: set[str] = set()
        self.rebalance = status.rebalance
        self.wall = now  # the wall-clock time (``step``'s ``wall``): rebalance windows and cooldowns
        self.cold_starts: dict[tuple[str, str, int], float] = {}  # the executor fills it each step

    def placed_on(self, hosts: Iterable[str]) -> list[str]:
        """The VMs this step has placed on any of ``hosts``, sorted: the view's index, plus the VMs
        the step moved so far."""
        hosts = set(hosts)
        placed = self.view.index.placed
        found = {u for h in hosts for u in placed.get(h, ())} | self.placements.touched
        return sorted(u for u in found if self.placements.get(u) in hosts)

    # -- the only writer of host state ------------------------------------------------------

    def change_state(self, host: str, new: S, reason: str) -> None:
        old = self.states.get(host)
        if (old, new) not in TRANSITIONS:
            raise AssertionError(f"host={host} illegal transition {old} -> {new}")
        self.states[host] = new
        if new is S.ACTIVE:
            self.failover.pop(host, None)
            self.known_dead.discard(host)  # back in service: its death says nothing of its next loss
        self.actions.append(SetHostState(host, old, new, reason, self.failover.get(host, "")))

    def consume(self, req) -> None:
        if req.id not in self.consumed:
            self.consumed.add(req.id)
            self.actions.append(ConsumeRequest(req.id))

    def new_failover(self, host: str) -> str:
        """The id of a host's failover: named in its state record from suspect on, and its op id."""
        op = self.open_op(host)  # a failover journaled already (its state record may be unreadable)
        fid = (self.failover.get(host) or (op.id if op else "")
               or f"failover-{host}-{self.view.epoch}-{int(self.now * 1000)}")
        self.failover[host] = fid
        return fid

    def dispatch_fence(self, host: str, op_id: str) -> None:
        """Journal a fence start, then fence: the shell dispatches only once that write succeeds."""
        op = self.view.ops.get(op_id)
        n = 1 + max((int(s.detail["attempt"]) for s in (op.steps if op else ()) if s.step == "fence_start"
                     and isinstance(s.detail.get("attempt"), int)), default=0)
        self.journal(op_id, host, "fence_start", attempt=n)
        self.actions.append(FenceHost(host, op_id, n))
        self.inflight[host] = n
        self.issued_at[host] = self.now

    def keys_of(self, key: str) -> tuple[str, str]:
        """(host, vm) a stored key belongs to, for an alert's labels."""
        parts = key.rstrip("/").split("/")
        if "hosts" in parts[:-1]:
            return parts[parts.index("hosts") + 1], ""
        if "vms" in parts[:-1]:
            return "", parts[parts.index("vms") + 1]
        return "", ""

    def alert(self, name: str, host: str = "", vm: str = "", message: str = "") -> None:
        self.alerts.add(Alert(name, host, vm, message))

    def journal(self, op: str, host: str, step: str, **detail: object) -> None:
        self.actions.append(JournalStep(op, host, OpStep(step, self.now, detail)))

    def open_op(self, host: str) -> Op | None:
        ops = [o for o in self.view.ops.values() if o.host == host and o.kind == "failover" and not o.finished]
        return max(ops, key=lambda o: (o.rev, o.id)) if ops else None  # newest opened

    @property
    def in_grace(self) -> bool:
        return self.now < self.status.leader_since + self.cfg.new_leader_grace

    def storm(self) -> bool:
        """Whether the storm guard holds fencing and recovery now.

        A storm starts when at least ``storm_threshold`` of the known hosts turned suspect within
        ``storm_window`` ("at least": half the hosts lost at once is the split network or dead
        switch the guard exists for) and are not known dead. Before holding, the leader reads the
        fence devices of the candidates never fenced in this failover (status only): a host whose
        device says its power is off is dead, not cut off, and leaves the count. While those
        reads are awaited (at most ``storm_read_timeout``) nothing is fenced, nor held yet.
        Time alone never releases a hold: it holds, past the window, while at least that
        fraction of hosts caught in it is still lost. Hosts leave it by coming back, by being
        read off, or one by one through an operator's ``haagent fence ack``; once fewer than the
        threshold remain, they are ordinary failures and are fenced as usual.
        """
        known = [h for h, st in self.states.items() if st not in (S.MAINTENANCE, None)]
        # A single lost host is never a storm (in a 2-host cluster 1 of 2 is "half").
        limit = max(2.0, self.cfg.storm_threshold * len(known))
        dead = self.known_dead | set(self.acks) | self.read_off()

        def lost(h: str) -> bool:
            return self.states.get(h) not in (S.ACTIVE, S.DRAINING, S.MAINTENANCE) and h not in dead

        # Hosts lost within the window that are not back count, whatever became of them since: a
        # host we switched off a few seconds before the next one vanished may have been cut off by
        # the same fault. One found already off (by a fence or a read), or acked, died.
        recent = {h for h, _ in self.suspect_log if lost(h)}
        hold = set(self.storm_hold)
        if len(recent) >= limit:
            hold |= recent
        if hold:  # while it lasts, a host that turns suspect joins it
            hold |= {h for h, st in self.states.items() if st is S.SUSPECT}
        # Time alone never releases a host: only coming back, being found off, or an ack.
        hold = {h for h in hold if lost(h)}
        if len(hold) < limit:
            hold = set()
        self.reading = bool(hold) and self._read_power(hold)
        if self.reading:
            return True  # answers awaited: fence nothing yet, hold nobody new yet
        if self.storm_hold and not hold:
            # The hold ends with some of its hosts still lost: most came back (or were acked or
            # found off). Hosts cut off together come back one by one, so the rest become
            # ordinary failures only after the time a host needs to renew its lease.
            wait = self.now + self.cfg.lease_ttl + self.cfg.fence_delay
            self.released.update({h: wait for h in self.storm_hold if lost(h)})
        self.storm_hold = hold
        return bool(hold)

    def _power_key(self, h: str) -> tuple[str, int]:
        hv = self.view.hosts.get(h)
        return self.failover.get(h, ""), hv.granted_rev if hv else 0

    def read_off(self) -> set[str]:
        """Hosts whose devices said "off" when read during their present loss."""
        return {h for h, (fid, rev, _, power) in self.power_reads.items()
                if power == "off" and (fid, rev) == self._power_key(h)}

    def _read_power(self, hosts: set[str]) -> bool:
        """Ask for the power of each candidate not read yet in this loss; whether any is awaited.

        Only a host still ``suspect`` is read: no fence was sent in this failover, so an "off" is
        its own doing (a host in ``fencing`` may have been switched off by us).
        """
        waiting = False
        for h in sorted(hosts):
            if self.states.get(h) is not S.SUSPECT:
                continue
            fid, rev = key = self._power_key(h)
            read = self.power_reads.get(h)
            if read is None or read[:2] != key:
                self.power_reads[h] = (fid, rev, self.now, "")
                self.actions.append(ReadPower(h, fid, rev))
                waiting = True
            elif read[3] == "" and self.now - read[2] < self.cfg.storm_read_timeout:
                waiting = True
        return waiting

    def finish(self) -> tuple[ManagerStatus, list[ManagerAction]]:
        if not self.in_grace:
            self._storm_record()
        self.power_reads = {h: r for h, r in self.power_reads.items() if r[0] == self.failover.get(h)}
        # Alerts are level-triggered: emit the current set; the shell raises and clears them.
        for a in sorted(self.alerts, key=lambda a: (a.name, a.host, a.vm)):
            self.actions.append(a)
        status = ManagerStatus(
            leader_since=self.status.leader_since,
            suspect_since=self.s_since, lost_at=self.lost_at, fence_inflight=self.inflight,
            fence_issued_at=self.issued_at, suspect_log=tuple(self.suspect_log),
            healthy_since=self.healthy, alerts=frozenset(self.alerts), storm_hold=frozenset(self.storm_hold),
            known_dead=frozenset(self.known_dead), alive_after_off=self.alive_after_off,
            power_reads=self.power_reads, released=self.released, seeded=True, rebalance=self.rebalance,
            cold_starts=self.cold_starts)
        return status, self.actions


    def _storm_record(self) -> None:
        """Settle the storm guard for this step: its alert per held host, its stored record, and
        an event when a hold starts, changes or ends."""
        self.storm()
        held = tuple(sorted(self.storm_hold))
        listed = ", ".join(held)
        for h in held:
            self.alert("fencing_storm_hold", host=h,
                       message=f"{len(held)} hosts lost their lease together and no fence device said their "
                               f"power is off ({listed}): holding their fencing until they come back; once {h} "
                               f"is known to be off, 'haagent fence ack {h} --yes' releases it")
        before = tuple(sorted(self.view.storm_hold))
        if held == before or self.reading:
            return  # (while answers are awaited the record stays as it is: a new leader keeps it)
        self.actions.append(SetStormHold(held))
        if not before:
            self.actions.append(Event("storm_hold_started", detail={"hosts": list(held)}))
        elif not held:
            self.actions.append(Event("storm_hold_ended", detail={"hosts": list(before)}))
        else:
            self.actions.append(Event("storm_hold_changed", detail={
                "hosts": list(held), "joined": sorted(set(held) - set(before)),
                "left": sorted(set(before) - set(held))}))


def with_power_reads(status: ManagerStatus, reads: Iterable[PowerRead], now: float,
                     config: ManagerConfig) -> ManagerStatus:
    """Fold power read answers into the leader's memory: an answer counts only for the read it
    answers (same host, failover and lease grant) and only within ``storm_read_timeout``."""
    power = dict(status.power_reads)
    for r in reads:
        asked = power.get(r.host)
        if (asked is not None and asked[:2] == (r.failover, r.granted_rev) and asked[3] == ""
                and now - asked[2] <= config.storm_read_timeout):
            power[r.host] = (*asked[:3], r.power)
    return replace(status, power_reads=power)


def next_due(status: ManagerStatus, now: float, config: ManagerConfig) -> float | None:
    """The earliest time after ``now`` at which one of the step's timers runs out (the grace, a
    suspect host's fence_delay, a storm release, a fence retry, a power read's timeout), so the
    shell can step then instead of at its next heartbeat; None when none is pending."""
    times = [status.leader_since + config.new_leader_grace]
    times += [t + config.fence_delay for t in status.suspect_since.values()]
    times += list(status.released.values())
    times += [t + config.fence_retry_interval for t in status.fence_issued_at.values()]
    times += [asked + config.storm_read_timeout for _f, _r, asked, power in status.power_reads.values() if not power]
    times += [t + config.lease_ttl + config.watchdog_margin for t in status.alive_after_off.values()]
    later = [t for t in times if t > now]
    return min(later) if later else None


def new_status(now: float) -> ManagerStatus:
    """A fresh leader's memory: its grace period starts now."""
    return ManagerStatus(leader_since=now)


def step(view: ClusterView, status: ManagerStatus, now: float, config: ManagerConfig,
         placer: Placer, mover: Placer | None = None, rebalancer: Rebalancer | None = None,
         wall: float | None = None) -> tuple[ManagerStatus, list[ManagerAction]]:
    """One leader decision round. Pure: same inputs, same outputs.

    ``mover`` plans live migrations (drain, undrain, vm migrate); ``placer`` when not given.
    ``rebalancer`` plans rebalance rounds (None: no rounds); ``wall`` is the wall-clock time
    (the rebalance window and cooldowns, which the journals stamp in wall time; ``now`` if None).
    """
    st = _Step(view, status, now, config, placer)
    st.wall = now if wall is None else wall
    for key, why in view.bad_records:
        host_key, vm_key = st.keys_of(key)
        st.alert("bad_record", host=host_key, vm=vm_key,
                 message=f"{key}: {why}; skipped until it is fixed or deleted")
    for name, hv in sorted(view.hosts.items()):
        if hv.inventory_error and hv.alive:
            st.alert("inventory_unreadable", host=name,
                     message=f"{hv.inventory_error}; placed on by cpu and memory only, and only VMs "
                             "without NUMA, pinning, hugepage or CPU model needs, until it reports again")
    requests = {(r.kind, r.host): r for r in view.requests if r.host and r.kind != "fence_ack"}
    _take_acks(st)
    for name in sorted(view.hosts):
        _host(st, view.hosts[name], requests)
    _vms(st)
    for r in view.requests:
        if r.kind == "relocate":
            _relocate(st, r)
        elif r.kind == "unmanage":
            _forget(st, r)
        elif r.kind not in KNOWN_REQUESTS:
            st.consume(r)
            st.actions.append(Event("request_discarded", host=r.host, vm=r.vm,
                                    detail={"request": r.id, "reason": f"unknown kind {r.kind!r}"}))
    # An ack is for one failover: once that failover closes, unused, it is discarded.
    for host, ack in sorted(st.acks.items()):
        hv = st.view.hosts[host]
        frozen = _acks_frozen_host(st.states.get(host), hv, ack)
        if st.states.get(host) not in (S.SUSPECT, S.FENCING) and not frozen and ack.id not in st.consumed:  # type: ignore[attr-defined]
            st.consume(ack)
            st.actions.append(Event("fence_ack_discarded", host=host, detail={"reason": "its failover closed"}))
    _migrations(st, mover or placer)
    if rebalancer is not None:
        _rebalance(st, rebalancer, st.wall)
    _forget_finished_ops(st)
    return st.finish()


KNOWN_REQUESTS = frozenset({"fence_ack", "host_return", "relocate", "unmanage", "drain", "undrain", "migrate",
                            "rebalance"})


def _rebalance(st: _Step, rebalancer: Rebalancer, wall: float) -> None:
    from haagent.manager import rebalance

    rebalance.run(st, rebalancer, wall)


# -- the migration executor (haagent/manager/drain.py) ----------------------------------------


def _migrations(st: _Step, mover: Placer) -> None:
    from haagent.manager import drain

    drain.run(st, mover)


def _forget(st: _Step, req) -> None:
    """`haagent vm unmanage`: the VM leaves HA; placement is the leader's to delete."""
    st.consume(req)
    if req.vm in st.view.specs or req.vm in st.placements:
        st.actions.append(ForgetVm(req.vm))
        st.placements.pop(req.vm, None)
        st.actions.append(Event("vm_unmanaged", vm=req.vm))


def _take_acks(st: _Step) -> None:
    """Keep the acks bound to a host's open failover; discard the rest with an event."""
    for r in st.view.requests:
        if r.kind != "fence_ack":
            continue
        hv = st.view.hosts.get(r.host)
        if hv is None:
            why = "unknown host"
        elif _acks_frozen_host(hv.state, hv, r):
            st.acks[r.host] = r  # frozen by a clean stop: this ack starts (and ends) its failover
            continue
        elif hv.state not in (S.SUSPECT, S.FENCING):
            why = f"host is {hv.state.value if hv.state else 'unknown'}, not suspect or fencing"
        elif not r.failover or r.failover != hv.failover:
            why = f"it names failover {r.failover or '(none)'}, the open one is {hv.failover or '(none)'}"
        elif r.host in st.acks:
            why = "the failover already has an ack"
        else:
            st.acks[r.host] = r
            continue
        st.consume(r)
        st.actions.append(Event("fence_ack_discarded", host=r.host, detail={"reason": why, "request": r.id}))


def _acks_frozen_host(state: S | None, hv: HostView, ack) -> bool:
    """Whether ``ack`` is for a host frozen by a clean agent stop (named by its stop record)."""
    return state is S.ACTIVE and bool(hv.stopped) and not hv.alive and ack.failover == hv.stopped


def _forget_finished_ops(st: _Step) -> None:
    finished = sorted((o for o in st.view.ops.values() if o.finished), key=lambda o: (o.rev, o.id), reverse=True)
    for op in finished[st.cfg.keep_finished_ops:]:
        st.actions.append(DeleteOp(op.id))


# -- per-host state handlers -------------------------------------------------------------------


def _host(st: _Step, hv: HostView, requests: Mapping[tuple[str, str], object]) -> None:
    state = st.states.get(hv.name)
    handler = _HANDLERS.get(state)
    if not hv.alive:
        # When this leader first saw it gone: never earlier than the real loss, which is what a
        # self-fence wait must count from.
        st.lost_at.setdefault(hv.name, st.now)
        st.healthy.pop(hv.name, None)
    else:
        st.lost_at.pop(hv.name, None)
        st.healthy.setdefault(hv.name, st.now)
    if handler is not None:
        handler(st, hv, requests)


def _unknown(st: _Step, hv: HostView, requests) -> None:
    if hv.alive:
        st.change_state(hv.name, S.ACTIVE, "joined")
        st.actions.append(Event("host_joined", host=hv.name))
    elif hv.state_bad and not st.in_grace:
        # Whatever it was, it holds no lease now: treat it as lost (recovery still needs a
        # confirmed fence, so the worst case is fencing a host that is already off).
        _turn_suspect(st, hv.name, "state record unreadable and no lease")


def _active(st: _Step, hv: HostView, requests) -> None:
    if hv.alive or st.in_grace:
        return
    if hv.stopped:
        # Its agent stopped cleanly while it held its lease (shutdown_policy = freeze): the host
        # is healthy and its VMs keep running, unprotected until the agent is back. Never fenced,
        # unless an operator vouches it is off after all (it died while its agent was stopped).
        ack = st.acks.get(hv.name)
        if ack is not None:
            op_id = st.new_failover(hv.name)
            st.journal(op_id, hv.name, "intent", frozen=hv.stopped)
            st.change_state(hv.name, S.FENCING, "operator acked it while frozen by a clean agent stop")
            st.consume(ack)
            st.known_dead.add(hv.name)
            _fenced(st, hv, Op(op_id, "failover", hv.name, st.view.epoch), "operator acknowledged (haagent fence ack)")
            return
        st.alert("agent_stopped", host=hv.name,
                 message="its agent was stopped cleanly (shutdown_policy=freeze): its VMs keep running but "
                         "are not restarted elsewhere if the host fails, until the agent is back")
        return
    _turn_suspect(st, hv.name, "lease gone")


def _turn_suspect(st: _Step, host: str, why: str) -> None:
    """A host without a lease: its failover is named now, and it counts towards a storm."""
    st.new_failover(host)
    st.change_state(host, S.SUSPECT, why)
    st.s_since[host] = st.now
    st.suspect_log.append((host, st.now))
    st.actions.append(Event("host_suspect", host=host))


def _suspect(st: _Step, hv: HostView, requests) -> None:
    if hv.alive:
        st.s_since.pop(hv.name, None)
        st.change_state(hv.name, S.ACTIVE, "lease back before fencing")
        st.actions.append(Event("host_back", host=hv.name))
        return
    if st.in_grace:
        return
    since = st.s_since.setdefault(hv.name, st.now)
    if st.storm():
        ack = st.acks.get(hv.name)
        if ack is None:
            return
        # An operator vouched for this one: it leaves the hold and is fenced (and recovered) now.
        st.storm_hold.discard(hv.name)
    elif st.now - since < st.cfg.fence_delay or (st.now < st.released.get(hv.name, st.now)
                                                 and hv.name not in st.acks):
        return  # (an operator's ack needs no wait for a host to come back)
    op_id = st.new_failover(hv.name)
    st.journal(op_id, hv.name, "intent", detect_after=round(st.now - since, 3))
    st.change_state(hv.name, S.FENCING, f"no lease for {st.now - since:.1f}s")
    st.dispatch_fence(hv.name, op_id)


INCONSISTENT = ("fence reported power off, yet the host holds a lease granted after that fence started: the "
                "device cannot be trusted. Nothing of it moves; if it is off, 'haagent fence ack {h} --yes'; "
                "if it runs and its device is fixed, 'haagent host return {h}'")


def _fencing(st: _Step, hv: HostView, requests) -> None:
    op = st.open_op(hv.name)
    if op is None:  # the journal is missing (e.g. state written, intent lost): start it again
        op_id = st.new_failover(hv.name)
        st.journal(op_id, hv.name, "intent", resumed=True)
        if not hv.alive:
            st.dispatch_fence(hv.name, op_id)
        return
    starts = {s.detail.get("attempt"): s for s in op.steps if s.step == "fence_start"}
    fences = [s for s in op.steps if s.step == "fence"]
    said_off = [s for s in fences if s.detail.get("result") == "confirmed_off"]
    ack = st.acks.get(hv.name)
    if ack is not None and not hv.alive:
        st.consume(ack)
        st.known_dead.add(hv.name)
        _fenced(st, hv, op, "operator acknowledged (haagent fence ack)")
        return
    inconsistent = op.has("inconsistent")
    if said_off and hv.alive and not inconsistent:
        # Every fence start is written while the host has no lease, so a lease alive now was
        # granted after the fence began: that "off" predates it and counts for nothing. Either the
        # host came back just as it was switched off (its lease then lapses within a TTL, and a new
        # fence, started after that, decides), or the device said off while the host ran: a lease
        # still renewed a TTL and a margin later proves it, and the device is not trusted again.
        first = st.alive_after_off.setdefault(hv.name, st.now)
        if st.now - first <= st.cfg.lease_ttl + st.cfg.watchdog_margin:
            return
        st.journal(op.id, hv.name, "inconsistent", attempt=said_off[-1].detail.get("attempt", 0),
                   alive_for=round(st.now - first, 3))
        inconsistent = True
    if not hv.alive:
        st.alive_after_off.pop(hv.name, None)
    if inconsistent:
        ret = requests.get(("host_return", hv.name))
        if ret is not None and hv.alive:
            st.consume(ret)
            _call_off(st, hv, op, "operator returned it after fence_inconsistent")
            return
        st.alert("fence_inconsistent", host=hv.name, message=INCONSISTENT.format(h=hv.name))
        return
    # A confirmation counts only from a fence started after the host's last lease grant.
    valid = [s for s in said_off if (start := starts.get(s.detail.get("attempt"))) is not None
             and start.rev > hv.granted_rev]
    if valid and not hv.alive:
        if valid[-1].detail.get("already_off"):
            st.known_dead.add(hv.name)
            _fenced(st, hv, op, "power found already off by the first status read")
        else:
            _fenced(st, hv, op, "power confirmed off")
        return
    if hv.self_fence is not None and not hv.alive:
        # The host's own report (written during its last lease) says its watchdog resets it
        # this long after it loses the lease.
        lost = st.lost_at.get(hv.name, st.status.leader_since)
        if st.now >= lost + hv.self_fence + st.cfg.watchdog_margin:
            _fenced(st, hv, op, f"watchdog: lease expired and its self-fence time ({hv.self_fence:g}s) elapsed")
            return
    done = {s.detail.get("attempt") for s in fences}
    in_flight = hv.name in st.inflight and st.inflight[hv.name] not in done
    if hv.alive and not in_flight:
        # Its lease came back and no fence confirmed power off, so nothing of it was moved: call
        # the failover off instead of fencing a host that cooperates again (a failing device
        # would otherwise leave it in fencing for good, its crashed VMs never restarted).
        _call_off(st, hv, op, "lease back; no fence confirmed power off")
        return
    stale_off = bool(fences) and fences[-1] in said_off
    if stale_off and not in_flight and not hv.alive:
        # Off, but said before the host's last lease grant: it may have been powered on since.
        st.dispatch_fence(hv.name, op.id)
        return
    if fences and not stale_off:  # raised while a retry is in flight too, until fencing succeeds
        last = fences[-1]
        st.alert("fence_failed", host=hv.name,
                 message=f"fencing {last.detail.get('result')}: {last.detail.get('reason', '')}; "
                         "no recovery until fencing succeeds or an operator runs 'haagent fence ack'")
    if in_flight or hv.alive:
        return
    if fences and st.now - st.issued_at.get(hv.name, -1e18) < st.cfg.fence_retry_interval:
        return
    if st.now < st.released.get(hv.name, st.now):
        return  # just released from a storm hold
    if st.storm() and hv.name in st.storm_hold:
        return  # no retry while the storm guard holds it
    st.dispatch_fence(hv.name, op.id)


def _call_off(st: _Step, hv: HostView, op: Op, why: str) -> None:
    st.journal(op.id, hv.name, "done", aborted=why)
    st.alive_after_off.pop(hv.name, None)
    st.inflight.pop(hv.name, None)
    st.s_since.pop(hv.name, None)
    st.change_state(hv.name, S.ACTIVE, why)
    st.actions.append(Event("failover_aborted", host=hv.name, op=op.id))


def _fenced(st: _Step, hv: HostView, op: Op, how: str) -> None:
    st.journal(op.id, hv.name, "fenced", how=how)
    st.change_state(hv.name, S.FENCED, how)
    st.inflight.pop(hv.name, None)
    st.actions.append(Event("host_fenced", host=hv.name, op=op.id, detail={"how": how}))
    _recover(st, hv)


def _fenced_state(st: _Step, hv: HostView, requests) -> None:
    op = st.open_op(hv.name)
    if op is not None:
        _recover(st, hv)
    else:
        st.change_state(hv.name, S.RECOVERING, "recovering (no open operation)")


def _recover(st: _Step, hv: HostView) -> None:
    """Place this host's HA VMs elsewhere (the global VM rule does the placing)."""
    st.change_state(hv.name, S.RECOVERING, "placing its HA VMs")


def _recovering(st: _Step, hv: HostView, requests) -> None:
    op = st.open_op(hv.name)
    stranded = [u for u in st.placed_on((hv.name,)) if _is_ha(st, u)]
    if stranded:
        return  # the VM rule keeps trying; capacity may appear
    if op is not None:
        started = _journal_starts(st, op)
        if not started:
            return
        st.journal(op.id, hv.name, "done")
    st.change_state(hv.name, S.FAILED, "all HA VMs recovered")
    st.actions.append(Event("host_failed", host=hv.name, op=op.id if op else ""))


def _journal_starts(st: _Step, op: Op) -> bool:
    """Journal a ``start`` step per placed VM once its new host reports it; True when all have."""
    place = op.last("place")
    placed: Mapping[str, str] = place.detail.get("placements", {}) if place else {}
    done = {s.detail.get("vm") for s in op.steps if s.step == "start"}
    all_started = True
    for vm, host in sorted(placed.items()):
        if vm in done:
            continue
        hv = st.view.hosts.get(host)
        if hv is not None and vm in hv.running:
            st.journal(op.id, op.host, "start", vm=vm, on=host)
            st.actions.append(Event("vm_started", host=host, vm=vm, op=op.id))
        elif st.placements.get(vm) == host:
            all_started = False
    return all_started


def _failed(st: _Step, hv: HostView, requests) -> None:
    ret = requests.get(("host_return", hv.name))
    if ret is not None:
        st.consume(ret)
        st.change_state(hv.name, S.ACTIVE, "returned by operator")
        return
    after = st.cfg.auto_return_after
    if after is not None and hv.alive and st.now - st.healthy.get(hv.name, st.now) >= after:
        st.change_state(hv.name, S.ACTIVE, f"healthy for {after:g}s (auto_return_after)")


_HANDLERS: dict[S | None, Callable[[_Step, HostView, Mapping], None]] = {
    None: _unknown,
    S.ACTIVE: _active,
    S.DRAINING: _active,
    S.SUSPECT: _suspect,
    S.FENCING: _fencing,
    S.FENCED: _fenced_state,
    S.RECOVERING: _recovering,
    S.FAILED: _failed,
}


# -- VM rules ----------------------------------------------------------------------------------


def _is_ha(st: _Step, uuid: str) -> bool:
    spec = st.view.specs.get(uuid)
    return spec is not None and spec.policy != "none"


def _cooperating(st: _Step, host: str) -> bool:
    hv = st.view.hosts.get(host)
    return hv is not None and hv.alive and st.states.get(host) in TAKES_VMS | {S.DRAINING}


def _running_on(st: _Step, uuid: str) -> list[str]:
    # A confirmed-fenced host without a lease runs nothing: its last report was written before its
    # power went and is stale (reports are not on the lease), so it is not a running copy.
    return [h for h in st.reported.get(uuid, ())
            if st.view.hosts[h].alive or st.states.get(h) not in CONFIRMED_FENCED]


def _vms(st: _Step) -> None:
    frozen: set[str] = set()
    # Only a VM whose reports disagree with its placement (the index's ``odd``), or that this step
    # placed already, can be frozen, adopted or followed: every other one is left as it is.
    for uuid in sorted(st.view.index.odd | {u for u in st.placements.touched if u in st.view.specs}):
        where = _running_on(st, uuid)
        mig = st.view.migrations.get(uuid)
        if len(where) > 1 and not (mig is not None and set(where) == {mig.source, mig.dest}
                                   and _cooperating(st, mig.source) and _cooperating(st, mig.dest)):
            # (Both ends of a live migration list it until the source's next report: in transit,
            # settled by the migration executor once the source stops reporting it.)
            frozen.add(uuid)
            st.alert("vm_running_twice", vm=uuid, message=f"reported running on {', '.join(where)}; "
                     "haagent will not touch it until a human resolves it")
        elif uuid not in st.placements and len(where) == 1 and st.states.get(where[0]) in TAKES_VMS | {S.DRAINING}:
            st.actions.append(SetPlacement(uuid, where[0], "", "adopted: running there"))
            st.placements[uuid] = where[0]
        elif (len(where) == 1 and uuid in st.placements and where[0] != st.placements[uuid]
              and uuid not in st.view.migrations and _cooperating(st, st.placements[uuid])
              and _cooperating(st, where[0])):
            # Moved by hand (virsh migrate): its owner is alive and does not run it, so placement
            # follows the VM rather than the owner starting a second copy.
            old = st.placements[uuid]
            st.actions.append(SetPlacement(uuid, where[0], "", f"followed a live migration from {old}"))
            st.placements[uuid] = where[0]
    for uuid, mig in sorted(st.view.migrations.items()):
        if uuid not in frozen:
            _resolve_migration(st, uuid, mig)
    if st.in_grace:
        return
    # HA VMs whose host is confirmed fenced go elsewhere, by priority (the placer orders them).
    # The storm guard holds fencing, not this: a host confirmed off runs nothing, whatever the cause.
    # A VM whose migration record cannot be read may be on its way anywhere: held (bad_record says why).
    unreadable = {st.keys_of(k)[1] for k, _ in st.view.bad_records if k.endswith("/migration")}
    fenced = [h for h, s in st.states.items() if s in CONFIRMED_FENCED]
    todo = [st.view.specs[u] for u in st.placed_on(fenced)
            if u not in frozen and u not in st.view.migrations and u not in unreadable and _is_ha(st, u)]
    if not todo:
        return
    avoid = frozenset(h for h, s in st.states.items() if s not in TAKES_VMS)
    chosen, missed = st.placer(todo, _view_with(st, arriving=True), avoid)
    by_host: dict[str, dict[str, str]] = {}
    for spec in todo:
        old = st.placements[spec.uuid]
        new = chosen.get(spec.uuid)
        if new is None:
            st.alert("vm_unplaceable", host=old, vm=spec.uuid,
                     message="; ".join(missed.get(spec.uuid, ("no host fits",))))
            continue
        op = st.open_op(old)
        st.actions.append(SetPlacement(spec.uuid, new, op.id if op else "", f"recovery from {old}"))
        st.placements[spec.uuid] = new
        by_host.setdefault(old, {})[spec.uuid] = new
    for old, placed in sorted(by_host.items()):
        op = st.open_op(old)
        if op is not None:
            prior = op.last("place")
            merged = {**(prior.detail.get("placements", {}) if prior else {}), **placed}
            st.journal(op.id, old, "place", placements=merged)


def _view_with(st: _Step, arriving: bool = False) -> ClusterView:
    """The view with this step's host states and placements. With ``arriving``, each VM a live
    migration is moving also takes its room on the target (a stand-in placed there): a failover
    placing VMs meanwhile must not fill a host a migration is about to land on."""
    # (hosts whose state this step did not change are the view's own: the placer's memo knows them)
    hosts = {h: hv if hv.state is st.states.get(h) else replace(hv, state=st.states.get(h))
             for h, hv in st.view.hosts.items()}
    specs, placements = st.view.specs, dict(st.placements)
    if arriving:
        specs = dict(specs)
        cleared = {a.vm for a in st.actions if isinstance(a, ClearMigration)}  # settled in this step
        for u, m in sorted(st.view.migrations.items()):
            spec = specs.get(u) if u not in cleared else None
            if spec is not None and placements.get(u) != m.dest and m.dest in hosts:
                stand_in = replace(spec, uuid=f"{u}@{m.dest}", name=f"{spec.name}@{m.dest}")
                specs[stand_in.uuid] = stand_in
                placements[stand_in.uuid] = m.dest
    return replace(st.view, hosts=hosts, specs=specs, placements=placements)


def _resolve_migration(st: _Step, uuid: str, mig) -> None:
    """A migration whose source or destination died: ask where the VM runs before anything else."""
    src, dst = st.states.get(mig.source), st.states.get(mig.dest)
    dead = {S.SUSPECT, S.FENCING, S.FENCED, S.RECOVERING, S.FAILED}
    if src not in dead and dst not in dead:
        return
    where = set(_running_on(st, uuid))
    if src in (S.SUSPECT, S.FENCING) or dst in (S.SUSPECT, S.FENCING):
        return  # wait for the dead side to be confirmed fenced: only then is "where" the truth
    for side in (mig.source, mig.dest):
        hv = st.view.hosts.get(side)
        if hv is not None and not hv.alive and st.states.get(side) not in CONFIRMED_FENCED:
            return  # no lease and not fenced (e.g. its agent stopped cleanly): its report may be stale
    if uuid not in st.view.specs and uuid not in st.placements:
        # A VM haagent does not manage (host drain --all): no placement to settle, and nothing
        # restarts it; it runs where the hypervisors say (or died with the fenced host).
        st.actions.append(ClearMigration(uuid))
        st.actions.append(Event("migration_resolved", vm=uuid, detail={
            "running_on": sorted(h for h, hv in st.view.hosts.items() if hv.alive and uuid in hv.unmanaged)}))
        return
    if where == {mig.dest}:
        st.actions.append(SetPlacement(uuid, mig.dest, "", "migration completed before the crash"))
        st.placements[uuid] = mig.dest
    elif where == {mig.source}:
        st.actions.append(SetPlacement(uuid, mig.source, "", "migration did not complete; stays on source"))
        st.placements[uuid] = mig.source
    elif not where:
        # Running nowhere a live host reports: it ran on the side that is confirmed off (the other
        # side's live report says it does not run it there). Placed there, recovery restarts it.
        fenced = [h for h in (mig.source, mig.dest) if st.states.get(h) in CONFIRMED_FENCED]
        if fenced and st.placements.get(uuid) != fenced[0]:
            st.actions.append(SetPlacement(uuid, fenced[0], "", "migration cut off by a fenced host; recover it"))
            st.placements[uuid] = fenced[0]
    st.actions.append(ClearMigration(uuid))
    st.actions.append(Event("migration_resolved", vm=uuid, detail={"running_on": sorted(where)}))


def _relocate(st: _Step, req) -> None:
    """An agent gave up restarting a crashed VM in place: place it on another host."""
    uuid = req.vm
    spec = st.view.specs.get(uuid)
    current = st.placements.get(uuid)
    if st.storm() or st.in_grace:
        return  # keep the request: it is handled once the hold ends
    if spec is None and any(k.endswith(f"/vms/{uuid}/spec") for k, _ in st.view.bad_records):
        return  # unreadable now, not gone: keep the request until the spec reads again
    if current is not None and not _cooperating(st, current):
        # Its host no longer holds a lease (or is leaving service): "not running" in its last
        # report proves nothing now. Failover, which needs a confirmed fence, decides instead;
        # the request waits (and is dropped once the VM runs again somewhere).
        return
    if spec is None or current is None or _running_on(st, uuid):
        st.actions.append(ConsumeRequest(req.id))
        return  # gone, or it runs again somewhere: nothing to relocate
    avoid = frozenset(h for h, s in st.states.items() if s not in TAKES_VMS) | {current}
    chosen, missed = st.placer([spec], _view_with(st, arriving=True), avoid)
    if uuid in chosen:
        # Consumed only once placed: an unplaceable VM keeps its request, so the alert below stays
        # raised and the relocation is retried every round until capacity appears.
        st.actions.append(ConsumeRequest(req.id))
        st.actions.append(SetPlacement(uuid, chosen[uuid], "", f"relocated after repeated crashes on {current}"))
        st.placements[uuid] = chosen[uuid]
        st.actions.append(Event("vm_relocated", vm=uuid, host=chosen[uuid], detail={"from": current}))
    else:
        st.alert("vm_unplaceable", host=current, vm=uuid, message="; ".join(missed.get(uuid, ())))


def actions_summary(actions: Iterable[ManagerAction]) -> list[str]:
    """One line per action, for logs and the simulator's golden files."""
    return [_describe(a) for a in actions]


def _describe(a: ManagerAction) -> str:
    if isinstance(a, SetHostState):
        return f"host={a.host} state changed from {a.old.value if a.old else 'none'} to {a.new.value} ({a.reason})"
    if isinstance(a, JournalStep):
        detail = " ".join(f"{k}={v}" for k, v in sorted(a.step.detail.items()))
        return f"op={a.op} step={a.step.step} {detail}".rstrip()
    if isinstance(a, FenceHost):
        return f"fence host={a.host} op={a.op} attempt={a.attempt}"
    if isinstance(a, ReadPower):
        return f"read power host={a.host} (status only: is it off?)"
    if isinstance(a, SetStormHold):
        return f"storm hold: {', '.join(a.hosts) or 'none'}"
    if isinstance(a, DeleteOp):
        return f"forget finished op={a.op}"
    if isinstance(a, ForgetVm):
        return f"forget vm={a.vm} (unmanaged)"
    if isinstance(a, SetPlacement):
        return f"place vm={a.vm} on={a.host} ({a.reason})"
    if isinstance(a, ClearMigration):
        return f"clear migration vm={a.vm}"
    if isinstance(a, StartMigration):
        tuned = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in a.options if v)
        mode = "" if a.mode == "live" else f" mode={a.mode}"
        return (f"migrate vm={a.vm} from={a.source} to={a.dest} op={a.op} attempt={a.attempt} "
                f"deadline={a.deadline:g}{mode}" + (f" ({tuned})" if tuned else ""))
    if isinstance(a, ConsumeRequest):
        return f"consume request {a.id}"
    if isinstance(a, Alert):
        return " ".join(x for x in (f"ALERT {a.name}", _who(a.host, a.vm), a.message) if x)
    if isinstance(a, Event) and a.kind in ("rebalance_advised", "rebalance_started"):
        moves = " ".join(f"{m['name']}:{m['from']}->{m['to']}" for m in a.detail.get("moves", ()))
        return (f"event {a.kind}{' op=' + a.op if a.op else ''} score {a.detail.get('score_before', 0):.4f} -> "
                f"{a.detail.get('score_after', 0):.4f} ({a.detail.get('gib', 0):g} GiB): {moves or 'no moves'}")
    if isinstance(a, Event) and a.kind == "rebalance_finished":
        dropped = a.detail.get("dropped") or []
        return (f"event rebalance_finished op={a.op} moved={a.detail.get('moved', 0)}"
                + (f" dropped={','.join(dropped)}" if dropped else ""))
    if isinstance(a, Event) and a.kind == "rebalance_window_closed":
        return (f"event rebalance_window_closed op={a.op} dropped={a.detail.get('dropped', 0)} "
                f"({','.join(a.detail.get('vms') or [])}; {a.detail.get('reason', '')}; "
                f"{a.detail.get('in_flight', 0)} in flight finish)")
    if isinstance(a, Event):
        hosts = a.detail.get("hosts") if a.kind.startswith("storm_hold") else None
        why = f"({a.detail['reason']})" if a.kind.endswith("_refused") and a.detail.get("reason") else ""
        return " ".join(x for x in (f"event {a.kind}", _who(a.host, a.vm),
                                    f"hosts={','.join(hosts)}" if hosts is not None else "", why) if x)
    return repr(a)


def _who(host: str, vm: str) -> str:
    return " ".join(f"{k}={v}" for k, v in (("host", host), ("vm", vm)) if v)
