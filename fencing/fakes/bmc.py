"""A fake IPMI 2.0 (lanplus) BMC on pyghmi's server, for tests, the lab and trying fence configs.

It speaks to pyghmi's client, Debian's ``ipmitool -I lanplus -C 3`` and ``fence_ipmilan``.
pyghmi's server has two protocol faults that this class works around:

* Asked for a SHA-256 cipher suite (17), it answers with SHA-1 anyway, and pyghmi's own client
  then dies with ``struct.error``. We reject every proposal other than suite 3
  (HMAC-SHA1 / HMAC-SHA1-96 / AES-CBC-128) with RMCP+ status 0x11, so clients fall back to 3.
* It never answers a RAKP1 for an unknown user, so clients hang (>150 s for pyghmi). We answer
  with RAKP2 status 0x0d (unauthorized name), which clients report as an auth error at once.

Power is a :class:`~fencing.fakes.power.PowerBackend`; faults (``fail``, ``hang``, ``empty``,
``garbled``, ``off_delay``)
can be changed live through a JSON fault file (see :mod:`fencing.fakes.faults`).
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

from fencing.fakes.faults import FaultControl
from fencing.fakes.power import InMemoryPower, PowerBackend

# RMCP+ status codes (IPMI 2.0 table 13-15).
RMCP_NO_CIPHER_MATCH = 0x11
RMCP_UNAUTHORIZED_NAME = 0x0D
# IPMI completion code for "unspecified error": what a sick BMC answers.
CC_UNSPECIFIED = 0xFF
# The one suite pyghmi's server implements: auth HMAC-SHA1, integrity HMAC-SHA1-96, AES-CBC-128.
_SUITE3 = (1, 1, 1)


class _FakeServerSession(serversession.ServerSession):
    """pyghmi's server session with the two protocol faults fixed and live fault injection."""

    def create_open_session_response(self, request: Any) -> bytearray:
        request = bytearray(request)
        proposed = (request[12] & 0x3F, request[20] & 0x3F, request[28] & 0x3F) if len(request) >= 32 else ()
        if proposed != _SUITE3:
            # Answer "no cipher suite match" so the client falls back to suite 3 (pyghmi does
            # by itself; ipmitool needs -C 3) instead of being told SHA-1 while expecting SHA-256.
            self.clientsessionid = request[4:8]
            self.managedsessionid = bytearray(4)
            return bytearray([request[0], RMCP_NO_CIPHER_MATCH, 0, 0]) + request[4:8]
        return super().create_open_session_response(request)

    def _got_rakp1(self, data: Any) -> None:
        data = bytearray(data)
        namelen = data[27] if len(data) > 27 else 0
        username = bytes(data[28:28 + namelen]).decode("utf-8", "replace")
        if namelen and self.authdata.get(username) is None:
            # NOTE: without this answer clients wait forever for a RAKP2 that never comes.
            self.send_payload(bytearray([data[0], RMCP_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid,
                              ipmisession.constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)

    def _handle_ipmi_packet(self, data: Any, sockaddr: Any = None, qent: Any = None) -> Any:
        if self.bmc.silent():
            return None
        return super()._handle_ipmi_packet(data, sockaddr=sockaddr, qent=qent)


class FakeBmc(pyghmi_bmc.Bmc):
    """An IPMI BMC whose chassis power switches a :class:`PowerBackend`.

    ``off_delay``: seconds between accepting "power off" and the power going off.
    ``never_off``: accept "power off" and never switch (a stuck relay).
    ``fault_file``: JSON ``{"mode": "ok"|"fail"|"hang"|"empty"|"garbled", "off_delay": S}`` re-read on every
    request;
    its ``off_delay`` replaces the constructor's. Use :meth:`start`/:meth:`stop` to run it in a
    thread, or :meth:`serve_forever` to run it in the calling thread.
    """

    def __init__(self, users: dict[str, str], address: str = "127.0.0.1", port: int = 623,
                 backend: PowerBackend | None = None, off_delay: float = 0.0,
                 never_off: bool = False, fault_file: str | None = None):
        # A client-pool socket must be iosockets[0] before ours: pyghmi wakes its IO thread
        # through iosockets[0], so ours can then be removed safely on stop().
        ipmisession.Session._assignsocket()
        super().__init__(dict(users), port=port, address=address)
        self.port = self.serversocket.getsockname()[1]  # port 0 asks the kernel for a free one
        self.address = address
        self.backend = backend if backend is not None else InMemoryPower(on=True)
        self.never_off = never_off
        self.faults = FaultControl(fault_file, off_delay)
        self._pending_off: threading.Timer | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0

    # -- faults --------------------------------------------------------------------------------

    def silent(self) -> bool:
        """True while the BMC must drop every packet (stopped, or fault mode ``hang``)."""
        return self._stopping.is_set() or self.faults.current().mode == "hang"

    def sessionless_data(self, data: Any, sockaddr: Any) -> None:
        """pyghmi's dispatcher, but opening our fixed session class, and silent when hung."""
        if self.silent() or len(data) < 22:
            return
        data = bytearray(data)
        if not (data[0] == 6 and data[2:4] == b"\xff\x07"):
            return
        if data[4] == 6:
            payloadtype = data[5]
            if payloadtype == 16:
                _FakeServerSession(self.authdata, self.kg, sockaddr, self.serversocket,
                                   data[16:], self.uuid, bmc=self)
                return
            if payloadtype != 0:
                return
            data = data[2:]
        myaddr, netfnlun = struct.unpack("2B", bytes(data[14:16]))
        netfn, mylun = (netfnlun & 0b11111100) >> 2, netfnlun & 0b11
        if netfn != 6:
            return
        clientaddr, clientlun = data[17:19]
        clientseq, clientlun = clientlun >> 2, clientlun & 0b11
        if data[19] == 0x38:  # get channel authentication capabilities
            if data[20] & 0b10000000 and data[20] & 0b1111 == 0xE:
                self.send_auth_cap(myaddr, mylun, clientaddr, clientlun, clientseq, sockaddr)
        elif data[19] == 0x54:  # get channel cipher suites
            self.send_cipher_suites(myaddr, mylun, clientaddr, clientlun, clientseq, data, sockaddr)

    # -- chassis -------------------------------------------------------------------------------

    def handle_raw_request(self, request: Any, session: Any) -> Any:
        self.requests += 1
        mode = self.faults.current().mode
        if request["netfn"] == 0 and request["command"] in (1, 2) and mode == "fail":
            return session.send_ipmi_response(code=CC_UNSPECIFIED)
        if request["netfn"] == 0 and request["command"] == 1 and mode == "empty":
            return session.send_ipmi_response(code=0)  # success, and no chassis status bytes at all
        if request["netfn"] == 0 and request["command"] == 1 and mode == "garbled":
            # one byte of the three Get Chassis Status owes, with the power bit clear
            return session.send_ipmi_response(code=0, data=[0x00])
        return super().handle_raw_request(request, session)

    def get_power_state(self) -> str:
        return "on" if self.backend.is_on() else "off"

    def power_off(self) -> int:
        if self.never_off:
            return 0
        delay = self.faults.current().off_delay
        with self._lock:
            if delay <= 0:
                self._cancel_pending_off()
                self.backend.power_off()
            elif self._pending_off is None:
                self._pending_off = threading.Timer(delay, self._delayed_off)
                self._pending_off.daemon = True
                self._pending_off.start()
        return 0

    power_shutdown = power_off

    def _delayed_off(self) -> None:
        with self._lock:
            self._pending_off = None
            self.backend.power_off()

    def _cancel_pending_off(self) -> None:
        if self._pending_off is not None:
            self._pending_off.cancel()
            self._pending_off = None

    def power_on(self) -> int:
        with self._lock:
            self._cancel_pending_off()
            self.backend.power_on()
        return 0

    def power_cycle(self) -> int:
        if self.never_off:
            return 0
        with self._lock:
            self._cancel_pending_off()
            self.backend.power_off()
            self.backend.power_on()
        return 0

    power_reset = power_cycle

    def is_active(self) -> bool:
        return self.backend.is_on()

    def get_system_guid(self) -> Any:
        return self.uuid

    def cold_reset(self) -> int:
        return 0

    # -- running -------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Process requests in the calling thread until :meth:`stop`."""
        while not self._stopping.is_set():
            ipmisession.Session.wait_for_rsp(timeout=0.2)

    def start(self) -> "FakeBmc":
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"fake-bmc-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering, release the UDP port and end the serving thread."""
        self._stopping.set()
        with self._lock:
            self._cancel_pending_off()
        ipmisession.Session.bmc_handlers.pop(self.serversocket, None)
        if self.serversocket in ipmisession.iosockets:
            ipmisession.iosockets.remove(self.serversocket)
            # Wake pyghmi's IO thread so its select() drops our socket before we close it.
            wake = ipmisession.iosockets[0]
            try:
                wake.sendto(b"\x01", (ipmisession.myself, wake.getsockname()[1]))
            except OSError:
                pass
            time.sleep(0.05)
        self.serversocket.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def __enter__(self) -> "FakeBmc":
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()
