"""libvirtError -> haagent.errors, in one place (the adapter boundary)."""

from __future__ import annotations

import libvirt

from haagent.errors import (HaagentError, HypervisorError, HypervisorUnavailable, InvalidDomain,
                            MigrationAborted, MigrationError, MigrationUnsafe, NoRouteToHost,
                            OperationInvalid, VmNotFound)

_NOT_FOUND = {libvirt.VIR_ERR_NO_DOMAIN}
_INVALID = {libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_ERR_INVALID_ARG,
            libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_XML_INVALID_SCHEMA,
            libvirt.VIR_ERR_DOM_EXIST, libvirt.VIR_ERR_INVALID_DOMAIN,
            libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED}
_INVALID_OP = {libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}
# Errors that mean "the connection to libvirtd is gone or was never there".
_CONNECTION = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC,
               libvirt.VIR_ERR_AUTH_UNAVAILABLE}
_CONNECTION_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_CLOSED_PHRASES = ("client socket is closed", "Cannot recv data", "Cannot write data",
                   "connection reset", "End of file while reading", "Broken pipe",
                   "Failed to connect socket", "unable to connect to server",
                   "keepalive timeout", "no connection driver")
# In a migration, these say the *destination* could not be reached by the source libvirtd.
_PEER_PHRASES = ("Failed to connect to remote libvirt URI", "unable to connect to server",
                 "No route to host", "Connection refused", "Network is unreachable",
                 "Connection timed out", "Name or service not known")


def translate(e: "libvirt.libvirtError", what: str, migration: bool = False) -> HaagentError:
    """Map one libvirtError to the project's error tree; ``what`` prefixes the message."""
    code = e.get_error_code()
    domain = e.get_error_domain()
    msg = f"{what}: {e.get_error_message() or e}"
    if code in _NOT_FOUND:
        return VmNotFound(msg)
    if code == libvirt.VIR_ERR_OPERATION_ABORTED:
        return MigrationAborted(msg)
    if code == libvirt.VIR_ERR_MIGRATE_UNSAFE:
        return MigrationUnsafe(msg)
    text = str(e.get_error_message() or "")
    if migration and any(p in text for p in _PEER_PHRASES):
        return NoRouteToHost(msg)
    if code in _CONNECTION or (domain in _CONNECTION_DOMAINS and code in (
            libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR)) \
            or any(p in text for p in _CLOSED_PHRASES):
        if code == libvirt.VIR_ERR_NO_CONNECT and "no connection driver" in text:
            return InvalidDomain(msg)  # a URI no driver accepts is bad input, not an outage
        return HypervisorUnavailable(msg)
    if code in _INVALID:
        return InvalidDomain(msg)
    if code in _INVALID_OP:
        return OperationInvalid(msg)
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        # "cannot acquire state change lock": libvirtd is busy with another job on this VM.
        return MigrationError(msg) if migration else HypervisorUnavailable(msg)
    if migration:
        return MigrationError(msg)
    return HypervisorError(msg)
