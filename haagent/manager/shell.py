"""The leader's shell: the view from the store, the pure step, guarded writes, fence dispatch.

``LeaderShell`` is written once, over three ports, and both the agent daemon and the simulator
drive it:

* ``LeaderStore``: our epoch (None when we do not lead), the decoded view, guarded writes;
* ``FenceDispatch``: start a fence in the background, reporting its journal step when done, and
  read a host's fence devices (status only) for the storm guard, reporting a ``PowerRead``;
* a monotonic clock and a wall clock (journal timestamps are for display only).

What it reports (actions, alerts, a deposition) goes to a ``sink(event, fields)``: the daemon
turns that into logs and metrics, the simulator into its story.

Fencing rules the shell keeps (docs/design.md, "Failover safety rules"): a fence is dispatched
only after the step's transaction, which journals its ``fence_start`` and holds only while this
epoch leads and the host has no lease, has committed; fences run under a cancel event that is set
the moment this shell stops leading (or leads again under a new epoch), and results that come back
under another epoch than the one that dispatched them are dropped, never journaled.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol

from haagent import metrics
from haagent.errors import LeaseExpired, NotLeader, StoreError, StoreUnavailable
from haagent.log import get_logger
from haagent.manager import core
from haagent.manager.notices import alert_notice, step_notices
from haagent.manager.rebalance import Rebalancer
from haagent.state.codec import DecodeMemo, LiveView, action_compares, action_ops, fence_result_step
from haagent.state.view import (Alert, ClusterView, Event, FenceHost, JournalStep, ManagerAction, PowerRead, ReadPower,
                                SetHostState, SetPlacement)
from haagent.model import HostState
from haagent.store.port import Compare, Delete, Put
from haagent.store.election import Election
from haagent.store.keys import Keys
from haagent.store.watch import PrefixCache

from fencing.runner import Fencer, power_verdict

log = get_logger("haagent.manager")

EVENTS_TTL = 3600

Sink = Callable[[str, Mapping[str, Any]], None]


class LeaderStore(Protocol):
    """The store as the leader's shell sees it."""

    def epoch(self) -> int | None:
        """Our leadership epoch now, or None when we do not lead."""

    def view(self) -> ClusterView:
        """The decoded cluster at the latest revision we can read (epoch not set)."""

    def write(self, ops: list[Put | Delete], compares: list[Compare]) -> int:
        """A transaction guarded by our epoch plus ``compares``: its revision, or 0 when one of
        ``compares`` failed (nothing written). Raises NotLeader when our epoch is gone, and
        StoreError when the store cannot be reached."""

    def caught_up(self, revision: int) -> bool:
        """Whether the view now holds ``revision`` (waiting a little if need be)."""

    def events_lease(self) -> int | None:
        """The lease events are put on (they expire on their own), if any."""


class FenceDispatch(Protocol):
    def start(self, action: FenceHost, cancel: threading.Event, done: Callable[[JournalStep], None]) -> None:
        """Fence in the background; call ``done(step)`` with the result's journal step."""

    def read_power(self, action: ReadPower, done: Callable[[PowerRead], None]) -> None:
        """Read the host's fence devices in the background (status only); call ``done`` with the
        answer. The step bounds how long it waits (``storm_read_timeout``)."""


