"""A real ``haagent agent`` process feeding a watchdog node (a FIFO stands in: there is no
watchdog device here) against a real etcd: fed only while the lease renews, 'V' on a clean stop,
and without the testing flag a node that cannot say its timeout is a refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from agent_helpers import TTL, spawn_agent, wait_for

from haagent.store.client import EtcdStore
from haagent.store.keys import Keys

pytestmark = [pytest.mark.etcd, pytest.mark.slow]
KEYS = Keys("it")


def spawn(tmp_path, host, endpoints, device, *flags):
    return spawn_agent(tmp_path, host, endpoints, *flags, stderr=subprocess.PIPE, agent_section=f"""\
watchdog = true
watchdog_device = "{device}"
self_fence_timeout = {TTL}
""")


class Fifo:
    """The watchdog node: opened for reading first (the agent's open blocks until then)."""

    def __init__(self, path):
        self.path = str(path)
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = b""

    def read(self) -> bytes:
        try:
            while chunk := os.read(self.fd, 4096):
                self.data += chunk
        except BlockingIOError:
            pass
        return self.data

    def close(self):
        os.close(self.fd)


@pytest.fixture
def fifo(tmp_path):
    f = Fifo(tmp_path / "watchdog")
    yield f
    f.close()


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_keepalives_stop_while_the_lease_cannot_renew_and_a_clean_stop_writes_v(etcd1, tmp_path, fifo, procs):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    agent = spawn(tmp_path, "a", etcd1.endpoints, fifo.path, "--watchdog-write-only")
    procs.append(agent)
    wait_for(lambda: store.get(KEYS.host_alive("a")), 20, "the agent's lease")
    wait_for(lambda: fifo.read().count(b"\0") >= 3, 10, "keepalives")
    report = wait_for(lambda: store.get(KEYS.host_report("a")), 10, "a report")
    assert json.loads(report.value)["self_fence"] is None  # write-only: the timeout is unverified

    etcd = etcd1.members[0].proc
    os.kill(etcd.pid, signal.SIGSTOP)  # the host is cut off from etcd: no renewal succeeds
    try:
        time.sleep(1.0)  # a renewal sent just before may still have been answered
        before = len(fifo.read())
        time.sleep(2 * TTL)
        assert len(fifo.read()) == before, "fed while no renewal succeeded"
    finally:
        os.kill(etcd.pid, signal.SIGCONT)
    wait_for(lambda: len(fifo.read()) > before, 15, "keepalives once the lease renews again")

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    assert fifo.read().endswith(b"V"), fifo.data[-10:]  # the magic close: the last byte written
    assert store.get(KEYS.host_stopped("a")) is not None and store.get(KEYS.host_alive("a")) is None


def test_a_node_that_cannot_say_its_timeout_is_refused_in_one_line_as_a_clean_stop(etcd1, tmp_path, fifo, procs):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    agent = spawn(tmp_path, "b", etcd1.endpoints, fifo.path)  # production: no testing flag
    procs.append(agent)
    assert agent.wait(20) == 2
    err = agent.stderr.read().decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"haagent: refusing to run: agent.watchdog_device: {fifo.path} does not say its "
                          "timeout (WDIOC_GETTIMEOUT: Inappropriate ioctl for device)"), err
    assert fifo.read() == b"V"  # opened, so closed with the magic 'V'
    # It held a lease while it tried: it leaves as a clean stop does, so nobody fences the host.
    stopped = store.get(KEYS.host_stopped("b"))
    assert stopped is not None and json.loads(stopped.value)["policy"] == "freeze"
    assert store.get(KEYS.host_alive("b")) is None
