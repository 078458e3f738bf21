"""The host's hardware watchdog: armed once the agent holds a lease, its timeout set and read back,
fed while the lease lives, disarmed with the magic close on a clean stop.

The leader presumes a host self-fenced only from what the host reports (docs/design.md,
"Self-fencing"), so what this module reports must be true: ``verified`` only after the device
told us its timeout and it fits, and ``timeout`` is what the device says, not what we hoped.

Linux watchdog API (linux/watchdog.h): any write is a keepalive; ``WDIOC_SETTIMEOUT`` and
``WDIOC_GETTIMEOUT`` set and read the timeout in seconds; closing after writing ``V`` disarms a
driver that supports the magic close, while closing without it leaves it armed (or warns) - so
the device is opened once and kept open. Opening the device starts (or restarts) its countdown,
which is why the daemon arms it only once it holds a lease: see ``AgentDaemon.run``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from typing import Callable

from haagent.errors import ConfigError
from haagent.log import get_logger

log = get_logger("haagent.watchdog")

# _IOWR('W', 6, int) and _IOR('W', 7, int): dir << 30 | sizeof(int) << 16 | 'W' << 8 | nr
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707

Ioctl = Callable[[int, int, bytes], bytes]


class WatchdogError(ConfigError):
    """The watchdog cannot be armed as configured; the agent refuses to start."""

    def __init__(self, problem: str):
        super().__init__([problem])


def _nowayout(fd: int) -> bool | None:
    """Whether the driver ignores the magic close (sysfs ``nowayout``); None if it does not say."""
    try:
        rdev = os.fstat(fd).st_rdev
        with open(f"/sys/dev/char/{os.major(rdev)}:{os.minor(rdev)}/nowayout") as f:
            return f.read().strip() == "1"
    except (OSError, ValueError):
        return None


class Watchdog:
    """One open watchdog device. ``arm()``, then ``feed()`` from the heartbeat, ``disarm()`` at stop.

    ``minimum``: the shortest timeout that cannot reset a host whose lease is still alive (the
    daemon passes ``lease_ttl``: the device is fed on each renewal). ``allow_write_only`` is for
    tests and debugging only: a node that takes no ioctl at all (ENOTTY, e.g. a FIFO standing in
    for the device) is then fed by writes, but never reported as a verified self-fence.
    """

    def __init__(self, path: str, timeout: int, *, minimum: float = 0, allow_write_only: bool = False,
                 ioctl: Ioctl = fcntl.ioctl,
                 open_fn: Callable[[str], int] = lambda p: os.open(p, os.O_WRONLY | os.O_CLOEXEC),
                 nowayout: Callable[[int], bool | None] = _nowayout):
        self.path, self.wanted, self.minimum = path, int(timeout), minimum
        self.allow_write_only = allow_write_only
        self._ioctl, self._open, self._nowayout = ioctl, open_fn, nowayout
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.timeout: int | None = None  # what the device reported after we set it
        self.verified = False  # the device told us its timeout and it fits

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def arm(self) -> int | None:
        """Open, set the timeout, read it back; the device's timeout (None in write-only mode).
        Raises WatchdogError, after disarming what it opened."""
        try:
            fd = self._open(self.path)
        except OSError as exc:
            raise WatchdogError(f"agent.watchdog_device: cannot open {self.path}: {exc.strerror}") from None
        try:
            got = self._set_and_read(fd)
            if got is not None:
                self._check(fd, got)
        except WatchdogError:
            self._close(fd, magic=True)
            raise
        with self._lock:
            self._fd, self.timeout, self.verified = fd, got, got is not None
        if got is None:
            log.warning("watchdog_write_only", device=self.path,
                        detail="the node takes no ioctl: fed by writes, its timeout unknown, not reported "
                               "to the leader as a self-fence (testing only)")
        else:
            log.info("watchdog_armed", device=self.path, timeout_s=got)
        return got

    def _set_and_read(self, fd: int) -> int | None:
        set_error = None
        try:
            self._ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", self.wanted))
        except OSError as exc:
            set_error = exc.strerror
        try:
            got = struct.unpack("i", self._ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))[0]
        except OSError as exc:
            if exc.errno == errno.ENOTTY and self.allow_write_only:
                return None
            raise WatchdogError(f"agent.watchdog_device: {self.path} does not say its timeout "
                                f"(WDIOC_GETTIMEOUT: {exc.strerror}); it cannot be trusted to self-fence "
                                "in time") from None
        if set_error is not None:
            # Some drivers have a fixed timeout (no WDIOF_SETTIMEOUT): what counts is the read-back.
            log.warning("watchdog_settimeout_failed", device=self.path, wanted_s=self.wanted,
                        got_s=got, error=set_error)
        return got

    def _check(self, fd: int, got: int) -> None:
        if got <= 0 or got > self.wanted:
            raise WatchdogError(f"agent.watchdog_device: {self.path} runs with a {got}s timeout, above "
                                f"agent.self_fence_timeout ({self.wanted}s): the leader would restart this "
                                "host's VMs before it has reset")
        if got < self.minimum:
            raise WatchdogError(f"agent.watchdog_device: {self.path} took a {got}s timeout, below "
                                f"timing.lease_ttl ({self.minimum:g}s): it would reset this host while its "
                                "lease is still alive whenever etcd stalls")
        if self._nowayout(fd):
            raise WatchdogError(f"agent.watchdog_device: {self.path} has nowayout set: the magic close cannot "
                                "disarm it, so every clean agent stop would reset this host (load the driver "
                                "with nowayout=0)")

    def feed(self) -> bool:
        """One keepalive; never blocks, never raises (a failed feed is logged)."""
        with self._lock:
            if self._fd is None:
                return False
            try:
                # NOTE: never a 'V': the kernel would then let a later close disarm the device.
                os.write(self._fd, b"\0")
                return True
            except OSError as exc:
                log.warning("watchdog_feed_failed", device=self.path, error=exc.strerror)
                return False

    def disarm(self) -> None:
        """The magic close: write 'V', then close (a clean stop must not reset the host)."""
        with self._lock:
            fd, self._fd, self.verified = self._fd, None, False
        if fd is not None:
            self._close(fd, magic=True)
            log.info("watchdog_disarmed", device=self.path)

    def release(self) -> None:
        """Close *without* the magic character: the countdown runs on and the host resets.

        For a stop the leader was not told of: it presumes this host self-fences (its last report
        said so), so the reset must happen, or its VMs would run twice.
        """
        with self._lock:
            fd, self._fd, self.verified = self._fd, None, False
        if fd is not None:
            self._close(fd, magic=False)
            log.critical("watchdog_left_armed", device=self.path, timeout_s=self.timeout)

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
        """What the host tells the leader in its report (``self_fence``): only a verified device."""
        with self._lock:
            if self._fd is None or not self.verified or self.timeout is None:
                return None
            return {"watchdog": True, "timeout": self.timeout, "self_fence_timeout": self_fence_timeout}