class LeaderShell:
    """Runs the manager step while this process leads."""

    def __init__(self, keys: Keys, config: core.ManagerConfig, placer: core.Placer, store: LeaderStore,
                 fences: FenceDispatch, *, clock: Callable[[], float], wall: Callable[[], float],
                 sink: Sink, wake: Callable[[], None] = lambda: None, mover: core.Placer | None = None,
                 rebalancer: Rebalancer | None = None):
        self.keys, self.config, self.placer, self.store, self.fences = keys, config, placer, store, fences
        self.mover = mover  # plans live migrations (None: the placer)
        self.rebalancer = rebalancer  # plans rebalance rounds (None: no rounds)
        self.clock, self.wall, self.sink, self.wake = clock, wall, sink, wake
        self.status: core.ManagerStatus | None = None
        self.epoch = 0
        self.alerts: frozenset[Alert] = frozenset()
        self._results: queue.Queue[tuple[int, JournalStep]] = queue.Queue()
        self._reads: queue.Queue[tuple[int, PowerRead]] = queue.Queue()
        self._cancel = threading.Event()  # set when the epoch that dispatched the running fences ends
        self.view: ClusterView | None = None  # what the last step decided from

    @property
    def leading(self) -> bool:
        return self.status is not None

    def close(self) -> None:
        self._cancel.set()

    def deposed(self, why: str) -> None:
        """This process no longer leads under the epoch it fenced with: stop its fences."""
        if self.status is not None:
            self.sink("deposed", {"epoch": self.epoch, "reason": why})
        self._cancel.set()
        self._cancel = threading.Event()
        self.status = None
        self.view = None
        if self.alerts:  # no longer ours to raise: the next leader raises what still holds
            self.sink("alerts_dropped", {"alerts": self.alerts})
            self.alerts = frozenset()

    def fence_done(self, epoch: int, step: JournalStep) -> None:
        """A fence finished (any thread): journaled at the next tick if ``epoch`` still leads."""
        self._results.put((epoch, step))
        self.wake()

    def power_done(self, epoch: int, read: PowerRead) -> None:
        """A power read finished (any thread): fed to the next step if ``epoch`` still leads."""
        self._reads.put((epoch, read))
        self.wake()

    def tick(self) -> None:
        epoch = self.store.epoch()
        if epoch is None:
            if self.status is not None:
                self.deposed("leadership lost")
            return
        if self.status is None or self.epoch != epoch:
            if self.status is not None:
                self.deposed(f"epoch changed from {self.epoch} to {epoch}")
            self.status, self.epoch = core.new_status(self.clock()), epoch
            self.sink("started", {"epoch": epoch, "grace_s": self.config.new_leader_grace})
        try:
            self._tick(epoch)
        except NotLeader as exc:
            self.deposed(str(exc))
        except StoreError as exc:
            self.sink("store_error", {"epoch": epoch, "error": str(exc)})

    def _tick(self, epoch: int) -> None:
        view = replace(self.store.view(), epoch=epoch)
        self.sink("store_ok", {})
        # Fence results first, so this step sees them; results of another epoch are dropped.
        results = self._drain(self._results, epoch)
        if results:
            revision = self._write(results, view)
            if revision:
                self.sink("results_committed", {"view": view, "steps": results})
            if not revision or not self.store.caught_up(revision):
                self.sink("stale_view", {"waiting_for": revision})
                return  # decide nothing from a view that does not hold our own last write
            view = replace(self.store.view(), epoch=epoch)
        reads = self._drain(self._reads, epoch)
        for r in reads:
            self.sink("power_read", {"host": r.host, "power": r.power, "detail": r.detail})
        now = self.clock()
        status = core.with_power_reads(self.status, reads, now, self.config) if reads else self.status
        self.status = status  # an answer is kept even if this step's write fails
        self.view = view
        status, actions = core.step(view, status, now, self.config, self.placer, self.mover, self.rebalancer,
                                    self.wall())
        writes = any(not isinstance(a, (Alert, FenceHost, ReadPower)) for a in actions)
        if writes:
            revision = self._write(actions, view)
            if not revision:
                # A condition of the step no longer held (a host renewed its lease as we were about
                # to fence it): nothing was written, nothing is dispatched; decide again next tick.
                self.sink("step_retry", {"reason": "a host's lease changed under the step"})
                return
        rounds = status.rebalance.last
        if rounds is not None and rounds.seq != self.status.rebalance.seq:
            self.sink("rebalance_round", {"round": rounds})
        self.status = status
        for line in core.actions_summary(a for a in actions if not isinstance(a, Alert)):
            self.sink("action", {"line": line, "epoch": epoch})
        if writes:
            self.sink("committed", {"view": view, "actions": actions})
        # The step's transaction (its fence starts) has committed: dispatch now, not after the
        # watch has brought our own write back (a round trip that grows with the cluster's churn).
        for a in actions:
            if isinstance(a, FenceHost):
                self.fences.start(a, self._cancel, lambda step, e=epoch: self.fence_done(e, step))
            elif isinstance(a, ReadPower):
                self.fences.read_power(a, lambda read, e=epoch: self.power_done(e, read))
        self._set_alerts(frozenset(a for a in actions if isinstance(a, Alert)))
        if writes and not self.store.caught_up(revision):
            self.sink("stale_view", {"waiting_for": revision})

    def _drain(self, results: queue.Queue, epoch: int) -> list:
        """What finished for ``epoch``; results of another epoch are dropped (and said so)."""
        out = []
        while True:
            try:
                done_epoch, item = results.get_nowait()
            except queue.Empty:
                return out
            if done_epoch == epoch:
                out.append(item)
            else:
                self.sink("result_dropped", {"op": getattr(item, "op", "power read"), "host": item.host,
                                             "epoch": done_epoch, "current": epoch})

    def _write(self, actions: list[ManagerAction] | list[JournalStep], view: ClusterView) -> int:
        wall, events_lease = self.wall(), self.store.events_lease()
        ops = action_ops(actions, view, self.keys, wall, events_lease)
        if not ops:
            return 0
        if len(ops) <= MAX_TXN_OPS:
            return self.store.write(ops, action_compares(actions, self.keys))
        # More writes than etcd takes in one transaction (a mass event: a rack's switch). Split by
        # host, each host's actions (and its failover's) whole in one transaction; every host
        # being fenced goes in the first, with every fence condition, so a condition that fails
        # still writes nothing. Later parts carry only the epoch guard. The step's decisions
        # (and its fences) count only once every part is written; a part lost to an error is
        # decided again from the view next tick.
        chunks = _split(actions, view, lambda part: len(action_ops(part, view, self.keys, wall, events_lease)))
        revision = 0
        for i, chunk in enumerate(chunks):
            # distinct event keys across parts: they are named after the wall time and position
            part = action_ops(chunk, view, self.keys, wall + i * 1e-6, events_lease)
            if not part:
                continue
            revision = self.store.write(part, action_compares(chunk, self.keys))
            if not revision:
                return 0
        if len(chunks) > 1:
            self.sink("step_split", {"parts": len(chunks), "writes": len(ops)})
        return revision

    def _set_alerts(self, alerts: frozenset[Alert]) -> None:
        for a in sorted(alerts - self.alerts, key=_alert_key):
            self.sink("alert_raised", {"alert": a})
        for a in sorted(self.alerts - alerts, key=_alert_key):
            self.sink("alert_cleared", {"alert": a})
        self.alerts = alerts


