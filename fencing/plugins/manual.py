"""``manual``: an operator confirms the host is off (``haagent fence ack HOST --yes``).

In the cluster the agent gives the runner no ack source: the leader's core takes the ack itself,
bound to the failover it is for, and a manual device fails at once with a reason saying what to
do, without holding one of the leader's fence workers. With an ack source (``FileAckSource``,
``MemoryAckSource``: tests and single-host trials) the device polls it for ``power_timeout``;
an ack counts only if given at or after the moment this device's fence began (``ack_max_age``,
default 0, widens that by so many seconds: an explicit choice to accept an earlier ack). An ack
whose time is not a finite number never counts.
"""

from __future__ import annotations

import math
import os
import threading

from haagent.errors import FenceDeviceError

from fencing.plugin import FencePlugin, Option, PowerState


class MemoryAckSource:
    """Acks kept in memory: host -> wall-clock time of the latest ack."""

    def __init__(self) -> None:
        self._acks: dict[str, float] = {}
        self._lock = threading.Lock()

    def ack(self, host: str, when: float) -> None:
        with self._lock:
            self._acks[host] = max(when, self._acks.get(host, when))

    def acked(self, host: str, since: float) -> bool:
        with self._lock:
            when = self._acks.get(host)
        return when is not None and math.isfinite(when) and when >= since


class FileAckSource:
    """Acks as files ``<directory>/<host>`` holding the wall-clock time of the ack."""

    def __init__(self, directory: str):
        self.directory = directory

    def ack(self, host: str, when: float) -> None:
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, f".{host}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{when:.6f}\n")
        os.replace(tmp, os.path.join(self.directory, host))

    def acked(self, host: str, since: float) -> bool:
        try:
            with open(os.path.join(self.directory, host)) as f:
                when = float(f.read().strip())
        except (OSError, ValueError):
            return False
        return math.isfinite(when) and when >= since  # "inf" would count for every fence to come


class ManualPlugin(FencePlugin):
    """Power is "off" once an operator acknowledged it, at most ``ack_max_age`` s before fencing began."""

    name = "manual"
    description = "wait for an operator's `haagent fence ack HOST`"
    options = (
        Option("ack_max_age", "float", default=0.0, minimum=0, maximum=86400,
               help="an ack given this many seconds before this fence began still counts (0: only acks "
                    "given once it began)"),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The runner builds a plugin when it starts this device: an ack from before then (a stale
        # file, an ack for an earlier incident) must not confirm a host that may be running again.
        self.since = self.context.wall_time() - float(self.opts.get("ack_max_age", 0.0))

    def _source(self):
        if self.context.ack_source is None:
            # In the cluster the leader itself takes the operator's ack (a request bound to this
            # failover), so this device only says so, at once, rather than hold a fence worker.
            raise FenceDeviceError(f"manual fencing: waiting for `haagent fence ack {self.host} --yes` "
                                   "once the host is confirmed off by hand")
        return self.context.ack_source

    def status(self, timeout: float) -> PowerState:
        return PowerState.OFF if self._source().acked(self.host, self.since) else PowerState.ON

    def set_power(self, on: bool, timeout: float) -> None:
        if on:
            raise FenceDeviceError(f"device {self.device}: manual fencing cannot power a host on")
        self._source()  # nothing to switch: the runner now polls for the operator's ack

    def describe(self, action: str) -> str:
        return f"manual {action}: waiting for `haagent fence ack {self.host}`"
