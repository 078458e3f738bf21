"""The host's hardware watchdog: armed once, its timeout set and read back, fed while the lease
lives, disarmed with the magic close on a clean stop.

The leader presumes a host self-fenced only from what the host reports (docs/design.md,
"Self-fencing"), so what this module reports must be true: ``armed`` only after the device took
the timeout we asked for, and ``timeout`` is what the device says, not what we hoped.

Linux watchdog API (linux/watchdog.h): any write is a keepalive; ``WDIOC_SETTIMEOUT`` and
``WDIOC_GETTIMEOUT`` set and read the timeout in seconds; closing after writing ``V`` disarms a
driver that supports the magic close, while closing without it leaves it armed (or warns) - so
the device is opened once and kept open.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from typing import Callable

from haagent.errors import ConfigError
from haagent.log import get_logger

log = get_logger("haagent.watchdog")

# _IOWR('W', 6, int) and _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707

Ioctl = Callable[[int, int, bytes], bytes]


class WatchdogError(ConfigError):
    """The watchdog cannot be armed as configured; the agent refuses to start."""

    def __init__(self, problem: str):
        super().__init__([problem])


class Watchdog:
    """One open watchdog device. ``arm()``, then ``feed()`` from the heartbeat, ``disarm()`` at stop."""

    def __init__(self, path: str, timeout: int, *, ioctl: Ioctl = fcntl.ioctl,
                 open_fn: Callable[[str], int] = lambda p: os.open(p, os.O_WRONLY)):
        self.path, self.wanted = path, int(timeout)
        self._ioctl, self._open = ioctl, open_fn
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.timeout: int | None = None  # what the device reported after we set it

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def arm(self) -> int:
        """Open, set the timeout, read it back; the device's timeout. Raises WatchdogError."""
        try:
            fd = self._open(self.path)
        except OSError as exc:
            raise WatchdogError(f"agent.watchdog_device: cannot open {self.path}: {exc.strerror}") from None
        try:
            self._ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", self.wanted))
            got = struct.unpack("i", self._ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))[0]
        except OSError as exc:
            self._close(fd, magic=True)
            raise WatchdogError(f"agent.watchdog_device: {self.path} does not take a timeout "
                                f"(WDIOC_SETTIMEOUT/GETTIMEOUT: {exc.strerror}); it cannot be trusted to "
                                "self-fence in time") from None
        if got <= 0 or got > self.wanted:
            self._close(fd, magic=True)
            raise WatchdogError(f"agent.watchdog_device: {self.path} runs with a {got}s timeout, above "
                                f"agent.self_fence_timeout ({self.wanted}s): the leader would restart this "
                                "host's VMs before it has reset")
        self._fd, self.timeout = fd, got
        log.info("watchdog_armed", device=self.path, timeout_s=got)
        return got

    def feed(self) -> bool:
        """One keepalive; never blocks, never raises (a failed feed is logged)."""
        with self._lock:
            if self._fd is None:
                return False
            try:
                os.write(self._fd, b"\0")
                return True
            except OSError as exc:
                log.warning("watchdog_feed_failed", device=self.path, error=exc.strerror)
                return False

    def disarm(self) -> None:
        """The magic close: write 'V', then close (a clean stop must not reset the host)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            self._close(fd, magic=True)
            log.info("watchdog_disarmed", device=self.path)

    @staticmethod
    def _close(fd: int, magic: bool) -> None:
        try:
            if magic:
                os.write(fd, b"V")
        except OSError:
            pass
        finally:
            os.close(fd)

    def report(self, self_fence_timeout: float) -> dict | None:
        """What the host tells the leader in its report (``self_fence``)."""
        if not self.armed or self.timeout is None:
            return None
        return {"watchdog": True, "timeout": self.timeout, "self_fence_timeout": self_fence_timeout}