MAX_TXN_OPS = 128  # etcd's --max-txn-ops default: more writes in one transaction are refused


def _split(actions: list, view: ClusterView, writes: Callable[[list], int]) -> list[list]:
    """The step's actions in parts of at most MAX_TXN_OPS writes (``writes(part)`` counts them),
    each host's actions and its failover's in one part, the hosts being fenced first."""
    op_host = {op_id: op.host for op_id, op in view.ops.items()}
    op_host.update({a.op: a.host for a in actions if isinstance(a, JournalStep)})
    groups: dict[str, list] = {}
    for a in actions:
        op = getattr(a, "op", "") or getattr(a, "failover", "")
        groups.setdefault(op_host.get(op, getattr(a, "host", "")), []).append(a)
    fenced = {a.host for a in actions if isinstance(a, FenceHost)}
    order = sorted(groups, key=lambda h: (h not in fenced, h))
    chunks: list[list] = [[]]
    for host in order:
        group = groups[host]
        if host not in fenced and chunks[-1] and writes(chunks[-1] + group) > MAX_TXN_OPS:
            chunks.append([])
        chunks[-1].extend(group)
    return chunks


def _alert_key(a: Alert) -> tuple[str, str, str]:
    return (a.name, a.host, a.vm)


# -- figures for the metrics (docs/monitoring.md) -----------------------------------------------

OP_KINDS = ("failover", "drain", "migrate", "return", "rebalance")  # label values; others are "other"
MIGRATION_EVENTS = ("migration_completed", "migration_failed", "migration_resolved")
MIGRATION_RESULTS = ("completed", "failed", "aborted-deadline", "aborted-request")
# Placements written outside a journaled operation, by how the step words their reason.
_REASONS = (("recovery from", "failover"), ("relocated", "relocate"), ("adopted", "adopted"),
            ("followed a live migration", "followed"), ("migration ", "interrupted_migration"))


def placement_reason(a: SetPlacement, op_kind: str) -> str:
    """The ``reason`` label of a placement: its operation's kind, else what its reason says."""
    if op_kind:
        return op_kind if op_kind in OP_KINDS else "other"
    return next((label for prefix, label in _REASONS if a.reason.startswith(prefix)), "other")


