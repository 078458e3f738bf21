"""``make demo``: the failover drill in a real 3-host lab (as root).

Without root (no namespaces, no libvirtd) it falls back to the election demo: a local etcd, three
agents on loopback, the leader killed, a new leader elected. Everything is cleaned up on exit.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from haagent.store.client import EtcdStore
from haagent.store.election import read_leader
from haagent.store.etcd_server import EtcdCluster
from haagent.store.keys import Keys

HOSTS = ("kvm-a", "kvm-b", "kvm-c")
TTL = 3


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def status(config: Path) -> None:
    subprocess.run([sys.executable, "-m", "haagent.cli", "status", "--config", str(config)], check=False)


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return None


def main() -> int:
    import os

    if os.geteuid() == 0 and "--election" not in sys.argv:
        say("failover drill: a 3-host KVM lab on this machine, one host crashed, its VMs restarted elsewhere")
        return subprocess.run([sys.executable, "-m", "haagent.cli", "drill", "--hosts", "3", "--vms", "6"]).returncode
    return election_demo()


def election_demo() -> int:
    work = Path(tempfile.mkdtemp(prefix="haagent-demo-"))
    etcd = EtcdCluster(1, work / "etcd")
    agents: dict[str, subprocess.Popen] = {}
    try:
        say("starting a local etcd on loopback")
        etcd.start()
        endpoint = etcd.endpoints[0]
        print(f"    etcd at {endpoint}")
        configs = {}
        for host in HOSTS:
            cfg = work / f"{host}.toml"
            cfg.write_text(f'cluster = "demo"\nhost = "{host}"\n[etcd]\nendpoints = ["{endpoint}"]\n'
                           f'[timing]\nheartbeat_interval = 1.0\nlease_ttl = {TTL}\n'
                           f"[metrics]\nlisten = \"\"\n[libvirt]\nenabled = false\n[log]\nformat = \"json\"\n")
            configs[host] = cfg
        say(f"starting three agents ({', '.join(HOSTS)}), lease TTL {TTL}s")
        for host in HOSTS:
            log = open(work / f"{host}.log", "wb")
            agents[host] = subprocess.Popen([sys.executable, "-m", "haagent.cli", "agent", "--config", str(configs[host])],
                                            stdout=log, stderr=subprocess.STDOUT)
        store = EtcdStore([endpoint], timeout=1)
        keys = Keys("demo")
        first = wait_for(lambda: len(store.get_prefix(keys.hosts)[0]) >= 2 * len(HOSTS) and read_leader(store, keys), 30)
        if not first:
            print("demo: agents did not come up; logs in", work, file=sys.stderr)
            return 1
        status(configs[HOSTS[0]])
        say(f"killing the leader agent on {first.host} with SIGKILL (a crash: no resign, no revoke)")
        agents[first.host].send_signal(signal.SIGKILL)
        agents[first.host].wait()
        killed = time.monotonic()
        second = wait_for(lambda: (l := read_leader(store, keys)) and l.host != first.host and l, TTL + 10)
        if not second:
            print("demo: no new leader", file=sys.stderr)
            return 1
        took = time.monotonic() - killed
        print(f"    {second.host} took over after {took:.2f}s (epoch {first.epoch} -> {second.epoch}); "
              f"{first.host}'s lease expired with it, so its 'alive' key is gone:")
        wait_for(lambda: store.get(keys.host_alive(first.host)) is None, TTL + 2)
        status(configs[second.host])
        store.close()
        say("done; cleaning up")
        return 0
    finally:
        for p in agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in agents.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
