"""A model of etcd on the simulator's virtual clock: revisions, leases, transactions, quorum.

It implements the ``Store`` port (``haagent.store.port``), and the store contract suite
(``tests/contract/store``) runs against it and a real etcd alike. Only what haagent relies on is
modelled, with etcd's semantics:

* every successful write transaction bumps the revision once; each key keeps its
  create_revision and mod_revision (a key's create_revision is the leader epoch); a transaction
  that writes one key twice is rejected;
* leases have a TTL on the virtual clock; an expired lease deletes its keys (one revision);
  refreshing an unknown or expired lease returns 0; a put on such a lease fails;
* without quorum nothing succeeds: no read, no write, no grant, no refresh, and leases do not
  expire (there is no etcd leader to expire them). When quorum comes back, the new etcd leader
  extends every lease by its TTL, as etcd does (see LAB-NOTES: a lease outlives its holder by
  ~TTL after a leader change).

Reachability (a partitioned host's agent cannot reach the store) is the caller's business: the
simulation checks it before calling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from haagent.errors import LeaseExpired, StoreRequestInvalid, StoreUnavailable
from haagent.store.port import KV, Compare, Delete, Put, TxnResult


class NoQuorum(StoreUnavailable):
    """The model store has lost quorum: the call failed (an etcd client would time out)."""


# The model store's keys are the production store's KV records: the codec reads both alike.
SimKV = KV


@dataclass
class SimLease:
    id: int
    ttl: float
    expires_at: float


class SimStore:
    """The model etcd. Its clock is the caller's (the simulation's virtual one)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._revision = 1
        self.kvs: dict[str, SimKV] = {}
        self.leases: dict[int, SimLease] = {}
        self.quorum = True
        self._next_lease = 0x1000

    # -- quorum -----------------------------------------------------------------------------

    def set_quorum(self, ok: bool) -> None:
        if ok and not self.quorum:
            # A newly elected etcd leader restarts every lease's countdown.
            for lease in self.leases.values():
                lease.expires_at = self.clock() + lease.ttl
        self.quorum = ok

    def _check(self) -> None:
        if not self.quorum:
            raise NoQuorum("etcd has no quorum")

    # -- leases -----------------------------------------------------------------------------

    def grant(self, ttl: float) -> tuple[int, int]:
        self._check()
        self._next_lease += 1
        self.leases[self._next_lease] = SimLease(self._next_lease, ttl, self.clock() + ttl)
        return self._next_lease, self._revision

    def refresh(self, lease_id: int) -> float:
        """Keep a lease alive: its TTL, or 0 when it is unknown (expired or revoked)."""
        self._check()
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires_at = self.clock() + lease.ttl
        return lease.ttl

    def revoke(self, lease_id: int) -> None:
        self._check()
        self._drop_lease(lease_id)

    def expire(self) -> list[int]:
        """Expire every lease past its deadline (only with quorum); the expired ids, sorted."""
        if not self.quorum:
            return []
        now = self.clock()
        gone = sorted(i for i, lease in self.leases.items() if lease.expires_at <= now)
        for lease_id in gone:
            self._drop_lease(lease_id)
        return gone

    def _drop_lease(self, lease_id: int) -> None:
        if self.leases.pop(lease_id, None) is None:
            return
        doomed = sorted(k for k, kv in self.kvs.items() if kv.lease == lease_id)
        if doomed:
            self._revision += 1
            for key in doomed:
                del self.kvs[key]

    # -- reads and writes -------------------------------------------------------------------

    def revision(self, key: str = "\0") -> int:
        self._check()
        return self._revision

    def get(self, key: str) -> SimKV | None:
        self._check()
        return self.kvs.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[SimKV], int]:
        self._check()
        return [self.kvs[k] for k in sorted(self.kvs) if k.startswith(prefix)], self._revision

    def snapshot(self, prefix: str) -> tuple[Mapping[str, SimKV], int]:
        """Every key under ``prefix`` by key, and the revision of the read (the simulator's view)."""
        self._check()
        return {k: kv for k, kv in self.kvs.items() if k.startswith(prefix)}, self._revision

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        return self.txn((), (Put(key, value, lease),)).revision

    def delete(self, key: str, prefix: bool = False) -> int:
        before = len(self.kvs)
        self.txn((), (Delete(key, prefix),))
        return before - len(self.kvs)

    def txn(self, compare: Iterable[Compare], success: Iterable[Put | Delete],
            failure: Iterable[Put | Delete] = ()) -> TxnResult:
        """All compares hold -> apply ``success`` at one new revision, else ``failure``."""
        self._check()
        ok = all(self._holds(c) for c in compare)
        ops = list(success if ok else failure)
        keys = [o.key for o in ops if isinstance(o, Put) or not o.prefix]
        if len(keys) != len(set(keys)):
            raise StoreRequestInvalid("etcd txn: rejected: duplicate key given in txn request")
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise LeaseExpired("etcd txn: lease not found (expired)")
        if not ops:
            return TxnResult(ok, self._revision)
        changed = False
        for op in ops:
            if isinstance(op, Put):
                value = op.value.encode() if isinstance(op.value, str) else op.value
                old = self.kvs.get(op.key)
                rev = self._revision + 1
                self.kvs[op.key] = SimKV(op.key, value, old.create_revision if old else rev,
                                         rev, (old.version if old else 0) + 1, op.lease or 0)
                changed = True
            elif op.prefix:
                for key in [k for k in self.kvs if k.startswith(op.key)]:
                    del self.kvs[key]
                    changed = True
            elif self.kvs.pop(op.key, None) is not None:
                changed = True
        if changed:
            self._revision += 1
        return TxnResult(ok, self._revision)

    def _holds(self, c: Compare) -> bool:
        kv = self.kvs.get(c.key)
        if c.target == "create":
            actual: object = kv.create_revision if kv else 0
        elif c.target == "mod":
            actual = kv.mod_revision if kv else 0
        elif c.target == "version":
            actual = kv.version if kv else 0
        elif c.target == "value":
            actual = kv.value if kv else None
            want = c.value.encode() if isinstance(c.value, str) else c.value
            return _cmp(actual, c.op, want)
        else:
            raise ValueError(f"unknown compare target {c.target!r}")
        return _cmp(actual, c.op, c.value)


def _cmp(a: object, op: str, b: object) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if a is None or b is None:
        return False
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    raise ValueError(f"unknown compare op {op!r}")
