"""``apc_snmp``: APC PDU outlets over SNMP (pysnmp 7, asyncio), PowerNet-MIB sPDUOutletCtl."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from haagent.errors import FenceAuthError, FenceDeviceError, FenceUnreachable

from fencing.plugin import FenceBadReply, FencePlugin, Option, PowerState

OUTLET_CTL = "1.3.6.1.4.1.318.1.1.4.4.2.1.3"
ON, OFF = 1, 2


def _nothing_listening(address: str, port: int) -> bool:
    """After a timeout: does a connected UDP socket see ICMP port-unreachable? (loopback-fast)."""
    try:
        infos = socket.getaddrinfo(address, port, 0, socket.SOCK_DGRAM)
        with socket.socket(infos[0][0], socket.SOCK_DGRAM) as s:
            s.connect(infos[0][4])
            s.send(b"\x30\x00")
            s.settimeout(0.2)
            s.recv(64)
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED
    return False


class ApcSnmpPlugin(FencePlugin):
    """One APC outlet (``outlet`` is usually set per host) over SNMP v1, v2c or v3."""

    name = "apc_snmp"
    description = "APC PDU outlet over SNMP (sPDUOutletCtl)"
    options = (
        Option("address", "string", required=True, help="PDU host name or IP address"),
        Option("port", "int", default=161, minimum=1, maximum=65535),
        Option("outlet", "int", required=True, per_host=True, minimum=1, maximum=1024,
               help="outlet number feeding this host"),
        Option("snmp_version", "choice", default="2c", choices=("1", "2c", "3")),
        Option("community_file", "path", secret=True, help="file holding the read-write community (v1/v2c)"),
        Option("username", "string", help="SNMPv3 user"),
        Option("auth_password_file", "path", secret=True, help="SNMPv3 auth key file (SHA)"),
        Option("priv_password_file", "path", secret=True, help="SNMPv3 privacy key file (AES-128)"),
        Option("snmp_timeout", "float", default=1.0, minimum=0.05, maximum=30,
               help="s to wait for one SNMP answer"),
    )

    def _auth(self) -> Any:
        from pysnmp.hlapi.v3arch.asyncio import CommunityData, UsmUserData, usmAesCfb128Protocol, usmHMACSHAAuthProtocol

        version = self.opts.get("snmp_version", "2c")
        if version == "3":
            user = self.opts.get("username")
            if not user or not self.opts.get("auth_password_file"):
                raise FenceDeviceError(f"device {self.device}: SNMPv3 needs username and auth_password_file")
            priv = self.secret("priv_password_file") if self.opts.get("priv_password_file") else None
            return UsmUserData(user, self.secret("auth_password_file"), priv,
                               authProtocol=usmHMACSHAAuthProtocol,
                               privProtocol=usmAesCfb128Protocol if priv else None)
        if not self.opts.get("community_file"):
            raise FenceDeviceError(f"device {self.device}: community_file is required for SNMP v{version}")
        return CommunityData(self.secret("community_file"), mpModel=0 if version == "1" else 1)

    def _request(self, timeout: float, value: int | None) -> int:
        address, port = self.opts["address"], int(self.opts.get("port", 161))
        oid = f"{OUTLET_CTL}.{int(self.opts['outlet'])}"
        auth = self._auth()
        snmp_timeout = min(float(self.opts.get("snmp_timeout", 1.0)), max(0.05, timeout / 2))
        retries = max(0, int(timeout // snmp_timeout) - 1)
        where = f"PDU {address}:{port} outlet {self.opts['outlet']}"
        try:
            err_ind, err_status, err_index, var_binds = asyncio.run(
                self._exchange(address, port, auth, oid, value, snmp_timeout, min(retries, 2)))
        except Exception as exc:
            raise FenceDeviceError(f"{where}: SNMP request failed ({type(exc).__name__})") from None
        if err_ind:
            text = str(err_ind)
            if "timeout" in text.lower() or "no snmp response" in text.lower():
                if _nothing_listening(address, port):
                    raise FenceUnreachable(f"{where}: nothing listening (connection refused)")
                raise FenceUnreachable(f"{where}: no SNMP answer within {snmp_timeout:.1f}s "
                                       f"(wrong community, or the PDU is silent)")
            if "auth" in text.lower() or "unknown" in text.lower():
                raise FenceAuthError(f"{where}: SNMPv3 authentication failed ({text})")
            raise FenceUnreachable(f"{where}: {text}")
        if err_status:
            status = err_status.prettyPrint()
            if status in ("noAccess", "authorizationError", "notWritable", "readOnly"):
                raise FenceAuthError(f"{where}: the PDU refused the write ({status}): is this the read-write community?")
            raise FenceDeviceError(f"{where}: the PDU answered {status}")
        return self._outlet_state(where, oid, var_binds)

    @staticmethod
    def _outlet_state(where: str, oid: str, var_binds: Any) -> int:
        """The INTEGER the PDU answered for ``oid``; anything else is a FenceBadReply (never "off")."""
        from pysnmp.proto.rfc1902 import Integer32
        from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

        if not var_binds:
            raise FenceBadReply(f"{where}: the PDU answered with no value")
        name, answer = var_binds[0][0], var_binds[0][1]
        if isinstance(answer, (NoSuchInstance, NoSuchObject, EndOfMibView)):
            # permanent: the outlet number is wrong for this PDU, retrying cannot help
            raise FenceDeviceError(f"{where}: no such outlet on this PDU")
        if str(name) != oid:
            raise FenceBadReply(f"{where}: the PDU answered for {name}, not for the outlet asked")
        # Only an INTEGER is an outlet state: a string "2" from a confused agent is not "off".
        # (rfc1902.Integer is a subclass of Integer32; Counter32/Gauge32 are not INTEGERs.)
        if not isinstance(answer, Integer32):
            raise FenceBadReply(f"{where}: the PDU answered a {type(answer).__name__}, not an outlet state")
        return int(answer)

    @staticmethod
    async def _exchange(address: str, port: int, auth: Any, oid: str, value: int | None,
                        timeout: float, retries: int) -> Any:
        from pysnmp.hlapi.v3arch.asyncio import (ContextData, Integer32, ObjectIdentity, ObjectType, SnmpEngine,
                                                 UdpTransportTarget, get_cmd, set_cmd)

        engine = SnmpEngine()
        try:
            target = await UdpTransportTarget.create((address, port), timeout=timeout, retries=retries)
            if value is None:
                return await get_cmd(engine, auth, target, ContextData(), ObjectType(ObjectIdentity(oid)))
            return await set_cmd(engine, auth, target, ContextData(), ObjectType(ObjectIdentity(oid), Integer32(value)))
        finally:
            engine.close_dispatcher()

    def status(self, timeout: float) -> PowerState:
        state = self._request(timeout, None)
        if state == ON:
            return PowerState.ON
        if state == OFF:
            return PowerState.OFF
        raise FenceBadReply(f"PDU {self.opts['address']}:{self.opts.get('port', 161)} outlet {self.opts['outlet']}: "
                            f"unexpected outlet state {state} (1 is on, 2 is off)")

    def set_power(self, on: bool, timeout: float) -> None:
        self._request(timeout, ON if on else OFF)

    def describe(self, action: str) -> str:
        return (f"apc_snmp set {OUTLET_CTL}.{self.opts.get('outlet')}={ON if action == 'on' else OFF} "
                f"v{self.opts.get('snmp_version', '2c')} {self.opts.get('address')}:{self.opts.get('port', 161)} "
                f"community=***")
