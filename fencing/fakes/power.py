"""The power a simulated fence device switches: a small port the lab replaces with real hosts."""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable


@runtime_checkable
class PowerBackend(Protocol):
    """What a fake BMC or PDU outlet switches. The lab's backend crashes and revives a host."""

    def is_on(self) -> bool: ...

    def power_off(self) -> None: ...

    def power_on(self) -> None: ...


class InMemoryPower:
    """A power switch that only remembers its state (``haagent sim bmc`` and the tests)."""

    def __init__(self, on: bool = True):
        self._on = on
        self._lock = threading.Lock()
        self.off_count = 0

    def is_on(self) -> bool:
        with self._lock:
            return self._on

    def power_off(self) -> None:
        with self._lock:
            if self._on:
                self.off_count += 1
            self._on = False

    def power_on(self) -> None:
        with self._lock:
            self._on = True
