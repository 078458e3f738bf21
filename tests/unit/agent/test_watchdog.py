"""Watchdog mode: the device is armed once with its timeout set and read back, fed from the lease
keepalive, disarmed with the magic close; the agent core kills VMs once the lease is lost."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from haagent.agent import core
from haagent.agent.watchdog import WDIOC_GETTIMEOUT, WDIOC_SETTIMEOUT, Watchdog, WatchdogError
from haagent.model import HostState

CFG = core.AgentConfig(watchdog=True, self_fence_timeout=5)


def inp(lease_ok: bool) -> core.AgentInput:
    return core.AgentInput(host="h1", host_state=HostState.ACTIVE, lease_ok=lease_ok, lease_grant_revision=5,
                           placement_revision=9, placements={"vm1": "h1"}, specs={}, running=frozenset({"vm1"}))


def test_vms_are_killed_when_the_lease_is_lost():
    assert not [a for a in core.step(inp(True), 0.0, CFG) if isinstance(a, core.StopVm)]
    lost = core.step(inp(False), 0.0, CFG)
    assert [a.vm for a in lost if isinstance(a, core.StopVm)] == ["vm1"]


def test_ioctl_numbers_are_linux_watchdog_h():
    def ioc(direction, nr):  # asm-generic/ioctl.h: dir << 30 | size << 16 | type << 8 | nr
        return direction << 30 | struct.calcsize("i") << 16 | ord("W") << 8 | nr
    assert WDIOC_SETTIMEOUT == ioc(3, 6)  # _IOWR
    assert WDIOC_GETTIMEOUT == ioc(2, 7)  # _IOR


class FakeDevice:
    """A watchdog driver: the ioctls it answers, and every byte written (a FIFO carries them)."""

    def __init__(self, tmp_path, keeps: int | None = None, ioctl_works: bool = True, settable: bool = True):
        self.fifo = str(tmp_path / "watchdog")
        os.mkfifo(self.fifo)
        self.reader = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.keeps, self.ioctl_works, self.settable, self.calls = keeps, ioctl_works, settable, []
        self.timeout = 60

    def ioctl(self, fd, request, arg):
        self.calls.append(request)
        if not self.ioctl_works:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        if request == WDIOC_SETTIMEOUT and not self.settable:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        if request == WDIOC_SETTIMEOUT:
            wanted = struct.unpack("i", arg)[0]
            self.timeout = self.keeps if self.keeps is not None else wanted
            return struct.pack("i", self.timeout)
        if request == WDIOC_GETTIMEOUT:
            return struct.pack("i", self.timeout)
        raise AssertionError(hex(request))

    def written(self) -> bytes:
        try:
            return os.read(self.reader, 64)
        except BlockingIOError:
            return b""

    def close(self):
        os.close(self.reader)


def test_armed_with_the_timeout_set_and_read_back_fed_and_closed_with_the_magic_v(tmp_path):
    dev = FakeDevice(tmp_path)
    wd = Watchdog(dev.fifo, 5, ioctl=dev.ioctl)
    try:
        assert wd.arm() == 5 and wd.armed
        assert dev.calls == [WDIOC_SETTIMEOUT, WDIOC_GETTIMEOUT]
        assert wd.report(5.0) == {"watchdog": True, "timeout": 5, "self_fence_timeout": 5.0}
        assert wd.feed() and wd.feed()
        assert dev.written() == b"\0\0"  # kept open: no close (which would disarm or warn) per feed
        wd.disarm()
        assert dev.written() == b"V" and not wd.armed and wd.report(5.0) is None
        assert not wd.feed()
    finally:
        dev.close()


def test_a_device_that_keeps_a_longer_timeout_is_refused(tmp_path):
    dev = FakeDevice(tmp_path, keeps=30)
    try:
        with pytest.raises(WatchdogError) as err:
            Watchdog(dev.fifo, 5, ioctl=dev.ioctl).arm()
        assert "30s timeout, above agent.self_fence_timeout (5s)" in str(err.value)
        assert dev.written() == b"V"  # it was opened: disarmed again on the way out
    finally:
        dev.close()


def test_a_device_without_the_timeout_ioctls_is_refused(tmp_path):
    dev = FakeDevice(tmp_path, ioctl_works=False)  # e.g. the bare FIFO
    try:
        with pytest.raises(WatchdogError) as err:
            Watchdog(dev.fifo, 5, ioctl=dev.ioctl).arm()
        assert "does not say its timeout (WDIOC_GETTIMEOUT: Inappropriate ioctl for device)" in str(err.value)
        assert dev.written() == b"V"
    finally:
        dev.close()
    with pytest.raises(WatchdogError):
        Watchdog(str(tmp_path / "nope"), 5).arm()


def test_the_real_fcntl_ioctl_on_a_fifo_is_enotty_and_refused(tmp_path):
    dev = FakeDevice(tmp_path)
    try:
        with pytest.raises(WatchdogError, match="Inappropriate ioctl"):
            Watchdog(dev.fifo, 5).arm()  # fcntl.ioctl itself: what a FIFO in production gets
    finally:
        dev.close()


def test_write_only_only_when_allowed_and_never_reported(tmp_path):
    """The test/debug mode for a node without ioctls: fed and disarmed, but no self-fence claim."""
    dev = FakeDevice(tmp_path)
    wd = Watchdog(dev.fifo, 5, allow_write_only=True)  # the real ioctl: ENOTTY on a FIFO
    try:
        assert wd.arm() is None and wd.armed and not wd.verified
        assert wd.report(5) is None
        assert wd.feed()
        wd.disarm()
        assert dev.written() == b"\0V"
    finally:
        dev.close()


def test_a_fixed_timeout_driver_is_trusted_by_its_read_back(tmp_path):
    dev = FakeDevice(tmp_path, settable=False)
    dev.timeout = 4  # cannot be set, but says what it runs with: within self_fence_timeout
    try:
        wd = Watchdog(dev.fifo, 5, ioctl=dev.ioctl)
        assert wd.arm() == 4 and wd.verified
        assert wd.report(5) == {"watchdog": True, "timeout": 4, "self_fence_timeout": 5}
        wd.disarm()
    finally:
        dev.close()


def test_a_timeout_shorter_than_the_lease_is_refused(tmp_path):
    dev = FakeDevice(tmp_path, keeps=2)  # the driver rounds 5 down to 2: below a 3 s lease
    try:
        with pytest.raises(WatchdogError) as err:
            Watchdog(dev.fifo, 5, minimum=3, ioctl=dev.ioctl).arm()
        assert "took a 2s timeout, below timing.lease_ttl (3s)" in str(err.value)
        assert dev.written() == b"V"
    finally:
        dev.close()


def test_a_driver_with_nowayout_is_refused(tmp_path):
    dev = FakeDevice(tmp_path)
    try:
        with pytest.raises(WatchdogError, match="nowayout set: the magic close cannot disarm it"):
            Watchdog(dev.fifo, 5, ioctl=dev.ioctl, nowayout=lambda fd: True).arm()
    finally:
        dev.close()


def test_fed_only_while_the_lease_keepalive_succeeds():
    """The agent feeds from LeaseKeeper.on_alive: no successful refresh, no feed."""
    from haagent.errors import StoreUnavailable
    from haagent.store.lease import LeaseKeeper

    class Store:
        timeout = 1.0
        fail = False

        def grant(self, ttl):
            return 7, 1

        def txn(self, compares, ops):
            return None

        def refresh(self, lease_id):
            if self.fail:
                raise StoreUnavailable("cut off")
            return 3

    fed = []
    store = Store()
    keeper = LeaseKeeper(store, 3, interval=1.0, clock=lambda: 0.0)
    keeper.on_alive(lambda: fed.append(1))
    keeper.grant()
    keeper.refresh_once()
    assert len(fed) == 2
    store.fail = True
    keeper.refresh_once()
    assert len(fed) == 2
