"""The agent daemon's watchdog wiring (haagent/daemon.py): armed only once a lease is held, a
refusal leaves a clean-stop record, and the report's self_fence says only what was verified."""

from __future__ import annotations

import json
import os
import struct
from types import SimpleNamespace

import pytest

from haagent.agent.watchdog import WDIOC_GETTIMEOUT, Watchdog, WatchdogError
from haagent.config import parse_config
from haagent.daemon import AgentDaemon
from haagent.errors import StoreUnavailable
from haagent.store.client import Put
from haagent.store.keys import Keys

KEYS = Keys("c")


def config(**agent):
    return parse_config({
        "cluster": "c", "host": "h1", "etcd": {"endpoints": ["http://127.0.0.1:1"], "timeout": 0.5},
        "timing": {"heartbeat_interval": 0.05, "lease_ttl": 3}, "metrics": {"listen": ""},
        "libvirt": {"enabled": False},
        "agent": {"watchdog": True, "watchdog_device": "/dev/watchdog", "self_fence_timeout": 5, **agent}})


class Store:
    """Just what the daemon's start and clean stop ask of etcd; the first grants fail."""

    timeout = 0.5

    def __init__(self, failing_grants: int = 0):
        self.failing_grants, self.granted = failing_grants, 0
        self.txns: list[list] = []
        self.puts: dict[str, str] = {}
        self.revoked: list[int] = []

    def grant(self, ttl):
        if self.failing_grants:
            self.failing_grants -= 1
            raise StoreUnavailable("etcd is down")
        self.granted += 1
        return 40 + self.granted, 100

    stop_fails = False  # etcd does not take the clean-stop record (cut off, or the lease is gone)

    def txn(self, compares, ops):
        if self.stop_fails and any(isinstance(op, Put) and op.key == KEYS.host_stopped("h1") for op in ops):
            raise StoreUnavailable("etcd is unreachable")
        self.txns.append(list(ops))
        return SimpleNamespace(succeeded=True)

    def refresh(self, lease_id):
        return 3

    def revoke(self, lease_id):
        self.revoked.append(lease_id)

    def put(self, key, value, lease=None):
        self.puts[key] = value
        return 1

    def close(self):
        pass

    def written(self, key):
        return [op.value for ops in self.txns for op in ops if isinstance(op, Put) and op.key == key]


class Device:
    """A watchdog node on a pipe: what was opened when, and every byte written."""

    def __init__(self, store, timeout=5):
        self.store, self.timeout = store, timeout
        self.opened_after_grants: int | None = None
        self.r, self.w = os.pipe()
        self.on_open = lambda: None

    def open(self, path):
        self.opened_after_grants = self.store.granted
        self.on_open()
        return os.dup(self.w)

    def ioctl(self, fd, request, arg):
        return struct.pack("i", self.timeout) if request == WDIOC_GETTIMEOUT else arg

    def written(self) -> bytes:
        os.close(self.w)
        with os.fdopen(self.r, "rb") as f:
            return f.read()


def daemon_with(store, dev, **agent):
    cfg = config(**agent)
    wd = Watchdog("/dev/watchdog", 5, minimum=cfg.timing.lease_ttl, ioctl=dev.ioctl, open_fn=dev.open,
                  nowayout=lambda fd: False)
    return AgentDaemon(cfg, store=store, watchdog=wd, facts=lambda: {"cpus": 2, "memory_mib": 512})


def test_the_watchdog_is_armed_only_once_a_lease_is_held():
    """Opening the device restarts its countdown: a restarted agent without a lease must not."""
    store = Store(failing_grants=3)
    dev = Device(store)
    d = daemon_with(store, dev)
    dev.on_open = d.stop  # armed: now stop cleanly
    assert d.run() == 0
    assert dev.opened_after_grants == 1 and store.failing_grants == 0
    assert dev.written().endswith(b"V")  # the clean stop disarmed it
    stopped = json.loads(store.written(KEYS.host_stopped("h1"))[0])
    assert stopped["policy"] == "freeze" and stopped["lease"] == 41


def test_a_clean_stop_the_leader_was_not_told_of_leaves_the_watchdog_to_reset_the_host():
    """The leader presumes a host whose report said "watchdog" has reset once its lease is gone,
    and restarts its VMs elsewhere: disarming without a clean-stop record would run them twice."""
    store = Store()
    store.stop_fails = True
    dev = Device(store)
    d = daemon_with(store, dev)
    dev.on_open = d.stop
    assert d.run() == 0
    assert not dev.written().endswith(b"V")  # closed without the magic close: the countdown runs on
    assert KEYS.host_stopped("h1") not in store.puts


def test_a_refused_watchdog_stops_like_a_clean_stop_and_says_why():
    """The grant deleted any clean-stop record: refusing without one would get the host fenced."""
    store = Store()
    dev = Device(store, timeout=30)  # keeps 30 s whatever we ask
    d = daemon_with(store, dev)
    with pytest.raises(WatchdogError) as err:
        d.run()
    assert "runs with a 30s timeout, above agent.self_fence_timeout (5s)" in str(err.value)
    assert dev.written() == b"V"
    assert json.loads(store.written(KEYS.host_stopped("h1"))[0])["lease"] == 41
    assert store.revoked == [41]


def test_the_report_claims_self_fencing_only_while_armed_and_verified():
    store = Store()
    dev = Device(store, timeout=4)
    d = daemon_with(store, dev)

    def self_fence():
        d._last_report = None
        d.publish_report()
        return json.loads(store.puts[KEYS.host_report("h1")])["self_fence"]

    assert self_fence() is None  # not armed yet
    d.watchdog.arm()
    assert self_fence() == {"watchdog": True, "timeout": 4, "self_fence_timeout": 5}
    d.watchdog.disarm()
    assert self_fence() is None
    dev.written()

    store = Store()
    write_only = Device(store)
    write_only.ioctl = lambda fd, req, arg: (_ for _ in ()).throw(OSError(25, "Inappropriate ioctl for device"))
    d = daemon_with(store, write_only)
    d.watchdog.allow_write_only = True
    d.watchdog.arm()
    assert d.watchdog.armed and self_fence() is None  # fed, but its timeout is unknown
    d.watchdog.disarm()
    write_only.written()


def test_the_systemd_watchdog_period(monkeypatch):
    import os

    from haagent.daemon import _watchdog_period

    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert _watchdog_period() == float("inf")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert _watchdog_period() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert _watchdog_period() == float("inf")
