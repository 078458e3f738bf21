"""The etcd adapter: several endpoints with failover, a timeout on every call, and backend
errors translated into haagent.errors at this boundary.

Nothing outside haagent/store imports etcd3 or grpc. Operations are expressed with the small
vocabulary below (``Put``, ``Delete``, ``Compare``) and translated here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

# NOTE: gRPC's C core prints TLS handshake failures to stderr itself ("E1129 ... Decryption error:
# TSI_DATA_CORRUPTED"), around the one-line error this module raises; it reads this at import.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import etcd3  # noqa: E402  (after GRPC_VERBOSITY)
import etcd3.exceptions as etcd_exc  # noqa: E402
import grpc  # noqa: E402
from etcd3 import etcdrpc  # noqa: E402
from etcd3.etcdrpc import kv_pb2  # noqa: E402
from etcd3 import transactions as etcd_tx  # noqa: E402

from haagent import metrics  # noqa: E402
from haagent.config import EtcdConfig, EtcdEndpoint, parse_endpoint  # noqa: E402
from haagent.errors import (LeaseExpired, StoreAccessDenied, StoreCompacted, StoreError,  # noqa: E402
                            StoreRequestInvalid, StoreTimeout, StoreTlsRefused, StoreUnavailable)
from haagent.log import get_logger  # noqa: E402
from haagent.store.port import KV, Compare, Delete, Put, TxnResult  # noqa: E402,F401  (the vocabulary, re-exported)

log = get_logger("haagent.store")

# NOTE: etcd rejects client pings more often than --grpc-keepalive-min-time (5 s by default) with
# GOAWAY "too_many_pings"; 5 s pings still notice a half-open connection long before TCP would.
PAGE_KEYS = 1000  # keys per range answer: ~1 MB of VM specs, well inside gRPC's 4 MiB

_GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def grpc_tls_options(scheme: str) -> list[tuple[str, str]]:
    """gRPC channel options for TLS over etcd's unix socket (``unixs://``).

    NOTE: gRPC takes the server name to verify from the socket's path there (etcd logs
    ``server-name: var%2Flib%2F...``), which no certificate names; the member's certificate must
    name ``localhost`` instead, as ``etcdctl --endpoints unixs://localhost:2379`` expects too.
    """
    return [("grpc.ssl_target_name_override", "localhost")] if scheme == "unixs" else []


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


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # put or delete
    key: str
    value: bytes
    revision: int  # mod_revision of the change
    create_revision: int
    lease: int = 0
    version: int = 0  # the key's version after the change (0 for a delete)


@dataclass(frozen=True)
class WatchBatch:
    """One response of a watch stream: its events in revision order, or none for a progress
    notification, whose ``revision`` is the revision the member had reached when it answered."""

    events: tuple[WatchEvent, ...]
    revision: int

    @property
    def progress(self) -> bool:
        return not self.events


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _grpc_error(exc: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind an exception (python3-etcd3 raises its own from inside the handler)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.RpcError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _details(exc: BaseException) -> str:
    err = _grpc_error(exc)
    try:
        return (err.details() or "") if err is not None and hasattr(err, "details") else ""
    except Exception:  # a half-built error object: nothing more to say
        return ""


# What gRPC says when the TLS handshake, rather than the network, failed.
_SERVER_CERT_REFUSED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")
_CLIENT_CERT_REFUSED = ("TSI_DATA_CORRUPTED", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "UNKNOWN_CA",
                        "CERTIFICATE_EXPIRED")


def asks_for_client_certificate(ep: Any, ca_cert: str | None, timeout: float = 1.0) -> bool:
    """Whether the TLS server at ``ep`` refuses a client that presents no certificate.

    gRPC reports that refusal as the server's alert only when it arrives during the handshake; under
    TLS 1.3 it comes after, and a busy machine often sees just "unavailable". So when a client
    without a certificate fails, one plain handshake and read asks the server itself.
    """
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=ca_cert) if ca_cert else ssl.create_default_context()
    ctx.check_hostname = False  # the question is the client certificate, not the server's name
    try:
        if ep.scheme == "unixs":
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(timeout)
            raw.connect(f"{ep.host[len('unix:'):]}:{ep.port}")
        else:
            raw = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except OSError:
        return False  # not there at all: unavailable is the right answer
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.settimeout(timeout)
            tls.recv(1)  # TLS 1.3: the server's certificate_required alert arrives here
    except ssl.SSLError as exc:
        # etcd (Go) answers a missing certificate with bad_certificate; others certificate_required
        return any(a in str(exc).upper() for a in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "HANDSHAKE_FAILURE"))
    except OSError:
        return False
    finally:
        raw.close()
    return False


def tls_refusal(details: str, ca_cert: str | None, cert: str | None) -> str | None:
    """Why a TLS connection was refused, from gRPC's details and our own files; None if it was not."""
    if any(s in details for s in _SERVER_CERT_REFUSED):
        return (f"TLS: the server's certificate is not trusted by etcd.ca_cert ({ca_cert}) or does not "
                "name the endpoint's host")
    if not any(s in details for s in _CLIENT_CERT_REFUSED):
        return None
    if cert is None:
        return "TLS: etcd requires a client certificate and none is configured (set etcd.cert and etcd.key)"
    from haagent.store.pki import certificate_problem, issued_by

    problem = certificate_problem(cert)
    if problem is not None:
        return f"TLS: etcd refused the client certificate: {problem}"
    if ca_cert is not None and issued_by(cert, ca_cert) is False:
        return (f"TLS: etcd refused the client certificate {cert}: it was not issued by the CA in "
                f"etcd.ca_cert ({ca_cert}), and etcd trusts only its --trusted-ca-file")
    return (f"TLS: etcd refused the client certificate {cert}: not issued by a CA the server trusts "
            "(its --trusted-ca-file)")


