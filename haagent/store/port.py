"""The store port: the small vocabulary every store speaks, and the ``Store`` protocol.

``haagent.store.client.EtcdStore`` (real etcd) and ``haagent.sim.store.SimStore`` (the
simulator's model, on a virtual clock) both implement ``Store``; one contract suite
(``tests/contract/store``) runs against both. Nothing here imports etcd3 or grpc, so the codec,
the shells and the simulator can use it without loading either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes | str
    lease: int | None = None


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Compare:
    """``Compare(key, "create", "==", 0)``: target is create, mod, version or value."""

    key: str
    target: str
    op: str
    value: Any


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


class Store(Protocol):
    """What the shells may ask of a store. Errors are ``haagent.errors.StoreError`` subclasses:
    ``StoreUnavailable`` without quorum, ``StoreRequestInvalid`` for a transaction etcd rejects
    (one key written twice), ``LeaseExpired`` for a put on a lease that is gone."""

    def get(self, key: str) -> KV | None: ...

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under ``prefix`` (sorted) and the revision of the read."""

    def revision(self, key: str = "\0") -> int:
        """The store's revision, read through ``key`` (with RBAC, one the caller may read)."""

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        """The revision of the write."""

    def delete(self, key: str, prefix: bool = False) -> int:
        """How many keys were deleted."""

    def txn(self, compare: Iterable[Compare], success: Iterable[Put | Delete],
            failure: Iterable[Put | Delete] = ()) -> TxnResult: ...

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its id, the revision at grant time)."""

    def refresh(self, lease_id: int) -> int:
        """Keep a lease alive: its TTL, or 0 when it had already expired (or was revoked)."""

    def revoke(self, lease_id: int) -> None:
        """End a lease now: its keys are deleted. Revoking an unknown lease is not an error."""
