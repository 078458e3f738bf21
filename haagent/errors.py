"""The project's one error tree. Every error says whether retrying can help.

Adapters translate backend errors (grpc, libvirt, pyghmi, pysnmp, paramiko) into these at the
boundary with ``raise ... from e``; nothing above the adapters sees a backend exception.
"""

from __future__ import annotations


class HaagentError(Exception):
    """Base of every haagent error."""

    transient: bool = False


class TransientError(HaagentError):
    """Retrying the same call later may succeed (timeouts, lost connections, no quorum)."""

    transient = True


class PermanentError(HaagentError):
    """Retrying the same call will fail the same way (bad input, auth, not found)."""

    transient = False


# -- configuration -----------------------------------------------------------------------------


class ConfigError(PermanentError):
    """A configuration file is unreadable or invalid; ``problems`` has one line per field."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems))


# -- etcd store --------------------------------------------------------------------------------


class StoreError(HaagentError):
    """Base of etcd store errors."""


class StoreUnavailable(StoreError, TransientError):
    """No endpoint answered, or the cluster has no quorum."""


class StoreCompacted(StoreError, TransientError):
    """A watch asked for a revision etcd has compacted away: reload, then watch from there."""

    def __init__(self, message: str, compact_revision: int = 0):
        super().__init__(message)
        self.compact_revision = compact_revision


class StoreTimeout(StoreUnavailable):
    """A store call did not finish within its timeout."""


class StoreRequestInvalid(StoreError, PermanentError):
    """etcd rejected the request itself (e.g. a transaction that writes one key twice)."""


class StoreAccessDenied(StoreError, PermanentError):
    """etcd refused us: our client certificate at the TLS handshake, or our role for the request."""


class StoreTlsRefused(StoreAccessDenied):
    """A TLS handshake failed on certificates (ours or the member's): one member's verdict."""


class NotLeader(StoreError, PermanentError):
    """A guarded leader write failed: our epoch is no longer the current one."""


class LeaseExpired(StoreError, TransientError):
    """Our lease expired on the server; a new one must be granted."""


# -- hypervisor --------------------------------------------------------------------------------


class HypervisorError(HaagentError):
    """Base of hypervisor errors."""


class HypervisorUnavailable(HypervisorError, TransientError):
    """libvirtd cannot be reached (connection refused, closed, keepalive timeout)."""


class VmNotFound(HypervisorError, PermanentError):
    """No such domain."""


class InvalidDomain(HypervisorError, PermanentError):
    """Malformed or unsupported domain XML or request."""


class OperationInvalid(HypervisorError, PermanentError):
    """The domain is not in a state that allows the operation."""


class MigrationError(HypervisorError, TransientError):
    """A live migration failed; the result says where the VM really runs."""


class MigrationAborted(MigrationError):
    """A migration was aborted by deadline or by request."""


class MigrationUnsafe(HypervisorError, PermanentError):
    """libvirt refused a migration as unsafe (e.g. storage it cannot prove shared)."""


class NoRouteToHost(HypervisorError, TransientError):
    """The destination libvirtd cannot be reached."""


# -- fencing -----------------------------------------------------------------------------------


class FenceError(HaagentError):
    """Base of fencing errors."""


class FenceUnreachable(FenceError, TransientError):
    """The fence device did not answer (nothing listening, silent, network)."""


class FenceTimeout(FenceError, TransientError):
    """A fence call exceeded its hard deadline."""


class FenceAuthError(FenceError, PermanentError):
    """The fence device rejected our credentials (wrong password, unknown user)."""


class FenceDeviceError(FenceError, PermanentError):
    """The fence device answered with an error or an impossible state."""


# -- lab ---------------------------------------------------------------------------------------


class LabError(PermanentError):
    """The lab could not be built, found or changed (not root, exists already, no such host)."""


# -- placement ---------------------------------------------------------------------------------


class PlacementInputError(PermanentError):
    """Placement input is invalid (missing field, negative size, unknown host, duplicate)."""


class DeliveryFailed(TransientError):
    """A webhook POST that did not get a 2xx answer (unreachable, timed out, refused); retried."""
