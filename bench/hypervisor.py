"""Hypervisor adapter: cost of one stats sample over 50 VMs, and live migration in the lab.

Builds a two-host lab (prefix ``hvtb``), starts 50 tiny VMs on h1, times ``raw_stats()`` (one
``getAllDomainStats`` plus node CPU and memory calls) and the pure delta computation, then
live-migrates one 64 MiB VM back and forth ten times with haagent's usual options
(live, p2p, PERSIST_DEST, UNDEFINE_SOURCE) and reports the medians. Root only.
"""

from __future__ import annotations

import os
import statistics
import time

VMS = 50
SAMPLES = 20
MIGRATIONS = 10
PREFIX = "hvtb"


def _xml(name: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            "<emulator>/usr/bin/qemu-system-x86_64</emulator><controller type='usb' model='none'/>"
            "<memballoon model='none'/></devices></domain>")


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def run() -> str:
    if os.geteuid() != 0:
        return "## hypervisor\n\nSkipped: the lab needs root.\n"
    from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
    from haagent.hypervisor.options import MigrationOptions
    from haagent.hypervisor.port import MigrationTarget
    from haagent.hypervisor.stats import compute_usage
    from haagent.lab.lab import Lab

    lab = Lab(PREFIX)
    if lab.exists():
        lab.down()
    lab.up(hosts=2, vms=0)
    h1 = h2 = None
    try:
        h1 = LibvirtHypervisor(lab.libvirt_uri("h1"))
        h2 = LibvirtHypervisor(lab.libvirt_uri("h2"))
        h1.wait_connected(15)
        h2.wait_connected(15)
        t0 = time.monotonic()
        for i in range(VMS):
            h1.define_and_start(_xml(f"hvtb-{i:02d}"))
        start_s = time.monotonic() - t0

        h1.raw_stats()  # warm up the connection
        reads, deltas = [], []
        prev = None
        for _ in range(SAMPLES):
            t = time.monotonic()
            cur = h1.raw_stats()
            reads.append(time.monotonic() - t)
            t = time.monotonic()
            compute_usage(prev, cur)
            deltas.append(time.monotonic() - t)
            prev = cur
            time.sleep(0.05)
        assert len(cur.vms) == VMS
        t = time.monotonic()
        h1.list_vms()
        inventory_s = time.monotonic() - t

        # Migrations: stop the 50 first so they do not skew the figures.
        for v in h1.list_vms():
            h1.destroy(v.uuid)
            h1.undefine(v.uuid)
        vm = h1.define_and_start(_xml("hvtb-mig")).uuid
        sides = [(h1, MigrationTarget(lab.migration_uri("h2"), lab.libvirt_uri("h2"))),
                 (h2, MigrationTarget(lab.migration_uri("h1"), lab.libvirt_uri("h1")))]
        durations, downtimes = [], []
        for i in range(MIGRATIONS):
            hv, target = sides[i % 2]
            res = hv.migrate(vm, target, MigrationOptions(), deadline=60).raise_for_error()
            durations.append(res.duration_s)
            if res.downtime_ms is not None:
                downtimes.append(res.downtime_ms)
    finally:
        for hv in (h1, h2):
            if hv is not None:
                hv.close()
        lab.down()

    return "\n".join([
        "## hypervisor",
        "",
        f"Lab with 2 hosts (TCG, 64 MiB VMs with no OS). {VMS} VMs started on one host in "
        f"{start_s:.1f} s.",
        "",
        "| measure | median |",
        "|---|---|",
        f"| one stats reading, {VMS} VMs (`raw_stats`: getAllDomainStats + node CPU/memory), "
        f"n={SAMPLES} | {_ms(reads)} |",
        f"| usage from two readings (`compute_usage`, pure), n={SAMPLES} | {_ms(deltas)} |",
        f"| full inventory of {VMS} VMs (`list_vms`, XML parsed) | {inventory_s * 1000:.0f} ms |",
        f"| live migration h1<->h2, live+p2p+persistent+undefinesource, n={MIGRATIONS} | "
        f"{_ms(durations)} |",
        f"| downtime reported by the destination, n={len(downtimes)} | "
        f"{statistics.median(downtimes):.0f} ms |" if downtimes else "| downtime | not reported |",
        "",
        f"Migration durations (s): {', '.join(f'{d:.2f}' for d in durations)}.",
    ])
