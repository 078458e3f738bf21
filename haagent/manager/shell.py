"""The leader's shell: view from the watch-fed cache, the pure step, guarded writes, fencing.

One thread (the agent loop) runs ``tick``; fence calls run on a small pool and hand their results
back through a queue, so the journal has a single writer and its step numbers never collide.

Fencing rules the shell keeps (docs/design.md, "Fencing"): a fence is dispatched only after the
step's transaction, which journals its ``fence_start`` and holds only while this epoch leads and
the host has no lease, has been written; fences run under a cancel event that is set the moment
this process stops leading (or leads again under a new epoch), and results that come back under
another epoch than the one that dispatched them are dropped, never journaled.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from haagent import metrics
from haagent.errors import LeaseExpired, StoreError
from haagent.log import get_logger
from haagent.manager import core
from haagent.manager.codec import action_compares, action_ops, build_view, fence_result_step
from haagent.manager.view import Alert, ClusterView, Event, FenceHost, JournalStep, SetHostState
from haagent.model import HostState
from haagent.store.election import Election
from haagent.store.keys import Keys
from haagent.store.watch import PrefixCache

log = get_logger("haagent.manager")

EVENTS_TTL = 3600


class LeaderLoop:
    """Runs the manager step while this agent leads."""

    def __init__(self, keys: Keys, election: Election, cache: PrefixCache, config: core.ManagerConfig,
                 fencer: Any, placer: core.Placer, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, wake: Callable[[], None] = lambda: None):
        self.keys, self.election, self.cache = keys, election, cache
        self.config, self.fencer, self.placer = config, fencer, placer
        self.clock, self.wall, self.wake = clock, wall, wake
        self.status: core.ManagerStatus | None = None
        self.epoch = 0
        self._results: queue.Queue[tuple[int, JournalStep]] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fence")
        self._fencing: dict[str, Future] = {}
        self._cancel = threading.Event()  # set when the epoch that dispatched the running fences ends
        self._alerts: set[Alert] = set()
        self._events_lease = 0
        self._health: Future | None = None
        self._health_due = 0.0

    def close(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def deposed(self, why: str) -> None:
        """This process no longer leads under the epoch it fenced with: stop its fences."""
        if self.status is not None or self._fencing:
            log.warning("manager_stopped", epoch=self.epoch, reason=why,
                        fences_cancelled=sorted(h for h, f in self._fencing.items() if not f.done()))
        self._cancel.set()
        self._cancel = threading.Event()
        self._fencing = {}
        self.status = None

    def tick(self) -> None:
        lead = self.election.leadership
        if lead is None:
            if self.status is not None:
                self.deposed("leadership lost")
            return
        if self.status is None or self.epoch != lead.epoch:
            if self.status is not None:
                self.deposed(f"epoch changed from {self.epoch} to {lead.epoch}")
            self.status, self.epoch = core.new_status(self.clock()), lead.epoch
            log.info("manager_started", epoch=lead.epoch, grace_s=self.config.new_leader_grace)
        kvs, revision = self.cache.snapshot()
        view = build_view(kvs, self.keys, lead.epoch)
        # Fence results first, so this step sees them; results of another epoch are dropped.
        results = []
        while True:
            try:
                epoch, step = self._results.get_nowait()
            except queue.Empty:
                break
            if epoch == lead.epoch:
                results.append(step)
            else:
                log.warning("fence_result_dropped", op=step.op, host=step.host, epoch=epoch, current=lead.epoch)
        if results:
            revision = self._write(results, view)
            if not revision or not self.cache.wait_for(revision, 2.0):
                log.warning("manager_view_stale", waiting_for=revision)
                return  # decide nothing from a view that does not hold our own last write
            kvs, _ = self.cache.snapshot()
            view = build_view(kvs, self.keys, lead.epoch)
        status, actions = core.step(view, self.status, self.clock(), self.config, self.placer)
        for line in core.actions_summary(a for a in actions if not isinstance(a, Alert)):
            log.info("manager_action", action=line, epoch=lead.epoch)
        if any(not isinstance(a, (Alert, FenceHost)) for a in actions):
            revision = self._write(actions, view)
            if not revision:
                # A condition of the step no longer held (a host renewed its lease as we were about
                # to fence it): nothing was written, nothing is dispatched; decide again next tick.
                log.info("manager_step_retry", reason="a host's lease changed under the step")
                return
            if not self.cache.wait_for(revision, 2.0):
                log.warning("manager_view_stale", waiting_for=revision)
        self.status = status
        for a in actions:
            if isinstance(a, FenceHost):
                self._fence(a)
            elif isinstance(a, SetHostState):
                for s in HostState:
                    metrics.HOST_STATE.labels(host=a.host, state=s.value).set(1 if s is a.new else 0)
        self._set_alerts({a for a in actions if isinstance(a, Alert)})
        self._check_fence_paths()

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

        self._health = self._pool.submit(run)

    def _write(self, actions: list, view: ClusterView) -> int:
        if any(isinstance(a, Event) for a in actions) and not self._events_lease:
            try:
                self._events_lease, _ = self.election.store.grant(EVENTS_TTL)
            except StoreError:
                self._events_lease = 0
        ops = action_ops(actions, view, self.keys, self.wall(), self._events_lease or None)
        if not ops:
            return 0
        try:
            result = self.election.guarded(ops, action_compares(actions, self.keys))
        except StoreError as exc:
            if isinstance(exc, LeaseExpired):
                self._events_lease = 0  # the events lease ran out: grant a new one next time
            raise
        if not result.succeeded:
            return 0
        self._export_timeline(actions, view)
        return result.revision

    def _export_timeline(self, actions: list, view: ClusterView) -> None:
        """Failover phases as metrics: seconds from detection to each journaled step."""
        now = self.wall()
        for a in actions:
            if not isinstance(a, JournalStep):
                continue
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

    def _fence(self, action: FenceHost) -> None:
        running = self._fencing.get(action.host)
        if running is not None and not running.done():
            return
        log.warning("fencing_host", host=action.host, op=action.op, attempt=action.attempt)
        epoch, cancel = self.epoch, self._cancel

        def run() -> None:
            started = self.clock()
            try:
                result = self.fencer.fence_host(action.host, cancel=cancel)
                outcome, reason = result.outcome.value, result.reason
                devices = {d.device: d.outcome.value for lvl in result.levels for d in lvl.devices}
                already_off = result.confirmed_off and any(
                    lvl.number == result.level and lvl.devices and all(d.already_off for d in lvl.devices)
                    for lvl in result.levels)
            except Exception as exc:  # a broken plugin must still produce a journaled failure
                outcome, reason, devices, already_off = "failed", f"{type(exc).__name__}: {exc}", {}, False
            took = self.clock() - started
            metrics.FENCE_OPERATIONS.labels(result=outcome).inc()
            log.warning("fence_result", host=action.host, op=action.op, result=outcome, reason=reason,
                        duration_s=round(took, 3))
            self._results.put((epoch, fence_result_step(action.op, action.host, outcome, reason, took, self.clock(),
                                                        devices, action.attempt, already_off)))
            self.wake()  # journal the result now, not at the next heartbeat

        self._fencing[action.host] = self._pool.submit(run)

    def _set_alerts(self, alerts: set[Alert]) -> None:
        for a in alerts - self._alerts:
            log.error("alert_raised", alert=a.name, host=a.host, vm=a.vm, message=a.message)
            metrics.ALERT.labels(name=a.name, host=a.host, vm=a.vm).set(1)
        for a in self._alerts - alerts:
            log.info("alert_cleared", alert=a.name, host=a.host, vm=a.vm)
            metrics.ALERT.labels(name=a.name, host=a.host, vm=a.vm).set(0)
        self._alerts = alerts


def manager_config(config: Any) -> core.ManagerConfig:
    """ManagerConfig from the validated haagent Config."""
    t, m = config.timing, config.manager
    return core.ManagerConfig(
        fence_delay=t.fence_delay, new_leader_grace=t.new_leader_grace, lease_ttl=float(t.lease_ttl),
        storm_threshold=m.storm_threshold, storm_window=m.storm_window,
        fence_retry_interval=m.fence_retry_interval, watchdog_margin=m.watchdog_margin,
        auto_return_after=m.auto_return_after)
