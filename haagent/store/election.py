"""Leader election on etcd: a lease plus a put-if-absent transaction on ``leader``.

The epoch is the ``leader`` key's create_revision: it only goes up, and every leader write is a
transaction that compares it (``guarded``). A deposed leader's write fails with NotLeader, and
the leader steps down. There is no election helper in python3-etcd3; this is the whole of it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from haagent import metrics
from haagent.errors import NotLeader, StoreError
from haagent.log import get_logger
from haagent.store.client import Compare, Delete, EtcdStore, Put, TxnResult
from haagent.store.keys import Keys
from haagent.store.lease import LeaseEvent, LeaseKeeper

log = get_logger("haagent.election")


@dataclass(frozen=True)
class Leadership:
    host: str
    epoch: int
    lease: int


def read_leader(store: EtcdStore, keys: Keys) -> Leadership | None:
    """The current leader as etcd sees it, or None."""
    kv = store.get(keys.leader)
    if kv is None:
        return None
    try:
        host = json.loads(kv.value)["host"]
    except (ValueError, KeyError, TypeError):
        host = kv.value.decode(errors="replace")
    return Leadership(host, kv.create_revision, kv.lease)


class Election:
    """Campaign, resign, observe; and the one guarded-write helper for leaders."""

    def __init__(self, store: EtcdStore, keys: Keys, host: str, lease: LeaseKeeper):
        self.store = store
        self.keys = keys
        self.host = host
        self.lease = lease
        self._lock = threading.Lock()
        self._leadership: Leadership | None = None
        self._listeners: list[Callable[[Leadership | None, Leadership | None], None]] = []
        lease.subscribe(self._on_lease_event)

    # -- state ------------------------------------------------------------------------------

    @property
    def leadership(self) -> Leadership | None:
        return self._leadership

    @property
    def is_leader(self) -> bool:
        return self._leadership is not None

    def on_change(self, listener: Callable[[Leadership | None, Leadership | None], None]) -> None:
        """``listener(old, new)`` runs on every gain or loss of leadership."""
        self._listeners.append(listener)

    def _set(self, new: Leadership | None, reason: str) -> None:
        with self._lock:
            old, self._leadership = self._leadership, new
        if old == new:
            return
        if new is not None:
            metrics.IS_LEADER.set(1)
            metrics.LEADER_EPOCH.set(new.epoch)
            metrics.LEADERSHIP_CHANGES.labels(change="gained").inc()
            log.info("leadership_gained", host=self.host, epoch=new.epoch, reason=reason)
        else:
            metrics.IS_LEADER.set(0)
            metrics.LEADER_EPOCH.set(0)
            metrics.LEADERSHIP_CHANGES.labels(change="lost").inc()
            log.warning("leadership_lost", host=self.host, epoch=old.epoch if old else 0, reason=reason)
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception:  # one listener's bug must not hide the change from the others
                log.exception("leadership_listener_failed")

    def step_down(self, reason: str) -> None:
        """Stop acting as leader locally (e.g. our lease may have expired while cut off)."""
        self._set(None, reason)

    def _on_lease_event(self, event: LeaseEvent) -> None:
        # The leader key lived on the old lease: it is gone, and so is our leadership.
        if event.kind == "lease_lost" and self._leadership is not None:
            self._set(None, f"lease lost for {event.lost_for:.1f}s")

    # -- campaign / resign ------------------------------------------------------------------

    def try_acquire(self) -> Leadership | None:
        """One campaign attempt: become leader if nobody is; return our leadership or None."""
        lease_id = self.lease.lease_id
        if not lease_id:
            return None
        value = json.dumps({"host": self.host, "lease": lease_id})
        result = self.store.txn(
            [Compare(self.keys.leader, "create", "==", 0)],
            [Put(self.keys.leader, value, lease_id)],
        )
        if result.succeeded:
            # The put created the key in this transaction, so its create_revision is this revision.
            lead = Leadership(self.host, result.revision, lease_id)
            self._set(lead, "campaign won")
            return lead
        current = read_leader(self.store, self.keys)
        if current is not None and current.lease == lease_id and current.host == self.host:
            self._set(current, "already leader on this lease")
            return current
        if self._leadership is not None:
            self._set(None, "leader key held by another")
        return None

    def resign(self) -> None:
        """Give up leadership if we hold it (delete the key only if it is still our epoch)."""
        lead = self._leadership
        if lead is None:
            return
        try:
            self.store.txn([Compare(self.keys.leader, "create", "==", lead.epoch)], [Delete(self.keys.leader)])
        except StoreError as exc:
            log.warning("resign_failed", error=str(exc))
        self._set(None, "resigned")

    def observe(self) -> Leadership | None:
        """Who leads now, as etcd says (not our cached view)."""
        return read_leader(self.store, self.keys)

    # -- guarded writes ---------------------------------------------------------------------

    def guarded(self, ops: Iterable[Put | Delete], compare: Iterable[Compare] = ()) -> TxnResult:
        """Write ``ops`` only while our epoch is current (plus any extra compares).

        Raises NotLeader (and steps down) when the epoch is no longer current. When only the
        extra compares fail, returns a TxnResult with succeeded False.
        """
        lead = self._leadership
        if lead is None:
            raise NotLeader("not the leader")
        ops, compare = list(ops), list(compare)
        epoch_check = Compare(self.keys.leader, "create", "==", lead.epoch)
        result = self.store.txn([epoch_check, *compare], ops)
        if result.succeeded:
            return result
        current = read_leader(self.store, self.keys)
        if current is None or current.epoch != lead.epoch:
            self._set(None, "guarded write rejected: epoch no longer current")
            raise NotLeader(f"epoch {lead.epoch} is no longer current "
                            f"(leader now {current.host + '@' + str(current.epoch) if current else 'none'})")
        return result
