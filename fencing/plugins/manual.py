"""``manual``: an operator confirms the host is off (``haagent fence ack HOST``); the plugin waits.

The ack store is a port (:class:`fencing.plugin.AckSource`) lent by the runner's context: the
cluster keeps acks in etcd; :class:`FileAckSource` and :class:`MemoryAckSource` serve tests and
single-host trials. Give a manual device a long ``power_timeout``: it is how long to wait.
"""

from __future__ import annotations

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
            return self._acks.get(host, float("-inf")) >= since


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
                return float(f.read().strip()) >= since
        except (OSError, ValueError):
            return False


class ManualPlugin(FencePlugin):
    """Power is "off" once an operator acknowledged it, at most ``ack_max_age`` s before fencing began."""

    name = "manual"
    description = "wait for an operator's `haagent fence ack HOST`"
    options = (
        Option("ack_max_age", "float", default=60.0, minimum=0, maximum=86400,
               help="an ack given this many seconds before fencing began still counts"),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.since = self.context.wall_time() - float(self.opts.get("ack_max_age", 60.0))

    def _source(self):
        if self.context.ack_source is None:
            raise FenceDeviceError(f"device {self.device}: no ack source is configured for manual fencing")
        return self.context.ack_source

    def status(self, timeout: float) -> PowerState:
        return PowerState.OFF if self._source().acked(self.host, self.since) else PowerState.ON

    def set_power(self, on: bool, timeout: float) -> None:
        if on:
            raise FenceDeviceError(f"device {self.device}: manual fencing cannot power a host on")
        self._source()  # nothing to switch: the runner now polls for the operator's ack

    def describe(self, action: str) -> str:
        return f"manual {action}: waiting for `haagent fence ack {self.host}`"