def translate(exc: BaseException, what: str, user: str | None = None, cert: str | None = None) -> StoreError:
    """Map an etcd3/grpc exception to the project's error tree (``user``: the CN of ``cert``)."""
    raw = _grpc_error(exc)
    if raw is not None and hasattr(raw, "code") and raw.code() == grpc.StatusCode.PERMISSION_DENIED:
        who = f"etcd user {user!r} (the CN of {cert})" if user else "this client's etcd user (the CN of its certificate)"
        return StoreAccessDenied(f"etcd {what}: permission denied: {who} has no role that allows it "
                                 "(docs/security.md)")
    if raw is not None and "user name is empty" in _details(raw):
        return StoreAccessDenied(f"etcd {what}: etcd has auth enabled and this client presents no user "
                                 "(set etcd.cert and etcd.key: the certificate's CN is the user)")
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
        if code == grpc.StatusCode.FAILED_PRECONDITION and "already exists" in (details or ""):
            return StoreRequestInvalid(f"etcd {what}: rejected: {details}")  # auth: a user or role, as asked
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
        if cert is not None:
            from haagent.store.pki import common_name
            self.user = common_name(cert)  # etcd's user for this client when auth is on
        else:
            self.user = None
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
                secure = ep.scheme in ("https", "unixs")
                creds = etcd3.MultiEndpointEtcd3Client.get_secure_creds(ca, key, cert) if secure else None
                # NOTE: time_retry=0: etcd3's Endpoint otherwise refuses to reuse a failed endpoint
                # for 300 s, which turns one blip into a five-minute outage of a single-endpoint client.
                endpoint = etcd3.Endpoint(ep.host, ep.port, secure=secure, creds=creds,
                                          time_retry=0, opts=_GRPC_OPTIONS + grpc_tls_options(ep.scheme))
                client = etcd3.MultiEndpointEtcd3Client(endpoints=[endpoint], timeout=self.timeout)
                # NOTE: require a leader on every call and stream: a member cut off from quorum then
                # refuses calls at once and cancels its watch streams (etcd checks every election
                # timeout), instead of keeping a stream open and quiet while writes succeed through
                # the other members. Every call, and the watcher made from this client, sends it.
                client.metadata = (("hasleader", "true"),)
                self._clients[index] = client
            return client

    def _translate(self, exc: BaseException, what: str, index: int) -> StoreError:
        """``translate``, naming our certificate's user or the TLS refusal's cause."""
        err = translate(exc, what, self.user, self._tls[1])
        if isinstance(err, StoreUnavailable) and self.endpoints[index].scheme in ("https", "unixs"):
            why = tls_refusal(_details(exc), self._tls[0], self._tls[1])
            if why is None and self._tls[1] is None and asks_for_client_certificate(self.endpoints[index], self._tls[0]):
                why = "TLS: etcd requires a client certificate and none is configured (set etcd.cert and etcd.key)"
            if why is not None:
                return StoreTlsRefused(f"etcd {what} on {self.endpoints[index]}: {why}")
        return err

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
                err = self._translate(exc, what, index)
                # a refused handshake is one member's verdict (another may hold a good certificate);
                # a denied request is etcd's, the same on every member
                if isinstance(err, (LeaseExpired, StoreRequestInvalid, StoreCompacted)) or (
                        isinstance(err, StoreAccessDenied) and not isinstance(err, StoreTlsRefused)):
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
        """Every key under ``prefix`` and the store revision the read was served at.

        Read in pages of ``PAGE_KEYS`` keys, every page at the first page's revision, so the
        result is one consistent snapshot however large the prefix: a whole cluster's keys at
        1,000 hosts and 20,000 VMs are about 18 MB, past gRPC's 4 MiB message limit in one answer.
        """
        end = prefix_end(prefix)
        resp = self.call("get_prefix", lambda c: c.get_range_response(
            prefix, end, sort_order="ascend", limit=PAGE_KEYS))
        revision = resp.header.revision
        kvs = [_kv(kv) for kv in resp.kvs]
        while resp.more:
            after = resp.kvs[-1].key + b"\0"
            resp = self.call("get_prefix", lambda c: c.get_range_response(
                after, end, sort_order="ascend", limit=PAGE_KEYS, revision=revision))
            kvs.extend(_kv(kv) for kv in resp.kvs)
        return kvs, revision

    def revision(self, key: str = "\0") -> int:
        """The store's revision, read through ``key``: with RBAC, a key the caller may read."""
        resp = self.call("get", lambda c: c.get_response(key))
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

    def refresh_many(self, lease_ids: Sequence[int]) -> dict[int, int]:
        """Refresh many leases over one keepalive stream: {lease id: its new TTL, 0 if expired}.

        For one process that keeps many hosts' leases (the scale benchmark's agents): a stream
        per refresh costs about a millisecond of CPU, so 1,000 leases at TTL/3 would not keep up.
        """
        if not lease_ids:
            return {}

        def run(c: etcd3.MultiEndpointEtcd3Client) -> dict[int, int]:
            requests = iter([etcdrpc.LeaseKeepAliveRequest(ID=i) for i in lease_ids])
            ttls: dict[int, int] = {}
            try:
                for resp in c.leasestub.LeaseKeepAlive(requests, c.timeout, credentials=c.call_credentials,
                                                       metadata=c.metadata):
                    ttls[resp.ID] = resp.TTL
                    if len(ttls) == len(lease_ids):
                        break
            except grpc.RpcError as exc:
                c._manage_grpc_errors(exc)
            return ttls

        ttls = self.call("lease_refresh", run)
        return {i: ttls.get(i, 0) for i in lease_ids}

    def revoke(self, lease_id: int) -> None:
        try:
            self.call("lease_revoke", lambda c: c.revoke_lease(lease_id))
        except LeaseExpired:
            pass

    # -- watches ----------------------------------------------------------------------------

    def open_watch(self, prefix: str, start_revision: int,
                   on_response: Callable[[WatchBatch | StoreError], None], *,
                   after: EtcdEndpoint | None = None) -> "WatchStream":
        """Watch every key under ``prefix`` from ``start_revision`` on a stream of its own.

        Tries the endpoint after ``after`` first (the one a dead or quiet stream was on), else
        the current one, then the others, within two timeouts. ``on_response`` gets every
        WatchBatch, then at most one StoreError when the stream ends (StoreCompacted when
        ``start_revision`` was compacted away). Use ``haagent.store.watch.ResumingWatch``.
        """
        if self._closed:
            raise StoreUnavailable("etcd watch: store is closed")
        n = len(self.endpoints)
        first = (self.endpoints.index(after) + 1) % n if after in self.endpoints else self._current
        deadline = time.monotonic() + 2 * self.timeout
        last: StoreError | None = None
        for step in range(n):
            index = (first + step) % n
            try:
                return WatchStream(self._client(index), self.endpoints[index], prefix, start_revision,
                                   on_response, self.timeout)
            except StoreCompacted:
                raise
            except StoreError as err:
                last = err
                metrics.STORE_ERRORS.labels(kind=type(err).__name__).inc()
                log.debug("etcd_call_failed", what="watch", endpoint=str(self.endpoints[index]), error=str(err))
                if time.monotonic() >= deadline:
                    break
        assert last is not None
        raise last