def migration_settled(ev: Event, view: ClusterView, kind_of: Callable[[str], str]) -> tuple[str, str]:
    """(kind, result) of a migration the step settled (one of MIGRATION_EVENTS)."""
    if ev.kind == "migration_resolved":  # a side was lost mid-migration; failover resolved it
        mig = view.migrations.get(ev.vm)
        kind, result = kind_of(mig.op) if mig is not None and mig.op else "", "interrupted"
    elif ev.kind == "migration_completed":
        kind, result = kind_of(ev.op), "completed"
    else:
        outcome = str(ev.detail.get("outcome", ""))
        kind, result = kind_of(ev.op), outcome if outcome in MIGRATION_RESULTS else "failed"
    return (kind if kind in OP_KINDS else "other"), result


@dataclass(frozen=True)
class MigrationFigures:
    """The leader's migration and drain gauges, from one view."""

    in_flight: int
    drains: int
    vms_left: Mapping[str, int]  # host being drained -> VMs still placed there


def migration_figures(view: ClusterView) -> MigrationFigures:
    drains = [o for o in view.ops.values() if o.kind == "drain" and not o.finished]
    left = dict.fromkeys(sorted({o.host for o in drains}), 0)
    if left:
        for host in view.placements.values():
            if host in left:
                left[host] += 1
    return MigrationFigures(len(view.migrations), len(drains), left)


def _timed(placer: core.Placer, decision: str, clock: Callable[[], float]) -> core.Placer:
    """``placer``, its time per call observed as one placement decision."""
    def timed(todo, view, avoid):
        started = clock()
        try:
            return placer(todo, view, avoid)
        finally:
            metrics.PLACEMENT_SECONDS.labels(decision=decision).observe(max(0.0, clock() - started))
    return timed


# -- the production ports ----------------------------------------------------------------------


class EtcdLeaderStore:
    """LeaderStore over the agent's Election (epoch, guarded writes) and its watch-fed cache."""

    def __init__(self, keys: Keys, election: Election, cache: PrefixCache, memo: DecodeMemo | None = None):
        self.keys, self.election, self.cache = keys, election, cache
        self._events_lease = 0
        # The view is kept up to date from the keys that changed since the last tick (the cache's
        # journal of its watch events): a tick at 20,000 VMs decodes and indexes only those. Its
        # first read, and one after a resync, decodes everything through the memo; the daemon
        # passes its VM shell's (same thread), which decodes every change while we stand by, so
        # a new leader starts warm.
        self._live = LiveView(keys, memo if memo is not None else DecodeMemo())
        self._cursor: tuple[int, int] | None = None

    def epoch(self) -> int | None:
        lead = self.election.leadership
        return lead.epoch if lead is not None else None

    def view(self) -> ClusterView:
        if self.cache.stale():
            # Neither an event nor a progress answer within the watch's bound: what the cache holds
            # may be behind what other members committed. Decide nothing from it (the watch is
            # already moving to another endpoint).
            raise StoreUnavailable("the watch-fed view is not known to be current")
        everything, changed, _, self._cursor = self.cache.changes(self._cursor)
        if everything is not None:
            self._live.reset(everything)
        else:
            self._live.apply(changed)
        return self._live.view()

    def write(self, ops: list[Put | Delete], compares: list[Compare]) -> int:
        try:
            result = self.election.guarded(ops, compares)
        except LeaseExpired:
            self._events_lease = 0  # the events lease ran out: grant a new one next time
            raise
        return result.revision if result.succeeded else 0

    def caught_up(self, revision: int) -> bool:
        if self.cache.wait_for(revision, 2.0):
            return True
        self.cache.restart()  # our own write did not come back on the stream: re-watch
        return False

    def events_lease(self) -> int | None:
        if not self._events_lease:
            try:
                self._events_lease, _ = self.election.store.grant(EVENTS_TTL)
            except StoreError:
                self._events_lease = 0
        return self._events_lease or None


