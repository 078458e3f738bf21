"""etcd coordination figures: leader failover, lease refresh latency, steady-state write rate."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from haagent.store.client import EtcdStore
from haagent.store.election import read_leader
from haagent.store.etcd_server import EtcdCluster
from haagent.store.keys import Keys

TTL = 2
HEARTBEAT = 0.5
RUNS = 20
STEADY_SECONDS = 30


def _config(path: Path, host: str, endpoint: str) -> Path:
    path.write_text(f'cluster = "bench"\nhost = "{host}"\n[etcd]\nendpoints = ["{endpoint}"]\ntimeout = 0.5\n'
                    f'[timing]\nheartbeat_interval = {HEARTBEAT}\nlease_ttl = {TTL}\n'
                    f'[metrics]\nlisten = ""\n[libvirt]\nenabled = false\n[log]\nformat = "json"\nlevel = "warning"\n')
    return path


def _spawn(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "haagent.cli", "agent", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.005)
    raise TimeoutError("benchmark condition not reached")


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def run() -> str:
    work = Path(tempfile.mkdtemp(prefix="haagent-bench-etcd-"))
    etcd = EtcdCluster(1, work / "etcd").start()
    endpoint = etcd.endpoints[0]
    keys = Keys("bench")
    store = EtcdStore([endpoint], timeout=1)
    hosts = ["a", "b", "c"]
    cfgs = {h: _config(work / f"{h}.toml", h, endpoint) for h in hosts}
    procs = {h: _spawn(cfgs[h]) for h in hosts}
    failovers: list[float] = []
    try:
        _wait(lambda: len(store.get_prefix(keys.hosts)[0]) >= 6 and store.get(keys.leader_info), 30)
        # -- steady-state writes: the store revision moves only on writes, not on keepalives
        time.sleep(2)
        rev0 = store.revision()
        time.sleep(STEADY_SECONDS)
        writes = store.revision() - rev0
        per_host_min = writes / len(hosts) / (STEADY_SECONDS / 60)

        # -- leader failover: SIGKILL the leader agent until the new leader's first guarded write
        for _ in range(RUNS):
            lead = read_leader(store, keys)
            info_rev = store.get(keys.leader_info).mod_revision
            procs[lead.host].send_signal(signal.SIGKILL)
            procs[lead.host].wait()
            t0 = time.monotonic()
            _wait(lambda: (kv := store.get(keys.leader_info)) and kv.mod_revision > info_rev
                  and json.loads(kv.value)["host"] != lead.host, TTL + 10)
            failovers.append(time.monotonic() - t0)
            procs[lead.host] = _spawn(cfgs[lead.host])
            _wait(lambda: store.get(keys.host_alive(lead.host)), 15)

        # -- lease refresh latency
        lease_id, _ = store.grant(10)
        lat = []
        for _ in range(200):
            t0 = time.perf_counter()
            store.refresh(lease_id)
            lat.append((time.perf_counter() - t0) * 1000)
        store.revoke(lease_id)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        store.close()
        etcd.stop()
    return "\n".join([
        "## etcd coordination",
        "",
        f"Single etcd member on loopback, three `haagent agent` processes, lease TTL {TTL} s, "
        f"heartbeat {HEARTBEAT} s.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| leader failover (agent SIGKILL to the new leader's first guarded write), median of {RUNS} | {statistics.median(failovers):.2f} s |",
        f"| leader failover, p95 of {RUNS} | {pct(failovers, 95):.2f} s |",
        f"| leader failover, min / max | {min(failovers):.2f} s / {max(failovers):.2f} s |",
        f"| lease refresh latency, median / p95 of 200 | {statistics.median(lat):.2f} ms / {pct(lat, 95):.2f} ms |",
        f"| etcd writes per host per minute in steady state, beyond keepalives ({STEADY_SECONDS} s sample) | {per_host_min:.2f} (target <= 1) |",
        "",
        "Failover is bounded by the lease TTL: the dead leader's key lives until its lease expires "
        "(up to TTL after its last refresh), and the other agents campaign on the delete event.",
    ])
