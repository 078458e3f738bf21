"""The fence path check: does every device of every host answer a status call?

The leader runs :meth:`FenceHealthCheck.run_once` every ``[fencing] check_interval`` seconds;
``haagent fence test`` runs the same code once. Each broken path sets
``haagent_fence_path_broken{host,device}`` to 1 (0 once it answers again), so an alert fires
before the day the device is needed.
"""

from __future__ import annotations

from typing import Iterable

from haagent.log import get_logger

from fencing import metrics
from fencing.runner import DeviceStatus, FenceRunner

log = get_logger("haagent.fencing")


class FenceHealthCheck:
    """Status-reads every configured fence device once per run; never acts."""

    def __init__(self, runner: FenceRunner, wall_time=None):
        self.runner = runner
        self.wall_time = wall_time

    def run_once(self, hosts: Iterable[str] | None = None) -> tuple[DeviceStatus, ...]:
        """Check ``hosts`` (default: all configured) and return one result per host and device."""
        names = sorted(hosts) if hosts is not None else sorted(self.runner.config.hosts)
        results: list[DeviceStatus] = []
        for host in names:
            for status in self.runner.status(host):
                results.append(status)
                metrics.FENCE_PATH_BROKEN.labels(host, status.device).set(0 if status.ok else 1)
                if not status.ok:
                    log.warning("fence.path_broken", host=host, device=status.device, plugin=status.plugin,
                                error=status.error, reason=status.reason)
        if self.wall_time is not None:
            metrics.FENCE_CHECK_LAST_RUN.set(self.wall_time())
        else:
            metrics.FENCE_CHECK_LAST_RUN.set_to_current_time()
        return tuple(results)
