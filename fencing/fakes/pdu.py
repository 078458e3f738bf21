"""A fake APC PDU: a pysnmp 7 responder serving the APC MasterSwitch outlet table over SNMP v1/v2c.

OIDs (PowerNet-MIB): ``sPDUOutletCtl.N`` = .1.3.6.1.4.1.318.1.1.4.4.2.1.3.N reads 1 (on) or 2 (off)
and accepts 1 (on), 2 (off), 3 (reboot); ``sPDUOutletName.N`` = ...2.1.4.N. ``sysObjectID`` is an
APC id that Debian's ``fence_apc_snmp`` maps to this table. The read-only community may read, the
read-write one may also set; anything else gets no answer, as on a real agent.

Each outlet switches a :class:`~fencing.fakes.power.PowerBackend` (in-memory by default), so the lab
can put a host behind an outlet. ``delay`` seconds pass between an accepted set and the switch.
Fault modes (``fault_file``): ``fail`` refuses sets with genErr, ``hang`` drops every datagram,
``empty`` and ``garbled`` answer outlet reads with an empty string or state 0.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Sequence

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.carrier.asyncio.dispatch import AsyncioDispatcher
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error
from pysnmp.smi.instrum import AbstractMibInstrumController

from fencing.fakes.faults import FaultControl
from fencing.fakes.power import InMemoryPower, PowerBackend

OUTLET_CTL = (1, 3, 6, 1, 4, 1, 318, 1, 1, 4, 4, 2, 1, 3)
OUTLET_NAME = (1, 3, 6, 1, 4, 1, 318, 1, 1, 4, 4, 2, 1, 4)
SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_OBJECT_ID = (1, 3, 6, 1, 2, 1, 1, 2, 0)
APC_MASTERSWITCH_ID = (1, 3, 6, 1, 4, 1, 318, 1, 3, 4, 1)  # not a newer table: fence_apc_snmp uses sPDUOutletCtl
ON, OFF, REBOOT = 1, 2, 3
_RO_AREA, _RW_AREA = "ro-area", "rw-area"  # security names of the two communities


class _SilentWhenHung(udp.UdpTransport):
    """The UDP transport, dropping every datagram while the fault mode is ``hang``."""

    faults: FaultControl | None = None

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        if self.faults is not None and self.faults.current().mode == "hang":
            return
        super().datagram_received(datagram, transportAddress)


class _OutletMib(AbstractMibInstrumController):
    """The handful of objects a PDU fencing client reads and writes."""

    def __init__(self, pdu: "FakePdu"):
        self.pdu = pdu

    def _objects(self) -> list[tuple[tuple[int, ...], Any]]:
        objs: list[tuple[tuple[int, ...], Any]] = [
            (SYS_DESCR, rfc1902.OctetString("APC fake PDU (haagent sim)")),
            (SYS_OBJECT_ID, rfc1902.ObjectIdentifier(APC_MASTERSWITCH_ID)),
        ]
        mode = self.pdu.faults.current().mode
        for n in range(1, len(self.pdu.outlets) + 1):
            if mode == "empty":  # a sick agent: an outlet state that holds nothing
                state: Any = rfc1902.OctetString("")
            elif mode == "garbled":  # neither on (1) nor off (2)
                state = rfc1902.Integer32(0)
            else:
                state = rfc1902.Integer32(ON if self.pdu.outlets[n - 1].is_on() else OFF)
            objs.append((OUTLET_CTL + (n,), state))
        for n in range(1, len(self.pdu.outlets) + 1):
            objs.append((OUTLET_NAME + (n,), rfc1902.OctetString(f"Outlet {n}")))
        return sorted(objs, key=lambda o: o[0])

    def read_variables(self, *varBinds: Any, **context: Any) -> list[Any]:
        objs = dict(self._objects())
        out = []
        for name, _ in varBinds:
            key = tuple(name)
            out.append((name, objs[key] if key in objs else rfc1905.noSuchInstance))
        return out

    def read_next_variables(self, *varBinds: Any, **context: Any) -> list[Any]:
        objs = self._objects()
        out = []
        for name, _ in varBinds:
            key = tuple(name)
            nxt = next(((oid, val) for oid, val in objs if oid > key), None)
            out.append((name, rfc1905.endOfMibView) if nxt is None
                       else (rfc1902.ObjectName(nxt[0]), nxt[1]))
        return out

    def write_variables(self, *varBinds: Any, **context: Any) -> list[Any]:
        request = context["snmpEngine"].observer.get_execution_context("rfc3412.receiveMessage:request")
        writable = str(request["securityName"]) == _RW_AREA
        for idx, (name, value) in enumerate(varBinds):
            if not writable:  # the read-only community: as a real agent answers, noAccess
                raise smi_error.NoAccessError(name=name, idx=idx)
            key = tuple(name)
            if key[:-1] != OUTLET_CTL or not 1 <= key[-1] <= len(self.pdu.outlets):
                raise smi_error.NotWritableError(name=name, idx=idx)
            if int(value) not in (ON, OFF, REBOOT):
                raise smi_error.WrongValueError(name=name, idx=idx)
            if self.pdu.faults.current().mode == "fail":
                raise smi_error.GenError(name=name, idx=idx)
        for name, value in varBinds:
            self.pdu.switch(tuple(name)[-1], int(value))
        return list(varBinds)


class FakePdu:
    """An APC PDU with ``outlets`` outlets on UDP ``address:port`` (0: a free port)."""

    def __init__(self, address: str = "127.0.0.1", port: int = 161, outlets: int = 8,
                 delay: float = 0.0, read_community: str = "public", write_community: str = "private",
                 backends: Sequence[PowerBackend] | None = None, fault_file: str | None = None):
        self.outlets: list[PowerBackend] = list(backends) if backends else [InMemoryPower(True) for _ in range(outlets)]
        self.faults = FaultControl(fault_file, delay)
        self.address = address
        self._read_community = read_community
        self._write_community = write_community
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.bind((address, port))
        except OSError:
            self._sock.close()
            raise
        self.port = self._sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.sets = 0

    def outlet_on(self, n: int) -> bool:
        """Power state of outlet ``n`` (1-based)."""
        return self.outlets[n - 1].is_on()

    def switch(self, n: int, action: int) -> None:
        """Apply an accepted outlet command, after the configured delay."""
        self.sets += 1
        delay = self.faults.current().off_delay
        if delay > 0 and self._loop is not None:
            self._loop.call_later(delay, self._apply, n, action)
        else:
            self._apply(n, action)

    def _apply(self, n: int, action: int) -> None:
        backend = self.outlets[n - 1]
        if action == ON:
            backend.power_on()
        elif action == OFF:
            backend.power_off()
        else:
            backend.power_off()
            backend.power_on()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            snmp = engine.SnmpEngine()
            snmp.register_transport_dispatcher(AsyncioDispatcher(loop=loop))
            transport = _SilentWhenHung(loop=loop)
            transport.faults = self.faults
            config.add_transport(snmp, udp.DOMAIN_NAME, transport.open_server_mode(sock=self._sock))
            config.add_v1_system(snmp, _RO_AREA, self._read_community)
            config.add_v1_system(snmp, _RW_AREA, self._write_community)
            everything = (1, 3, 6)
            for model in (1, 2):  # SNMPv1 and v2c
                config.add_vacm_user(snmp, model, _RO_AREA, "noAuthNoPriv", everything, ())
                config.add_vacm_user(snmp, model, _RW_AREA, "noAuthNoPriv", everything, everything)
            ctx = context.SnmpContext(snmp)
            ctx.unregister_context_name(rfc1902.OctetString(""))
            ctx.register_context_name(rfc1902.OctetString(""), _OutletMib(self))
            for responder in (cmdrsp.GetCommandResponder, cmdrsp.SetCommandResponder,
                              cmdrsp.NextCommandResponder, cmdrsp.BulkCommandResponder):
                responder(snmp, ctx)
            snmp.transport_dispatcher.job_started(1)
            self._snmp = snmp
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                snmp.transport_dispatcher.close_dispatcher()
            except Exception:
                pass
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def start(self) -> "FakePdu":
        """Serve in a daemon thread; returns self once the agent answers."""
        self._thread = threading.Thread(target=self._serve, name=f"fake-pdu-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop serving and release the UDP port."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "FakePdu":
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()
