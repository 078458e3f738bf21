"""A model of etcd on the simulator's virtual clock: revisions, leases, transactions, quorum.

Only what haagent relies on is modelled, with etcd's semantics:

* every successful write transaction bumps the revision once; each key keeps its
  create_revision and mod_revision (a key's create_revision is the leader epoch);
* leases have a TTL on the virtual clock; an expired lease deletes its keys (one revision);
  refreshing an unknown or expired lease fails;
* without quorum nothing succeeds: no read, no write, no grant, no refresh, and leases do not
  expire (there is no etcd leader to expire them). When quorum comes back, the new etcd leader
  extends every lease by its TTL, as etcd does (see LAB-NOTES: a lease outlives its holder by
  ~TTL after a leader change).

Reachability (a partitioned host's agent cannot reach the store) is the caller's business: the
simulation checks it before calling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from haagent.store.client import KV, Compare, Delete, Put


class NoQuorum(Exception):
    """The model store has lost quorum: the call failed (an etcd client would time out)."""


# The model store's keys are the production store's KV records: the codec reads both alike.
SimKV = KV


@dataclass
class SimLease:
    id: int
    ttl: float
    expires_at: float


class SimStore:
    """The model etcd. ``now`` is passed in by the caller: the store has no clock of its own."""

    def __init__(self) -> None:
        self.revision = 1
        self.kvs: dict[str, SimKV] = {}
        self.leases: dict[int, SimLease] = {}
        self.quorum = True
        self._next_lease = 0x1000

    # -- quorum -----------------------------------------------------------------------------

    def set_quorum(self, ok: bool, now: float) -> None:
        if ok and not self.quorum:
            # A newly elected etcd leader restarts every lease's countdown.
            for lease in self.leases.values():
                lease.expires_at = now + lease.ttl
        self.quorum = ok

    def _check(self) -> None:
        if not self.quorum:
            raise NoQuorum("etcd has no quorum")

    # -- leases -----------------------------------------------------------------------------

    def grant(self, ttl: float, now: float) -> int:
        self._check()
        self._next_lease += 1
        self.leases[self._next_lease] = SimLease(self._next_lease, ttl, now + ttl)
        return self._next_lease

    def refresh(self, lease_id: int, now: float) -> bool:
        """Keep a lease alive; False when it is unknown (expired or revoked)."""
        self._check()
        lease = self.leases.get(lease_id)
        if lease is None:
            return False
        lease.expires_at = now + lease.ttl
        return True

    def revoke(self, lease_id: int) -> None:
        self._check()
        self._drop_lease(lease_id)

    def expire(self, now: float) -> list[int]:
        """Expire every lease past its deadline (only with quorum); the expired ids, sorted."""
        if not self.quorum:
            return []
        gone = sorted(i for i, lease in self.leases.items() if lease.expires_at <= now)
        for lease_id in gone:
            self._drop_lease(lease_id)
        return gone

    def _drop_lease(self, lease_id: int) -> None:
        if self.leases.pop(lease_id, None) is None:
            return
        doomed = sorted(k for k, kv in self.kvs.items() if kv.lease == lease_id)
        if doomed:
            self.revision += 1
            for key in doomed:
                del self.kvs[key]

    # -- reads and writes -------------------------------------------------------------------

    def get(self, key: str) -> SimKV | None:
        self._check()
        return self.kvs.get(key)

    def snapshot(self, prefix: str) -> tuple[Mapping[str, SimKV], int]:
        """Every key under ``prefix`` and the revision of the read."""
        self._check()
        return {k: kv for k, kv in self.kvs.items() if k.startswith(prefix)}, self.revision

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        ok, rev = self.txn((), (Put(key, value, lease),))
        return rev

    def txn(self, compares: Iterable[Compare], ops: Iterable[Put | Delete]) -> tuple[bool, int]:
        """All compares hold -> apply every op at one new revision. (succeeded, revision)."""
        self._check()
        if not all(self._holds(c) for c in compares):
            return False, self.revision
        ops = list(ops)
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise KeyError(f"lease {op.lease:x} not found")  # etcd: "requested lease not found"
        if not ops:
            return True, self.revision
        self.revision += 1
        for op in ops:
            if isinstance(op, Put):
                value = op.value.encode() if isinstance(op.value, str) else op.value
                old = self.kvs.get(op.key)
                self.kvs[op.key] = SimKV(op.key, value, old.create_revision if old else self.revision,
                                         self.revision, (old.version if old else 0) + 1, op.lease or 0)
            elif op.prefix:
                for key in [k for k in self.kvs if k.startswith(op.key)]:
                    del self.kvs[key]
            else:
                self.kvs.pop(op.key, None)
        return True, self.revision

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