class ThreadedFences:
    """FenceDispatch over the Fencer port (``FenceRunner``): one fence per host at a time, on a
    small pool, so a hung device never blocks the tick."""

    def __init__(self, fencer: Fencer, clock: Callable[[], float] = time.monotonic, workers: int = 4):
        self.fencer, self.clock = fencer, clock
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fence")
        # Power reads on their own pool, so a hung device read never delays a fence; one at a time:
        # two IPMI logins at once from this process were seen to fail (FenceAuthError) in the lab,
        # and a read that fails counts its host towards the storm. A late answer is no evidence.
        self.reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="power-read")
        self._running: dict[str, Future] = {}

    def start(self, action: FenceHost, cancel: threading.Event, done: Callable[[JournalStep], None]) -> None:
        # One fence per host at a time, and no dispatch is ever dropped: one still running (a
        # deposed epoch's, cancelled and winding down) is waited for first. A dropped dispatch
        # would leave the core waiting forever for a result that never comes.
        previous = self._running.get(action.host)
        log.warning("fencing_host", host=action.host, op=action.op, attempt=action.attempt)

        def run() -> None:
            if previous is not None:
                try:
                    previous.result()
                except Exception:  # its own failure was reported by itself
                    pass
            started = self.clock()
            try:
                result = self.fencer.fence_host(action.host, cancel=cancel)
                outcome, reason = result.outcome.value, result.reason
                devices = {d.device: d.outcome.value for lvl in result.levels for d in lvl.devices}
                already_off = result.found_off
            except Exception as exc:  # a broken plugin must still produce a journaled failure
                outcome, reason, devices, already_off = "failed", f"{type(exc).__name__}: {exc}", {}, False
            took = self.clock() - started  # (the runner counts outcomes: haagent_fence_results_total)
            log.warning("fence_result", host=action.host, op=action.op, result=outcome, reason=reason,
                        duration_s=round(took, 3))
            done(fence_result_step(action.op, action.host, outcome, reason, took, self.clock(), devices,
                                   action.attempt, already_off))

        self._running[action.host] = self.pool.submit(run)

    def read_power(self, action: ReadPower, done: Callable[[PowerRead], None]) -> None:
        def run() -> None:
            try:
                power, detail = power_verdict(self.fencer.status(action.host))
            except Exception as exc:  # a broken plugin: no evidence
                power, detail = "unknown", type(exc).__name__
            done(PowerRead(action.host, action.failover, action.granted_rev, power, detail))

        self.reads.submit(run)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.reads.shutdown(wait=False, cancel_futures=True)


