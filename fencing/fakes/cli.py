"""``haagent sim bmc`` and ``haagent sim pdu``: run one simulated fence device in the foreground."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click


def _split_listen(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"must be ADDR:PORT (got {value!r})")
    return host.strip("[]") or "0.0.0.0", int(port)


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path) as f:
            value = f.read().rstrip("\r\n")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not value:
        raise click.BadParameter(f"{what} file {path} is empty")
    return value


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


@click.command("bmc")
@click.option("--listen", default="127.0.0.1:623", show_default=True, metavar="ADDR:PORT",
              help="UDP address to serve IPMI on (port 0: any free port, printed at start)")
@click.option("--user", default="admin", show_default=True, help="IPMI user name")
@click.option("--password-file", required=True, type=click.Path(dir_okay=False),
              help="file holding the IPMI password (never given on the command line)")
@click.option("--off-delay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="seconds between accepting power off and the power going off")
@click.option("--never-off", is_flag=True, help="accept power off but never switch off")
@click.option("--off", "start_off", is_flag=True, help="start with the power off")
@click.option("--fault-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"mode": "ok|fail|hang|empty|garbled", "off_delay": S}, re-read on every request')
def bmc(listen: str, user: str, password_file: str, off_delay: float, never_off: bool,
        start_off: bool, fault_file: str | None) -> None:
    """Run a fake IPMI 2.0 lanplus BMC (cipher suite 3) until SIGTERM or Ctrl-C."""
    from fencing.fakes.bmc import FakeBmc
    from fencing.fakes.power import InMemoryPower

    address, port = _split_listen(listen, 623)
    password = _read_secret(password_file, "password")
    try:
        server = FakeBmc({user: password}, address=address, port=port, backend=InMemoryPower(on=not start_off),
                         off_delay=off_delay, never_off=never_off, fault_file=fault_file)
    except OSError as exc:
        click.echo(f"haagent: cannot listen on udp {address}:{port}: {exc.strerror}", err=True)
        sys.exit(1)
    server.start()
    click.echo(f"fake BMC listening on udp {address}:{server.port} user {user}", err=False)
    sys.stdout.flush()
    try:
        _wait_for_signal()
    finally:
        server.stop()


@click.command("pdu")
@click.option("--listen", default="127.0.0.1:161", show_default=True, metavar="ADDR:PORT",
              help="UDP address to serve SNMP on (port 0: any free port, printed at start)")
@click.option("--outlets", type=click.IntRange(1, 96), default=8, show_default=True)
@click.option("--delay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="seconds between accepting an outlet command and the outlet switching")
@click.option("--read-community-file", type=click.Path(dir_okay=False), default=None,
              help="file with the read-only community (default: public)")
@click.option("--write-community-file", type=click.Path(dir_okay=False), default=None,
              help="file with the read-write community (default: private)")
@click.option("--fault-file", type=click.Path(dir_okay=False), default=None,
              help='JSON {"mode": "ok|fail|hang|empty|garbled", "off_delay": S}, re-read on every request')
def pdu(listen: str, outlets: int, delay: float, read_community_file: str | None,
        write_community_file: str | None, fault_file: str | None) -> None:
    """Run a fake APC PDU (SNMP v1/v2c, sPDUOutletCtl) until SIGTERM or Ctrl-C."""
    from fencing.fakes.pdu import FakePdu

    address, port = _split_listen(listen, 161)
    read = _read_secret(read_community_file, "community") if read_community_file else "public"
    write = _read_secret(write_community_file, "community") if write_community_file else "private"
    kwargs: dict[str, Any] = dict(address=address, port=port, outlets=outlets, delay=delay,
                                  read_community=read, write_community=write, fault_file=fault_file)
    try:
        server = FakePdu(**kwargs).start()
    except OSError as exc:
        click.echo(f"haagent: cannot listen on udp {address}:{port}: {exc.strerror}", err=True)
        sys.exit(1)
    click.echo(f"fake PDU listening on udp {address}:{server.port} with {outlets} outlets")
    sys.stdout.flush()
    try:
        _wait_for_signal()
    finally:
        server.stop()
