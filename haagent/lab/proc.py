"""Finding, identifying and ending the lab's processes through /proc, always by PID.

A PID is only trusted with the start time it had when it was recorded, so a recycled PID never
gets a signal meant for a lab process that is long gone.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class ProcRef:
    """A process as recorded: its PID in the root PID namespace and its start time in ticks."""

    pid: int
    start: int

    def to_json(self) -> list[int]:
        return [self.pid, self.start]

    @classmethod
    def from_json(cls, data: object) -> "ProcRef | None":
        if isinstance(data, list) and len(data) == 2 and all(isinstance(x, int) for x in data):
            return cls(data[0], data[1])
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces: split after the last ')'.
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def ref(pid: int) -> ProcRef | None:
    start = start_time(pid)
    return ProcRef(pid, start) if start is not None else None


def alive(p: ProcRef | None) -> bool:
    """True if the recorded process still exists and is not a zombie waiting to be reaped."""
    if p is None:
        return False
    fields = _stat_fields(p.pid)
    return bool(fields) and int(fields[19]) == p.start and fields[0] not in ("Z", "X")


def ns_inode(pid: int | str, kind: str) -> str | None:
    """The namespace identity (``net:[4026532...]``) of a process, or of a bind-mounted ns file."""
    path = f"/proc/{pid}/ns/{kind}" if isinstance(pid, int) else pid
    try:
        if isinstance(pid, int):
            return os.readlink(path)
        st = os.stat(path)
        return f"{kind}:[{st.st_ino}]"
    except OSError:
        return None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def in_namespace(kind: str, inode: str) -> list[int]:
    """Every live PID whose ``kind`` namespace is ``inode`` (e.g. all processes of one host)."""
    found = []
    me = os.getpid()
    for pid in pids():
        if pid != me and ns_inode(pid, kind) == inode:
            fields = _stat_fields(pid)
            if fields and fields[0] not in ("Z", "X"):
                found.append(pid)
    return found


def kill(p: ProcRef | None, sig: int = signal.SIGKILL) -> bool:
    """Signal a recorded process if it is still that process; True if a signal was sent."""
    if not alive(p):
        return False
    assert p is not None
    try:
        os.kill(p.pid, sig)
        return True
    except ProcessLookupError:
        return False


def wait_gone(refs: list[ProcRef], timeout: float) -> list[ProcRef]:
    """Wait until none of ``refs`` is alive (zombies count as gone); return those still alive."""
    deadline = time.monotonic() + timeout
    left = [r for r in refs if alive(r)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [r for r in left if alive(r)]
    return left
