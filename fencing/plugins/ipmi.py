"""``ipmi``: IPMI 2.0 lanplus chassis power through pyghmi's client."""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

from haagent.errors import FenceAuthError, FenceDeviceError, FenceUnreachable

from fencing.plugin import FenceBadReply, FencePlugin, Option, PowerState

# Sessionless "Get Channel Authentication Capabilities" (IPMI 1.5 framing, channel 0xE, admin):
# every lanplus BMC answers it, so it tells "nothing listening" from "silent" before a login.
_AUTH_CAP_PROBE = bytes([
    0x06, 0x00, 0xFF, 0x07,  # RMCP: version, reserved, no ack, class IPMI
    0x00, 0, 0, 0, 0, 0, 0, 0, 0,  # auth type none, sequence 0, session 0
    0x09,  # message length
    0x20, 0x18, 0xC8,  # rsAddr BMC, netfn App (6) << 2, checksum
    0x81, 0x00, 0x38,  # rqAddr, rqSeq, command 0x38
    0x8E, 0x04,  # IPMI 2.0 + channel 0xE (this one), privilege administrator
    0xB5,  # checksum of rqAddr..data
])


def probe(address: str, port: int, timeout: float) -> None:
    """Raise FenceUnreachable unless something answers IPMI on udp address:port within timeout."""
    try:
        infos = socket.getaddrinfo(address, port, 0, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise FenceUnreachable(f"cannot resolve BMC address {address}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)  # a connected UDP socket reports ICMP port-unreachable as ECONNREFUSED
        deadline = time.monotonic() + timeout
        sends = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FenceUnreachable(f"no answer from BMC udp {address}:{port} within {timeout:.1f}s (silent or filtered)")
            if sends < 3:
                try:
                    s.send(_AUTH_CAP_PROBE)
                except OSError as exc:
                    raise FenceUnreachable(f"cannot reach BMC udp {address}:{port}: {exc.strerror}") from None
                sends += 1
            s.settimeout(min(remaining, max(0.1, timeout / 3)))
            try:
                data = s.recv(512)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    raise FenceUnreachable(f"nothing listening on BMC udp {address}:{port} (connection refused)") from None
                raise FenceUnreachable(f"cannot reach BMC udp {address}:{port}: {exc.strerror}") from None
            if len(data) >= 4 and data[0] == 0x06:
                return


# pyghmi's client loses a wake-up: a reply that its I/O thread reads before the caller has queued
# its wait is only noticed when that wait times out, 0.5-1 s later (its retransmit timer). On a
# BMC a few milliseconds away that is most first calls of a process and about one call in five
# after (measured against the project's fake BMC: 0.7-0.96 s, where ipmitool never took more than
# 40 ms). Waking every waiter at least every WAIT_SLICE makes the caller look at the replies
# already read; its own loops re-check their deadlines, so nothing else changes.
WAIT_SLICE = 0.01


def _bound_pyghmi_waits(ipmisession: Any) -> None:
    """Cap each of pyghmi's I/O waits at WAIT_SLICE (once per process)."""
    wait = ipmisession._io_wait
    if getattr(wait, "haagent_bounded", False):
        return

    def bounded(timeout: float, myaddr: Any = None, evq: Any = None) -> Any:
        return wait(min(timeout, WAIT_SLICE), myaddr, evq)

    bounded.haagent_bounded = True  # type: ignore[attr-defined]
    ipmisession._io_wait = bounded


def _session_class(cipher_suite: int) -> Any:
    """pyghmi's Session, limited to suite 3 (SHA-1) when configured; 17 tries SHA-256 first."""
    from pyghmi.ipmi.private import session as ipmisession

    _bound_pyghmi_waits(ipmisession)
    if cipher_suite == 17:
        return ipmisession.Session

    class Suite3Session(ipmisession.Session):
        def _initsession(self) -> None:
            super()._initsession()
            self.attemptedhash = 1  # start (and stay) with HMAC-SHA1, AES-CBC-128

    return Suite3Session


class IpmiPlugin(FencePlugin):
    """Chassis power status/off/on over IPMI 2.0 lanplus (pyghmi), cipher suite 3 or 17."""

    name = "ipmi"
    description = "IPMI 2.0 lanplus BMC (pyghmi)"
    options = (
        Option("address", "string", required=True, help="BMC host name or IP address"),
        Option("port", "int", default=623, minimum=1, maximum=65535),
        Option("username", "string", required=True),
        Option("password_file", "path", required=True, secret=True, help="file holding the BMC password"),
        Option("cipher_suite", "int", default=3, choices=(3, 17), minimum=3, maximum=17,
               help="3: HMAC-SHA1/AES (works everywhere); 17: SHA-256, falling back to 3"),
        Option("privilege", "choice", default="administrator", choices=("administrator", "operator")),
        Option("probe_timeout", "float", default=1.0, minimum=0.05, maximum=30,
               help="s to wait for the pre-login reachability probe"),
    )

    def _with_session(self, timeout: float, netfn: int, command: int, data: tuple[int, ...] = (),
                      refused: type[FenceDeviceError] = FenceDeviceError) -> dict[str, Any]:
        from pyghmi import exceptions as pyghmi_exc

        address, port = self.opts["address"], int(self.opts.get("port", 623))
        started = time.monotonic()
        probe(address, port, min(float(self.opts.get("probe_timeout", 1.0)), max(0.05, timeout / 2)))
        password = self.secret("password_file")
        cls = _session_class(int(self.opts.get("cipher_suite", 3)))
        privlevel = 4 if self.opts.get("privilege", "administrator") == "administrator" else 3
        where = f"BMC {address}:{port}"
        try:
            # NOTE: bytes, not str: pyghmi files half-open sessions under the caller's key but removes
            # them under the encoded one, so str credentials leave a stale session that breaks the
            # next login to the same BMC in this process.
            sess = cls(bmc=address, userid=self.opts["username"].encode(), password=password.encode(), port=port,
                       privlevel=privlevel, keepalive=False)
        except pyghmi_exc.IpmiException as exc:
            raise self._translate(exc, where, password) from None
        except Exception as exc:  # pyghmi raises struct.error and friends on malformed answers
            raise FenceDeviceError(f"{where}: login failed ({type(exc).__name__})") from None
        try:
            if time.monotonic() - started > timeout:
                raise FenceUnreachable(f"{where}: login took longer than {timeout:.1f}s")
            response = sess.raw_command(netfn=netfn, command=command, data=data)
        except pyghmi_exc.IpmiException as exc:
            raise self._translate(exc, where, password) from None
        finally:
            try:
                sess.logout()
            except Exception:
                pass
        if not isinstance(response, dict):
            raise FenceUnreachable(f"{where}: no response")
        code = response.get("code")
        if code == 0xFFFF or response.get("error") == "timeout":  # pyghmi's own "no answer"
            raise FenceUnreachable(f"{where}: command 0x{command:02x}: no answer")
        if code:
            raise refused(f"{where}: command 0x{command:02x} refused with completion code "
                          f"0x{code:02x} ({response.get('error', 'error')})")
        return response

    @staticmethod
    def _translate(exc: Exception, where: str, password: str) -> Exception:
        text = str(exc).replace(password, "***") if password else str(exc)
        lowered = text.lower()
        if "password" in lowered or "integrity" in lowered:
            return FenceAuthError(f"{where}: wrong password (the BMC's RAKP2 check failed)")
        if "unauthorized name" in lowered or "invalid user" in lowered:
            return FenceAuthError(f"{where}: unknown user (RAKP2: unauthorized name)")
        if "timeout" in lowered or "no longer connected" in lowered or "failed to initialize" in lowered:
            return FenceUnreachable(f"{where}: {text}")
        if "privilege" in lowered or "role" in lowered:
            return FenceAuthError(f"{where}: {text}")
        return FenceDeviceError(f"{where}: {text}")

    def status(self, timeout: float) -> PowerState:
        # Only an explicit answer says "off": the runner reads status first, so a reply read as off
        # by default would skip the power-off and confirm a running host. A refused request, a
        # reply without data, or one shorter than the 3 bytes Get Chassis Status owes (IPMI 2.0
        # 28.2) is a FenceBadReply, retried within power_timeout.
        response = self._with_session(timeout, 0x00, 0x01, refused=FenceBadReply)  # Get Chassis Status
        data = response.get("data")
        where = f"BMC {self.opts['address']}:{self.opts.get('port', 623)}: chassis status reply"
        if not data:
            raise FenceBadReply(f"{where} carries no power state (no data)")
        if len(data) < 3 or not all(isinstance(b, int) and 0 <= b <= 0xFF for b in data[:3]):
            raise FenceBadReply(f"{where} is too short or malformed ({len(data)} bytes, 3 expected)")
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    def set_power(self, on: bool, timeout: float) -> None:
        self._with_session(timeout, 0x00, 0x02, (0x01 if on else 0x00,))  # Chassis Control: up / down

    def describe(self, action: str) -> str:
        return (f"ipmi chassis power {action} lanplus -C {self.opts.get('cipher_suite', 3)} "
                f"-H {self.opts.get('address')} -p {self.opts.get('port', 623)} "
                f"-U {self.opts.get('username')} password=***")