class WatchStream:
    """One prefix watch on a gRPC stream of its own, built here rather than by python3-etcd3.

    python3-etcd3 0.13.0's shared Watcher cannot ask for progress, drops the answers (they carry
    watch id -1), never reports a dead stream (its thread calls ``six`` without importing it)
    and ends every watch of a client when one stream dies. This stream sends the client's
    require-leader metadata (a member that loses its leader cancels it), asks for progress
    notifications, and reports its end once, as a StoreError.
    """

    def __init__(self, client: etcd3.MultiEndpointEtcd3Client, endpoint: EtcdEndpoint, prefix: str,
                 start_revision: int, on_response: Callable[[WatchBatch | StoreError], None],
                 timeout: float):
        self.endpoint = endpoint
        self._on_response = on_response
        self._requests: queue.Queue[Any] = queue.Queue()
        self._created = threading.Event()
        self._ended = False  # the caller was told, or closed it: say nothing more
        self._error: StoreError | None = None
        self._lock = threading.Lock()
        create = etcdrpc.WatchCreateRequest(key=prefix.encode(), range_end=prefix_end(prefix),
                                            start_revision=start_revision, progress_notify=True)
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        try:
            # NOTE: no deadline on the stream: it lives until closed; quiet streams are the
            # caller's to notice (ResumingWatch asks for progress and times the answers).
            self._call = etcdrpc.WatchStub(client.channel).Watch(
                self._request_iter(), credentials=client.call_credentials, metadata=client.metadata)
        except Exception as exc:  # the channel itself (a quarantined endpoint); translated
            raise translate(exc, "watch") from exc
        self._reader = threading.Thread(target=self._read, name=f"watch-stream:{prefix}", daemon=True)
        self._reader.start()
        if not self._created.wait(timeout):
            self.close()
            raise StoreTimeout(f"etcd watch on {endpoint}: not created within {timeout}s")
        if self._error is not None:
            self.close()
            raise self._error

    def request_progress(self) -> None:
        """Ask the member for a progress notification (answered at once by a live member)."""
        self._requests.put(etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest()))

    def close(self) -> None:
        with self._lock:
            self._ended = True
        self._requests.put(None)
        self._call.cancel()

    def _request_iter(self) -> Iterator[Any]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for rs in self._call:
                if not self._handle(rs):
                    return
            self._end(StoreUnavailable(f"etcd watch on {self.endpoint}: stream ended"))
        except grpc.RpcError as exc:
            self._end(translate(exc, f"watch on {self.endpoint}"))

    def _handle(self, rs: Any) -> bool:
        if rs.compact_revision:
            # the start revision was compacted away (etcd says so after, or in, the created reply)
            self._end(StoreCompacted(f"etcd watch: revision compacted (now {rs.compact_revision})",
                                     rs.compact_revision))
            return False
        if rs.canceled:
            self._end(StoreUnavailable(f"etcd watch on {self.endpoint}: cancelled: {rs.cancel_reason}"))
            return False
        if rs.created:
            self._created.set()
            return True
        events = tuple(WatchEvent("delete" if ev.type == kv_pb2.Event.DELETE else "put", ev.kv.key.decode(),
                                  ev.kv.value, ev.kv.mod_revision, ev.kv.create_revision, ev.kv.lease,
                                  ev.kv.version)
                       for ev in rs.events)
        with self._lock:
            if self._ended:
                return False
        self._on_response(WatchBatch(events, rs.header.revision))
        return True

    def _end(self, error: StoreError) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._requests.put(None)  # ends the request iterator, or gRPC's thread waits on it forever
        self._call.cancel()
        if not self._created.is_set():
            self._error = error  # the opener raises it
            self._created.set()
            return
        self._on_response(error)


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