class DaemonSink:
    """The daemon's view of the shell: structured logs, metrics, the failover timeline, and the
    events out (``notify(type, data)``, the webhook queue's ``publish``; it never blocks)."""

    def __init__(self, wall: Callable[[], float] = time.time, notify: Callable[[str, Mapping[str, Any]], Any] | None = None):
        self.wall = wall
        self.notify = notify

    def __call__(self, event: str, f: Mapping[str, Any]) -> None:
        if event == "action":
            log.info("manager_action", action=f["line"], epoch=f["epoch"])
        elif event == "committed":
            self._committed(f["view"], f["actions"])
            self._send(lambda: step_notices(f["view"], f["actions"], self.wall()))
        elif event == "results_committed":
            self._send(lambda: step_notices(f["view"], f["steps"], self.wall()))
        elif event == "alert_raised":
            a = f["alert"]
            log.error("alert_raised", alert=a.name, host=a.host, vm=a.vm, message=a.message)
            metrics.ALERT.labels(name=a.name, host=a.host, vm=a.vm).set(1)
            self._send(lambda: [alert_notice(a, raised=True)])
        elif event == "alert_cleared":
            a = f["alert"]
            log.info("alert_cleared", alert=a.name, host=a.host, vm=a.vm)
            metrics.ALERT.labels(name=a.name, host=a.host, vm=a.vm).set(0)
            self._send(lambda: [alert_notice(a, raised=False)])
        elif event == "alerts_dropped":
            for a in f["alerts"]:
                metrics.ALERT.labels(name=a.name, host=a.host, vm=a.vm).set(0)
            log.info("alerts_dropped", reason="no longer the leader", alerts=sorted(a.name for a in f["alerts"]))
        elif event == "rebalance_round":
            r = f["round"]
            log.info("rebalance_round", result=r.result, mode=r.mode, score=r.score, moves=r.moves, reason=r.reason)
            metrics.REBALANCE_ROUNDS.labels(result=r.result).inc()
            if r.score is not None:
                metrics.REBALANCE_SCORE.set(r.score)
            if r.moves:
                metrics.REBALANCE_MOVES.labels(mode=r.mode).inc(r.moves)
        elif event == "started":
            log.info("manager_started", **f)
            self._send(lambda: [("leader.started", {"epoch": f["epoch"]})])
        elif event == "deposed":
            log.warning("manager_stopped", **f)
        elif event == "power_read":
            log.warning("storm_power_read", **f)
        elif event in ("result_dropped", "stale_view", "store_error"):
            log.warning(f"manager_{event}", **f)
        elif event in ("step_retry", "step_split"):
            log.info(f"manager_{event}", **f)

    def _send(self, notices: Callable[[], list[tuple[str, dict[str, Any]]]]) -> None:
        """Hand ``notices()`` to the webhook queue. Never raises: this runs between a step's
        commit and its fence dispatch, which a bug here must not stop."""
        if self.notify is None:
            return
        try:
            for event_type, data in notices():
                self.notify(event_type, data)
        except Exception:
            log.exception("notify_failed")

    def _committed(self, view: ClusterView, actions: list[ManagerAction]) -> None:
        """Host states, failover phases (seconds from detection to each step), placements by
        reason and settled migrations as metrics."""
        now = self.wall()
        opened = {a.op: a.kind for a in actions if isinstance(a, JournalStep) and a.step.step == "intent"}

        def kind_of(op_id: str) -> str:
            op = view.ops.get(op_id)
            return op.kind if op is not None else opened.get(op_id, "")

        for a in actions:
            if isinstance(a, SetHostState):
                for s in HostState:
                    metrics.HOST_STATE.labels(host=a.host, state=s.value).set(1 if s is a.new else 0)
            elif isinstance(a, SetPlacement):
                metrics.PLACEMENTS.labels(reason=placement_reason(a, kind_of(a.op))).inc()
            elif isinstance(a, Event) and a.kind in MIGRATION_EVENTS:
                kind, result = migration_settled(a, view, kind_of)
                metrics.MIGRATIONS.labels(kind=kind, result=result).inc()
            if not isinstance(a, JournalStep) or kind_of(a.op) != "failover":
                continue  # a drain's, migration's or rebalance's journal is not a failover's timeline
            op = view.ops.get(a.op)
            intent = op.last("intent") if op else None
            if a.step.step == "intent":
                metrics.FAILOVER_PHASE_SECONDS.labels(phase="confirm").observe(float(a.step.detail.get("detect_after", 0)))
                continue
            if intent is None:
                continue
            detected = intent.at - float(intent.detail.get("detect_after", 0))
            metrics.FAILOVER_PHASE_SECONDS.labels(phase=a.step.step).observe(max(0.0, now - detected))
            if a.step.step == "fenced":
                how = str(a.step.detail.get("how", ""))
                metrics.FAILOVERS.labels(how="operator" if how.startswith("operator") else
                                         "watchdog" if how.startswith("watchdog") else "fence").inc()


