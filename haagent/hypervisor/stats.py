"""CPU and memory usage from deltas of cumulative counters, and a sampler thread.

``compute_usage`` is pure (the simulator calls it directly). ``StatsSampler`` reads counters on
its own thread so a slow or hung libvirtd never blocks the agent loop, which only ever calls
``latest()``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from haagent.errors import HaagentError
from haagent.hypervisor.port import RawStats, StatsSample, VmUsage
from haagent.log import get_logger

log = get_logger("haagent.hypervisor.stats")


def compute_usage(prev: RawStats | None, cur: RawStats) -> StatsSample:
    """Usage over the interval between two readings; CPU figures are None without ``prev``."""
    interval = (cur.at - prev.at) if prev is not None else None
    host_load = None
    if prev is not None:
        total = cur.host_cpu_total_ns - prev.host_cpu_total_ns
        busy = cur.host_cpu_busy_ns - prev.host_cpu_busy_ns
        if total > 0:
            host_load = min(max(busy / total, 0.0), 1.0)
    before = {v.uuid: v for v in prev.vms} if prev is not None else {}
    vms = {}
    for v in cur.vms:
        pct = None
        p = before.get(v.uuid)
        # A VM restarted between readings has a smaller counter: no honest delta this time.
        if (interval and interval > 0 and p is not None and p.active and v.active
                and v.cpu_time_ns >= p.cpu_time_ns):
            pct = (v.cpu_time_ns - p.cpu_time_ns) / (interval * 1e9) * 100.0
        vms[v.uuid] = VmUsage(uuid=v.uuid, name=v.name, cpu_percent=pct,
                              memory_used_mib=v.memory_used_kib / 1024)
    return StatsSample(at=cur.at, interval_s=interval, host_load=host_load,
                       host_memory_free_mib=cur.host_memory_free_kib / 1024,
                       host_memory_total_mib=cur.host_memory_total_kib / 1024, vms=vms)


class StatsSampler:
    """Reads counters every ``interval`` seconds on a daemon thread; ``latest()`` never blocks."""

    def __init__(self, read: Callable[[], RawStats], interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._read = read
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._prev: RawStats | None = None
        self._latest: StatsSample | None = None
        self._thread = threading.Thread(target=self._run, name="hv-stats", daemon=True)

    def start(self) -> "StatsSampler":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def latest(self) -> StatsSample | None:
        with self._lock:
            return self._latest

    def sample_once(self) -> StatsSample:
        """Take one reading now (on the caller's thread) and publish it."""
        try:
            cur = self._read()
        except HaagentError as e:
            with self._lock:
                last = self._latest
                if last is not None:
                    # Keep the last good figures, but say they are stale and why.
                    self._latest = StatsSample(**{**last.__dict__, "error": str(e)})
            raise
        sample = compute_usage(self._prev, cur)
        with self._lock:
            self._prev = cur
            self._latest = sample
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._clock()
            try:
                self.sample_once()
            except HaagentError as e:
                log.warning("stats sample failed", error=str(e))
            took = self._clock() - started
            if took > self._interval:
                log.warning("stats sample overran its interval", took_s=round(took, 3),
                            interval_s=self._interval)
            self._stop.wait(max(self._interval - took, 0.0))
