"""The lab: time to build 3 hosts with 6 VMs, live-migration time and downtime, idle CPU (root)."""

from __future__ import annotations

import os
import statistics
import time

from haagent.lab import proc
from haagent.lab.lab import NETNS_DIR, Lab

PREFIX = "lbb"
UP_RUNS = 3
MIGRATIONS = 10
IDLE_WINDOW = 10.0


def _lab_pids(lab: Lab) -> list[int]:
    """Every process of the lab: anything in one of its network namespaces, plus the BMC supervisor."""
    inodes = {proc.ns_inode(str(NETNS_DIR / n), "net") for n in os.listdir(NETNS_DIR)
              if lab.layout.owns_netns(n)}
    return [p for p in proc.pids() if proc.ns_inode(p, "net") in inodes]


def _kind(pid: int) -> str:
    args = proc.cmdline(pid)
    if "agent" in args:
        return "agents"
    if "bmcd" in args:
        return "BMC supervisor"
    if any(a.endswith("init.py") for a in args):
        return "inits"
    return {"qemu-system-x86": "QEMUs", "etcd": "etcd", "libvirtd": "libvirtd"}.get(proc.comm(pid), proc.comm(pid))


def _cpu_ticks(pids: list[int]) -> dict[str, int]:
    """utime + stime per kind of process."""
    total: dict[str, int] = {}
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = _kind(pid)
        total[kind] = total.get(kind, 0) + int(fields[11]) + int(fields[12])
    return total


def _migrate(lab: Lab, vm: str, src: str, dst: str) -> tuple[float, float | None]:
    """One p2p live migration from the root namespace; (seconds, downtime ms from dst's job stats)."""
    import libvirt
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER |
             libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    s, d = libvirt.open(lab.libvirt_uri(src)), libvirt.open(lab.libvirt_uri(dst))
    try:
        dom = s.lookupByName(vm)
        t0 = time.monotonic()
        dom.migrateToURI3(lab.migration_uri(dst), {}, flags)
        elapsed = time.monotonic() - t0
        stats = d.lookupByName(vm).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return elapsed, stats.get("downtime")
    finally:
        s.close()
        d.close()


def run() -> str:
    if os.geteuid() != 0:
        return "## Lab\n\nSkipped: the lab needs root.\n"
    lab = Lab(PREFIX)
    lab.down()
    ups = []
    try:
        for i in range(UP_RUNS):
            t0 = time.monotonic()
            lab.up(3, 6)
            ups.append(time.monotonic() - t0)
            if i < UP_RUNS - 1:
                lab.down()
        times, downtimes = [], []
        src, dst = lab.vms()["vm1"], "h3" if lab.vms()["vm1"] != "h3" else "h2"
        for _ in range(MIGRATIONS):
            elapsed, downtime = _migrate(lab, "vm1", src, dst)
            times.append(elapsed)
            if downtime is not None:
                downtimes.append(downtime)
            src, dst = dst, src
        time.sleep(3)  # let the last migration's work settle before measuring idle
        pids = _lab_pids(lab)
        hz = os.sysconf("SC_CLK_TCK")
        c0, t0 = _cpu_ticks(pids), time.monotonic()
        time.sleep(IDLE_WINDOW)
        c1, window = _cpu_ticks(pids), time.monotonic() - t0
        by_kind = {k: (c1.get(k, 0) - c0.get(k, 0)) / hz / window * 100 for k in c1}
        idle = sum(by_kind.values())
        n_procs = len(pids)
    finally:
        lab.down()
    down_med = f"{statistics.median(downtimes):.0f} ms" if downtimes else "n/a"
    return f"""## Lab

`haagent lab up` on this machine (TCG, 64 MiB VMs with no OS), prefix `{PREFIX}`.

| measure | value |
|---|---|
| `lab up` 3 hosts / 6 VMs, median of {UP_RUNS} | {statistics.median(ups):.1f} s (runs: {', '.join(f'{u:.1f}' for u in ups)}) |
| live migration (p2p, 64 MiB), median of {MIGRATIONS} | {statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) |
| migration downtime (libvirt job stats), median of {len(downtimes)} | {down_med} |
| idle CPU of the whole lab ({n_procs} processes, {IDLE_WINDOW:g} s window) | {idle:.1f} % of one core |
| of which | {', '.join(f'{k} {v:.1f} %' for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]))} |

The lab's processes are everything in its network namespaces: 3 inits, 3 libvirtd, 3 etcd
members, 3 agents, 6 QEMUs; plus the BMC supervisor in the management namespace.
"""