class LeaderLoop:
    """The daemon's leader: the shared shell over etcd, the fence runner, logs and metrics, plus
    the periodic fence path check."""

    def __init__(self, keys: Keys, election: Election, cache: PrefixCache, config: core.ManagerConfig,
                 fencer: Fencer, placer: core.Placer, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, wake: Callable[[], None] = lambda: None,
                 notify: Callable[[str, Mapping[str, Any]], Any] | None = None,
                 memo: DecodeMemo | None = None, mover: core.Placer | None = None,
                 rebalancer: Rebalancer | None = None):
        self.fencer, self.clock = fencer, clock
        self.fences = ThreadedFences(fencer, clock)
        store = EtcdLeaderStore(keys, election, cache, memo)
        self.shell = LeaderShell(keys, config, _timed(placer, "place", clock), store, self.fences,
                                 clock=clock, wall=wall, sink=DaemonSink(wall, notify), wake=wake,
                                 mover=_timed(mover or placer, "move", clock), rebalancer=rebalancer)
        self._health: Future | None = None
        self._health_due = 0.0
        self._drained: set[str] = set()  # hosts whose VMs-left gauge we set
        self._placer = placer  # untimed: warming it is no placement decision
        self._wake, self._timer, self._timer_at = wake, None, 0.0  # see _wake_when_due
        self._warmed: frozenset[str] = frozenset()  # see _warm_placer
        self._warming: Future | None = None
        self._warmed_at = float("-inf")
        self._warm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="placer-warm")

    @property
    def status(self) -> core.ManagerStatus | None:
        return self.shell.status

    def close(self) -> None:
        self.shell.close()
        self.fences.close()
        if self._timer is not None:
            self._timer.cancel()
        self._warm_pool.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> None:
        self.shell.tick()
        if self.shell.leading:
            self._check_fence_paths()
            self._publish_gauges()
            self._wake_when_due()
            self._warm_placer()

    def _publish_gauges(self) -> None:
        """Migrations in flight and drains from the view the step decided from, every tick (a
        drain can be over within seconds). The imbalance score is the rebalance rounds' (DaemonSink)."""
        view = self.shell.view
        if view is None:
            return
        fig = migration_figures(view)  # (counts placements only while a drain is open)
        metrics.MIGRATIONS_IN_FLIGHT.set(fig.in_flight)
        metrics.DRAINS_IN_PROGRESS.set(fig.drains)
        for host in sorted(self._drained - set(fig.vms_left)):
            metrics.DRAIN_VMS_LEFT.labels(host=host).set(0)  # drained, or the drain was stopped
        for host, n in fig.vms_left.items():
            metrics.DRAIN_VMS_LEFT.labels(host=host).set(n)
        self._drained |= set(fig.vms_left)

    def _wake_when_due(self) -> None:
        """Wake the loop when the step's next timer is due (a suspect host's fence_delay, the end
        of the grace, a retry): otherwise a quiet cluster's leader steps again only at its next
        heartbeat, up to a heartbeat_interval late."""
        status = self.shell.status
        now = self.clock()
        due = core.next_due(status, now, self.shell.config) if status is not None else None
        if due is None or (self._timer is not None and now < self._timer_at <= due):
            return  # nothing due, or a wake-up already set for that time or earlier
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = threading.Timer(due - now + 0.001, self._wake), due
        self._timer.daemon = True
        self._timer.start()

    def _warm_placer(self) -> None:
        """Keep the placer warm: every WARM_EVERY seconds, and at once when a host turns suspect
        (its VMs may need placing a fence later), ask the placer to place nothing, on a thread of
        its own (never delaying a step). That converts every VM and host for the engine, so that a
        placement reconverts only what changed since (the placer's memos, which check every entry
        they reuse): at 20,000 VMs a cold placement took a few hundred milliseconds of CPU. With
        no fence_delay a warm-up begun only at the suspicion raced the placement for the CPU
        (1.3 s at 1,000 hosts); kept warm, each warm-up converts only the few changed reports."""
        status = self.shell.status
        suspects = frozenset(status.suspect_since) if status is not None else frozenset()
        new, self._warmed = not suspects <= self._warmed, suspects
        if self._warming is not None and not self._warming.done():
            return
        since = self.clock() - self._warmed_at
        if since < WARM_EVERY and not (new and since >= WARM_SUSPECT_EVERY):
            return  # warm already; hosts lost one after another (a storm in the making): once is enough
        self._warmed_at = self.clock()
        try:
            view = self.shell.store.view()
        except StoreError:  # no view now: the placement will convert what it needs itself
            return
        placer = self._placer
        self._warming = self._warm_pool.submit(lambda: placer([], view, frozenset()))

    def _check_fence_paths(self) -> None:
        """Every [fencing] check_interval, ask every fence device for its status (never acts)."""
        interval = getattr(getattr(self.fencer, "config", None), "check_interval", 0)
        if not interval or self.clock() < self._health_due or (self._health and not self._health.done()):
            return
        self._health_due = self.clock() + interval
        from fencing.health import FenceHealthCheck

        def run() -> None:
            statuses = FenceHealthCheck(self.fencer).run_once()
            broken = [f"{s.host}/{s.device}" for s in statuses if not s.ok]
            if broken:
                log.error("fence_paths_broken", paths=broken)

        self._health = self.fences.pool.submit(run)


WARM_EVERY = 5.0  # seconds between two placer warm-ups in a quiet cluster (LeaderLoop._warm_placer)
WARM_SUSPECT_EVERY = 1.0  # a new suspect warms it sooner, but not more often than this


def manager_config(config: Any) -> core.ManagerConfig:
    """ManagerConfig from the validated haagent Config."""
    t, m = config.timing, config.manager
    return core.ManagerConfig(
        fence_delay=t.fence_delay, new_leader_grace=t.new_leader_grace, lease_ttl=float(t.lease_ttl),
        storm_threshold=m.storm_threshold, storm_window=m.storm_window, storm_read_timeout=m.storm_read_timeout,
        fence_retry_interval=m.fence_retry_interval, watchdog_margin=m.watchdog_margin,
        auto_return_after=m.auto_return_after, migration=config.migration, rebalance=config.rebalance)
