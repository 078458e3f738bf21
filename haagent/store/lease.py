"""The agent's lease and its keepalive thread.

python3-etcd3 has no background keepalive, and refreshing an expired lease returns TTL 0 without
raising. This thread refreshes at about TTL/3 on a monotonic clock, notices expiry, grants a new
lease, puts the attached keys again, and reports ``lease_lost`` with how long the lease was gone.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from haagent import metrics
from haagent.errors import LeaseExpired, StoreAccessDenied, StoreError
from haagent.log import get_logger
from haagent.store.client import Delete, EtcdStore, Put

log = get_logger("haagent.lease")


@dataclass(frozen=True)
class LeaseEvent:
    """``kind`` is granted, lease_lost, isolated or reconnected."""

    kind: str
    lease_id: int
    grant_revision: int = 0
    lost_for: float = 0.0  # lease_lost: seconds from the estimated expiry until the new grant
    detail: str = ""


Listener = Callable[[LeaseEvent], None]


class LeaseKeeper:
    """Keeps one lease alive and the keys attached to it present."""

    def __init__(self, store: EtcdStore, ttl: int, *, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl = int(ttl)
        self.interval = interval if interval is not None else self.ttl / 3
        self.clock = clock
        self.lease_id = 0
        self.grant_revision = 0
        self._attached: dict[str, bytes] = {}
        self._grant_ops: Callable[[int], list[Put | Delete]] | None = None
        self._on_alive: list[Callable[[], None]] = []
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_ok = 0.0  # monotonic time of the last successful grant or refresh
        self.isolated = False

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: LeaseEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must never stop the keepalive
                log.exception("lease_listener_failed", kind=event.kind)

    @property
    def alive(self) -> bool:
        """Whether, by our own clock, the lease can still be alive on the server."""
        return self.lease_id != 0 and self.clock() - self._last_ok < self.ttl

    def attach(self, key: str, value: bytes | str) -> None:
        """Keep ``key`` present on the lease; it is put now (if granted) and after every re-grant."""
        data = value if isinstance(value, bytes) else value.encode()
        with self._lock:
            self._attached[key] = data
            lease_id = self.lease_id
        if lease_id:
            self.store.put(key, data, lease=lease_id)

    def on_alive(self, callback: Callable[[], None]) -> None:
        """Called on the keepalive thread after every successful grant or refresh (the heartbeat:
        the agent feeds its watchdog here, so only a lease that really renews keeps it fed)."""
        self._on_alive.append(callback)

    def _alive(self) -> None:
        for callback in list(self._on_alive):
            try:
                callback()
            except Exception:  # never let a hook stop the keepalive
                log.exception("lease_alive_hook_failed")

    def on_grant(self, ops: Callable[[int], list[Put | Delete]]) -> None:
        """Extra writes (not on the lease) made in the same transaction as every grant's puts.

        ``ops(lease_id)`` returns them; the agent uses it to stamp ``hosts/<h>/lease`` (the grant
        revision outlives the lease) and to clear its clean-stop record atomically with rejoining.
        """
        self._grant_ops = ops

    def grant(self) -> int:
        """Grant a fresh lease and put every attached key on it; returns the lease id."""
        # The server's countdown starts no earlier than the request is sent: stamp that moment,
        # so our own view of the lease can only expire early, never late.
        sent = self.clock()
        lease_id, revision = self.store.grant(self.ttl)
        with self._lock:
            self.lease_id, self.grant_revision = lease_id, revision
            self._last_ok = sent
            attached = dict(self._attached)
        extra = self._grant_ops(lease_id) if self._grant_ops is not None else []
        if attached or extra:
            self.store.txn([], [Put(k, v, lease_id) for k, v in sorted(attached.items())] + list(extra))
        self._emit(LeaseEvent("granted", lease_id, revision))
        self._alive()
        return lease_id

    def start(self) -> None:
        """Grant (blocking until etcd answers or stop) and start the keepalive thread."""
        while not self._stop.is_set():
            try:
                self.grant()
                break
            except StoreAccessDenied:
                raise  # etcd refuses our certificate or role: waiting cannot change that
            except StoreError as exc:
                log.warning("lease_grant_failed", error=str(exc))
                self._stop.wait(min(1.0, self.interval))
        self._thread = threading.Thread(target=self._run, name="lease-keepalive", daemon=True)
        self._thread.start()

    def stop(self, revoke: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.store.timeout * 3)
        if revoke and self.lease_id:
            try:
                self.store.revoke(self.lease_id)
            except StoreError as exc:
                log.warning("lease_revoke_failed", error=str(exc))

    def _run(self) -> None:
        next_at = self.clock()
        while not self._stop.is_set():
            next_at += self.interval
            self.refresh_once()
            now = self.clock()
            if now > next_at + self.interval:
                log.warning("lease_keepalive_overrun", behind_s=round(now - next_at, 3))
                next_at = now
            self._stop.wait(max(0.0, next_at - self.clock()))

    def refresh_once(self) -> None:
        """One keepalive round: refresh, or re-grant after expiry; never raises."""
        started = self.clock()
        try:
            ttl = self.store.refresh(self.lease_id) if self.lease_id else 0
        except LeaseExpired:
            ttl = 0
        except StoreError as exc:
            self.refresh_failed(started, exc)
            return
        self.refreshed(started, ttl)

    def refresh_failed(self, started: float, exc: StoreError) -> None:
        """A refresh sent at ``started`` got no answer (for a loop that refreshes many leases)."""
        if not self.isolated and started - self._last_ok >= self.interval * 1.5:
            self.isolated = True
            metrics.STORE_ISOLATED.set(1)
            log.warning("etcd_isolated", error=str(exc), since_ok_s=round(started - self._last_ok, 3))
            self._emit(LeaseEvent("isolated", self.lease_id, detail=str(exc)))

    def refreshed(self, started: float, ttl: int) -> None:
        """A refresh sent at ``started`` answered ``ttl`` (0: expired, so re-grant); never raises.
        Public for a loop that refreshes many leases in one stream (``EtcdStore.refresh_many``)."""
        if ttl > 0:
            self._last_ok = started  # when the refresh was sent (see grant)
            metrics.LEASE_REFRESH_SECONDS.observe(self.clock() - started)
            self._reconnected()
            self._alive()
            return
        # NOTE: TTL 0 means the server already deleted our lease and every key on it: another
        # agent may be fencing us. Re-grant, re-put, and let listeners (election, agent) react.
        expired_at = self._last_ok + self.ttl
        old = self.lease_id
        try:
            self.grant()
        except StoreError as exc:
            log.warning("lease_regrant_failed", error=str(exc))
            return
        lost_for = max(0.0, self.clock() - expired_at)
        metrics.LEASE_LOST.inc()
        log.warning("lease_lost", old_lease=old, new_lease=self.lease_id, lost_for_s=round(lost_for, 3))
        self._emit(LeaseEvent("lease_lost", self.lease_id, self.grant_revision, lost_for))
        self._reconnected()

    def _reconnected(self) -> None:
        if self.isolated:
            self.isolated = False
            metrics.STORE_ISOLATED.set(0)
            log.info("etcd_reconnected")
            self._emit(LeaseEvent("reconnected", self.lease_id, self.grant_revision))
