"""The etcd adapter: several endpoints with failover, a timeout on every call, and backend
errors translated into haagent.errors at this boundary.

Nothing outside haagent/store imports etcd3 or grpc. Operations are expressed with the small
vocabulary below (``Put``, ``Delete``, ``Compare``) and translated here.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Sequence

import etcd3
import etcd3.exceptions as etcd_exc
import grpc
from etcd3 import etcdrpc
from etcd3 import transactions as etcd_tx

from haagent import metrics
from haagent.config import EtcdConfig, EtcdEndpoint, parse_endpoint
from haagent.errors import (LeaseExpired, StoreCompacted, StoreError, StoreRequestInvalid, StoreTimeout,
                            StoreUnavailable)
from haagent.log import get_logger
from haagent.store.port import KV, Compare, Delete, Put, TxnResult  # noqa: F401  (the vocabulary, re-exported)

log = get_logger("haagent.store")

# NOTE: python3-etcd3 0.13.0's watch thread calls ``six.itervalues`` without importing six, so
# when a watch stream dies its callbacks are never told and the watch silently goes quiet. Give
# the module the one function it uses; ResumingWatch relies on hearing about dead streams.
import etcd3.watch as _etcd_watch  # noqa: E402

if not hasattr(_etcd_watch, "six"):
    import types

    _etcd_watch.six = types.SimpleNamespace(itervalues=lambda d: iter(list(d.values())))  # type: ignore[attr-defined]

# NOTE: etcd rejects client pings more often than --grpc-keepalive-min-time (5 s by default) with
# GOAWAY "too_many_pings"; 5 s pings still notice a half-open connection long before TCP would.
_GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _to_bytes(v: bytes | str) -> bytes:
    return v if isinstance(v, bytes) else v.encode()


def prefix_end(prefix: str) -> bytes:
    """The range end that makes [prefix, end) cover every key starting with prefix."""
    b = bytearray(prefix.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def translate(exc: BaseException, what: str) -> StoreError:
    """Map an etcd3/grpc exception to the project's error tree."""
    if isinstance(exc, etcd_exc.RevisionCompactedError):
        return StoreCompacted(f"etcd {what}: revision compacted (now {exc.compacted_revision})",
                              exc.compacted_revision)
    if isinstance(exc, etcd_exc.ConnectionTimeoutError | etcd_exc.WatchTimedOut):
        return StoreTimeout(f"etcd {what}: timed out (no quorum or endpoint unreachable)")
    if isinstance(exc, etcd_exc.ConnectionFailedError | etcd_exc.NoServerAvailableError):
        return StoreUnavailable(f"etcd {what}: endpoint unavailable")
    if isinstance(exc, etcd_exc.InternalServerError):
        return StoreUnavailable(f"etcd {what}: server error")
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else ""
        if code == grpc.StatusCode.NOT_FOUND and "lease" in (details or ""):
            return LeaseExpired(f"etcd {what}: lease not found (expired)")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return StoreUnavailable(f"etcd {what}: {details or code}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreTimeout(f"etcd {what}: timed out")
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
            return StoreRequestInvalid(f"etcd {what}: rejected: {details}")
        return StoreUnavailable(f"etcd {what}: {code.name if code else 'error'}: {details}")
    if isinstance(exc, etcd_exc.Etcd3Exception):
        return StoreUnavailable(f"etcd {what}: {type(exc).__name__}")
    if isinstance(exc, ValueError) and "failed node" in str(exc):
        return StoreUnavailable(f"etcd {what}: endpoint marked failed")
    raise exc


class EtcdStore:
    """A thread-safe etcd client over several endpoints.

    A call runs on the current endpoint; when that endpoint is unavailable or times out the call
    moves to the next one, within a total budget of two timeouts. A minority member answers no
    linearizable request, so a partitioned endpoint is left the same way as a dead one.
    """

    def __init__(self, endpoints: Sequence[EtcdEndpoint | str], timeout: float = 2.0,
                 ca_cert: str | None = None, cert: str | None = None, key: str | None = None):
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = tuple(parse_endpoint(e) if isinstance(e, str) else e for e in endpoints)
        self.timeout = timeout
        self._tls = (ca_cert, cert, key)
        self._clients: list[etcd3.MultiEndpointEtcd3Client | None] = [None] * len(self.endpoints)
        self._current = 0
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_config(cls, cfg: EtcdConfig) -> "EtcdStore":
        return cls(cfg.endpoints, cfg.timeout, cfg.ca_cert, cfg.cert, cfg.key)

    # -- connection management --------------------------------------------------------------

    def _client(self, index: int) -> etcd3.MultiEndpointEtcd3Client:
        with self._lock:
            client = self._clients[index]
            if client is None:
                ep = self.endpoints[index]
                ca, cert, key = self._tls
                secure = ep.scheme == "https"
                creds = etcd3.MultiEndpointEtcd3Client.get_secure_creds(ca, key, cert) if secure else None
                # NOTE: time_retry=0: etcd3's Endpoint otherwise refuses to reuse a failed endpoint
                # for 300 s, which turns one blip into a five-minute outage of a single-endpoint client.
                endpoint = etcd3.Endpoint(ep.host, ep.port, secure=secure, creds=creds,
                                          time_retry=0, opts=_GRPC_OPTIONS)
                client = etcd3.MultiEndpointEtcd3Client(endpoints=[endpoint], timeout=self.timeout)
                # NOTE: require a leader on every call and stream: a member cut off from quorum then
                # refuses calls at once and cancels its watch streams (etcd checks every election
                # timeout), instead of keeping a stream open and quiet while writes succeed through
                # the other members. Every call, and the watcher made from this client, sends it.
                client.metadata = (("hasleader", "true"),)
                self._clients[index] = client
            return client

    @property
    def current_endpoint(self) -> EtcdEndpoint:
        return self.endpoints[self._current]

    def call(self, what: str, fn: Callable[[etcd3.MultiEndpointEtcd3Client], Any]) -> Any:
        """Run ``fn(client)`` with endpoint failover; raise a haagent StoreError on failure."""
        if self._closed:
            raise StoreUnavailable(f"etcd {what}: store is closed")
        deadline = time.monotonic() + 2 * self.timeout
        start = self._current
        last: StoreError | None = None
        for step in range(len(self.endpoints)):
            index = (start + step) % len(self.endpoints)
            try:
                result = fn(self._client(index))
            except LeaseExpired:
                raise
            except Exception as exc:  # translated below; anything untranslatable re-raises
                err = translate(exc, what)
                if isinstance(err, (LeaseExpired, StoreRequestInvalid, StoreCompacted)):
                    raise err from exc
                last = err
                metrics.STORE_ERRORS.labels(kind=type(err).__name__).inc()
                log.debug("etcd_call_failed", what=what, endpoint=str(self.endpoints[index]), error=str(err))
                if time.monotonic() >= deadline:
                    break
                continue
            if index != self._current:
                log.info("etcd_endpoint_switched", endpoint=str(self.endpoints[index]))
                self._current = index
            return result
        assert last is not None
        raise last

    def close(self) -> None:
        self._closed = True
        with self._lock:
            for c in self._clients:
                if c is not None:
                    try:
                        c.close()
                    except Exception:  # closing a broken channel must not mask shutdown
                        pass
            self._clients = [None] * len(self.endpoints)

    # -- key/value --------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        resp = self.call("get", lambda c: c.get_response(key))
        return _kv(resp.kvs[0]) if resp.kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under ``prefix`` and the store revision the read was served at."""
        resp = self.call("get_prefix", lambda c: c.get_prefix_response(prefix, sort_order="ascend"))
        return [_kv(kv) for kv in resp.kvs], resp.header.revision

    def revision(self) -> int:
        resp = self.call("get", lambda c: c.get_response("\0"))
        return resp.header.revision

    def put(self, key: str, value: bytes | str, lease: int | None = None) -> int:
        resp = self.call("put", lambda c: c.put(key, _to_bytes(value), lease=lease))
        return resp.header.revision

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete a key (or a prefix); return how many keys went."""
        if prefix:
            resp = self.call("delete", lambda c: c.delete_prefix(key))
        else:
            resp = self.call("delete", lambda c: c.delete(key, return_response=True))
        return resp.deleted

    def txn(self, compare: Iterable[Compare], success: Iterable[Put | Delete],
            failure: Iterable[Put | Delete] = ()) -> TxnResult:
        compare, success, failure = list(compare), list(success), list(failure)

        def run(c: etcd3.MultiEndpointEtcd3Client) -> Any:
            request = etcdrpc.TxnRequest(
                compare=[_compare(cmp).build_message() for cmp in compare],
                success=c._ops_to_requests([_op(o) for o in success]),
                failure=c._ops_to_requests([_op(o) for o in failure]),
            )
            try:
                return c.kvstub.Txn(request, c.timeout, credentials=c.call_credentials, metadata=c.metadata)
            except grpc.RpcError as exc:
                c._manage_grpc_errors(exc)

        resp = self.call("txn", run)
        return TxnResult(resp.succeeded, resp.header.revision)

    # -- leases -----------------------------------------------------------------------------

    def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease; return (lease id, the store revision at grant time)."""

        def run(c: etcd3.MultiEndpointEtcd3Client) -> Any:
            try:
                return c.leasestub.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=int(ttl)), c.timeout,
                                              credentials=c.call_credentials, metadata=c.metadata)
            except grpc.RpcError as exc:
                c._manage_grpc_errors(exc)

        resp = self.call("lease_grant", run)
        return resp.ID, resp.header.revision

    def refresh(self, lease_id: int) -> int:
        """Refresh a lease; return its new TTL (0 means it had already expired)."""
        responses = self.call("lease_refresh", lambda c: list(c.refresh_lease(lease_id)))
        return responses[0].TTL if responses else 0

    def revoke(self, lease_id: int) -> None:
        try:
            self.call("lease_revoke", lambda c: c.revoke_lease(lease_id))
        except LeaseExpired:
            pass

    # -- watches ----------------------------------------------------------------------------

    def add_watch(self, prefix: str, start_revision: int, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Low-level prefix watch on the current endpoint; returns a cancel function.

        ``callback`` gets an etcd3 WatchResponse or an exception (the stream died). Use
        ``haagent.store.watch.ResumingWatch``, which resumes from the last seen revision.
        """
        def run(c: etcd3.MultiEndpointEtcd3Client) -> Any:
            return c, c.add_watch_callback(prefix, callback, range_end=prefix_end(prefix),
                                           start_revision=start_revision)

        client, watch_id = self.call("watch", run)

        def cancel() -> None:
            try:
                client.cancel_watch(watch_id)
            except Exception:  # the stream may already be gone; cancelling is best effort
                pass

        return cancel


def _compare(c: Compare) -> Any:
    target = {"create": etcd_tx.Create, "mod": etcd_tx.Mod, "version": etcd_tx.Version,
              "value": etcd_tx.Value}[c.target](c.key)
    value = _to_bytes(c.value) if c.target == "value" else c.value
    if c.op == "==":
        return target == value
    if c.op == "!=":
        return target != value
    if c.op == "<":
        return target < value
    if c.op == ">":
        return target > value
    raise ValueError(f"unknown compare op {c.op!r}")


def _op(o: Put | Delete) -> Any:
    if isinstance(o, Put):
        return etcd_tx.Put(o.key, _to_bytes(o.value), lease=o.lease)
    return etcd_tx.Delete(o.key, range_end=prefix_end(o.key) if o.prefix else None)
