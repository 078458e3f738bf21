"""A lab VM running the lab's Linux guest, from the root namespace: its ticks and its load channel.

The guest (haagent/lab/guest_image.py) has two serial ports. ttyS0, its console, is a file on the
lab's shared storage that every QEMU running the guest appends to, the source and the
destination of a live migration alike: kernel messages, ``haagent-guest ready`` once it is up,
then ``T <seq> <guest seconds>`` every 10 ms. ttyS1 is a unix socket in the libvirt directory of
the host that runs the guest: one command line in, one reply line out. docs/lab.md has the format.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from haagent.errors import LabError
from haagent.lab.guest_image import READY_LINE

if TYPE_CHECKING:
    from haagent.lab.lab import Lab

TICK_RE = re.compile(r"^T (\d+) (\d+\.\d+)$")


@dataclass(frozen=True)
class Tick:
    """One tick line: the guest's sequence number and its own clock; ``seen`` (monotonic seconds
    of this machine) is when the line reached the console file, when a TickRecorder read it."""

    seq: int
    guest_s: float
    seen: float | None = None


def parse_ticks(text: str, seen: float | None = None) -> list[Tick]:
    """The tick lines of some console output (kernel messages and the rest are skipped)."""
    out = []
    for line in text.splitlines():
        m = TICK_RE.match(line.strip())
        if m:
            out.append(Tick(int(m.group(1)), float(m.group(2)), seen))
    return out


@dataclass(frozen=True)
class Gap:
    """The longest wait between two consecutive ticks, seen from outside and by the guest's clock."""

    seen_ms: float  # between their arrivals in the console file (this machine's clock)
    guest_ms: float  # between their timestamps (the guest's own clock), for the same pair
    lost: int  # sequence numbers missing between them (0 unless the guest restarted or output was lost)
    before: Tick
    after: Tick


def largest_gap(ticks: list[Tick], start: float = float("-inf"), end: float = float("inf")) -> Gap | None:
    """The pair of consecutive ticks, the later one seen within [start, end], furthest apart in
    arrival time. None if fewer than two ticks were seen there."""
    best: Gap | None = None
    for a, b in zip(ticks, ticks[1:]):
        if a.seen is None or b.seen is None or not start <= b.seen <= end:
            continue
        gap = Gap((b.seen - a.seen) * 1000, (b.guest_s - a.guest_s) * 1000, max(b.seq - a.seq - 1, 0), a, b)
        if best is None or gap.seen_ms > best.seen_ms:
            best = gap
    return best


class TickRecorder:
    """Follows a guest's console file on a thread and stamps every tick with its arrival time.

    Polls every ``poll`` seconds (1 ms): arrival times are exact to about that, plus the delay of
    QEMU's write, which is synchronous to the guest's port write.
    """

    def __init__(self, console: Path, poll: float = 0.001):
        self._path = console
        self._poll = poll
        self._ticks: list[Tick] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tick-recorder", daemon=True)
        self._fd = os.open(console, os.O_RDONLY)
        os.lseek(self._fd, 0, os.SEEK_END)  # only ticks printed from now on

    def __enter__(self) -> "TickRecorder":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def ticks(self) -> list[Tick]:
        with self._lock:
            return list(self._ticks)

    def _run(self) -> None:
        partial = b""
        while not self._stop.is_set():
            data = os.read(self._fd, 1 << 16)
            if not data:
                time.sleep(self._poll)
                continue
            now = time.monotonic()
            lines, _, partial = (partial + data).rpartition(b"\n")
            found = parse_ticks(lines.decode(errors="replace"), now)
            with self._lock:
                self._ticks.extend(found)


