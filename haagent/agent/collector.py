"""Reads the host's inventory and usage from the hypervisor on its own thread.

libvirt calls can block (a hung libvirtd), so the agent loop never makes them: it asks
``latest()``, which returns at once what the last reading gave. A reading that fails keeps the
last good figures and sets ``inventory_error``; the leader then places on this host by cpu and
memory only (``haagent/manager/live.py``) and raises a warning event.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from haagent.agent.inventory import LoadSmoother, host_inventory
from haagent.errors import HaagentError
from haagent.hypervisor.port import Hypervisor
from haagent.hypervisor.stats import compute_usage
from haagent.log import get_logger

log = get_logger("haagent.agent.collector")


class InventoryCollector:
    """Every ``interval`` s: ``host_info()`` and one stats reading, folded into the smoother."""

    def __init__(self, hv: Hypervisor, tags: tuple[str, ...] = (), interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, smoothing: float = 60.0, vms_only: bool = False):
        self.hv, self.tags, self.interval, self.clock = hv, tags, interval, clock
        self.smoother = LoadSmoother(tau=smoothing)
        self.vms_only = vms_only
        self._lock = threading.Lock()
        self._inventory: dict[str, Any] | None = None
        self._error = ""
        self._prev = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inventory", daemon=True)

    def start(self) -> "InventoryCollector":
        self.read_once()  # the first report already carries the inventory
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def read_once(self) -> None:
        errors = []
        try:
            inventory = host_inventory(self.hv.host_info(), self.tags)
        except HaagentError as exc:
            inventory, errors = None, [f"host capabilities: {exc}"]
        try:
            cur = self.hv.raw_stats()
            sample = compute_usage(self._prev, cur)
            self._prev = cur
        except HaagentError as exc:
            sample = None
            errors.append(f"stats: {exc}")
        with self._lock:
            if inventory is not None:
                self._inventory = inventory
            if sample is not None:
                cpus = (self._inventory or {}).get("cpus") or cur.host_cpus
                self.smoother.add(sample, int(cpus), self.vms_only)
            if errors and errors[0] != self._error:
                log.warning("inventory_read_failed", error="; ".join(errors))
            self._error = "; ".join(errors)

    def latest(self, fallback: dict[str, Any]) -> dict[str, Any]:
        """The report's inventory part; ``fallback`` (cpus, memory) until libvirt was read once."""
        with self._lock:
            out = dict(self._inventory) if self._inventory is not None else {**fallback, "tags": sorted(self.tags)}
            out["load"] = self.smoother.record()
            if self._error:
                out["inventory_error"] = self._error
            return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.read_once()
            except Exception:  # a bug must not end the thread: the report would freeze silently
                log.exception("inventory_thread_error")