class Guest:
    """One Linux guest of a lab (``Lab.guest(vm)``): cheap, stateless, works from any process."""

    def __init__(self, lab: "Lab", vm: str):
        self.lab = lab
        self.vm = vm

    @property
    def console(self) -> Path:
        return self.lab.layout.guest_console(self.vm)

    def mark(self) -> int:
        """The console's current end, for ``wait_ready(since=...)`` after a restart."""
        try:
            return self.console.stat().st_size
        except FileNotFoundError:
            return 0

    def console_text(self, since: int = 0) -> str:
        try:
            with open(self.console, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60, since: int = 0) -> float:
        """Wait until the guest (booted after console offset ``since``) says it is ready;
        returns the seconds waited."""
        t0 = time.monotonic()
        while READY_LINE not in self.console_text(since):
            if time.monotonic() - t0 > timeout:
                tail = self.console_text(since)[-300:].strip()
                raise LabError(f"guest {self.vm} not ready after {timeout:g}s; console {self.console} "
                               f"ends with: {tail!r}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def ticks(self, since: int = 0) -> list[Tick]:
        """Every tick in the console after offset ``since`` (no arrival times: see TickRecorder)."""
        return parse_ticks(self.console_text(since))

    def recorder(self) -> TickRecorder:
        """``with guest.recorder() as rec: ...; rec.ticks`` - ticks from now on, with arrival times."""
        return TickRecorder(self.console)

    def host(self) -> str:
        """The host whose libvirtd runs the guest (running, not paused as a migration target)."""
        import libvirt
        libvirt.registerErrorHandler(lambda *_a: None, None)
        for h in self.lab.hosts():
            if self.lab.init_pid(h) is None:
                continue
            try:
                conn = libvirt.open(self.lab.libvirt_uri(h))
            except libvirt.libvirtError:
                continue
            try:
                if conn.lookupByName(self.vm).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    return h
            except libvirt.libvirtError:
                pass
            finally:
                conn.close()
        raise LabError(f"guest {self.vm} is not running on any host of lab {self.lab.prefix}")

    def command(self, line: str, timeout: float = 30) -> str:
        """Send one command on the load channel; its reply line ("ok ..."), or LabError."""
        path = self.lab.layout.guest_socket_on(self.host(), self.vm)
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(path))
                # The leading newline ends any half line an earlier client left behind.
                s.sendall(f"\n{line}\n".encode())
                for reply in _lines(s, deadline):
                    if reply.startswith("error"):
                        raise LabError(f"guest {self.vm}: {line}: {reply}")
                    if reply.startswith("ok"):
                        return reply
            except OSError as e:
                raise LabError(f"guest {self.vm}: load channel {path}: {e}") from e
        raise LabError(f"guest {self.vm}: no answer to {line!r} within {timeout:g}s")

    def load(self, cpu: int, mem: int, dirty: int = 0, timeout: float = 30) -> dict[str, int]:
        """Burn ``cpu`` vCPUs, hold ``mem`` MiB and rewrite ``dirty`` MiB/s of it; 0 0 clears."""
        for name, value in (("cpu", cpu), ("mem", mem), ("dirty", dirty)):
            if not isinstance(value, int) or value < 0:
                raise LabError(f"load: {name} must be a whole number >= 0 (got {value!r})")
        vcpus = int(self.lab.state.get("vcpus", 1))
        if cpu > vcpus:
            raise LabError(f"load: cpu {cpu} is more than {self.vm}'s {vcpus} vCPUs")
        want = (cpu, mem, dirty if mem else 0)
        for _ in range(3):
            got = _fields(self.command(f"load {cpu} {mem} {dirty}", timeout))
            # The reply to an earlier client's command may come first (that client gave up).
            if (got.get("cpu"), got.get("mem"), got.get("dirty")) == want:
                return got
        raise LabError(f"guest {self.vm}: load {cpu} {mem} {dirty}: the guest keeps answering {got}")

    def status(self, timeout: float = 10) -> dict[str, int]:
        """What the guest runs now: cpu, mem, dirty and the guest's MemAvailable (avail_kib)."""
        return _fields(self.command("status", timeout))


def _lines(s: socket.socket, deadline: float) -> Iterator[str]:
    buf = b""
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            return
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            yield line.decode(errors="replace").strip()


def _fields(reply: str) -> dict[str, int]:
    return {k: int(v) for k, v in (w.split("=", 1) for w in reply.split()[1:] if "=" in w)}
