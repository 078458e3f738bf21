"""The lab's Linux guest: boot time, memory per guest, and the migration downtime a guest sees (root)."""

from __future__ import annotations

import math
import os
import statistics
import time

from haagent.errors import LabError
from haagent.lab import layout as L
from haagent.lab import proc
from haagent.lab.guest import Guest, largest_gap
from haagent.lab.lab import Lab

PREFIX = "lgb"
MEMORY_MIB = 384  # room for the 256 MiB the migrated guest holds, next to its kernel
HOLD_MIB = 256
DIRTY_MIB_S = 32
BOOTS = 5
MIGRATIONS = 10
SETTLE_S = 1.0  # recording before and after each migration
KVM_BOOT_LIMIT_S = 20.0


def _qemu_pid(vm: str) -> int | None:
    """The QEMU of ``vm`` (root-namespace PID), from its ``-name guest=<vm>,`` argument."""
    for pid in proc.pids():
        if proc.comm(pid).startswith("qemu-system"):
            if any(a.startswith(f"guest={vm},") or a == f"guest={vm}" for a in proc.cmdline(pid)):
                return pid
    return None


def _rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _boot(lab: Lab, guest: Guest, host: str) -> float:
    """Destroy and start the guest again; seconds from dom.create() to its ready line."""
    import libvirt
    conn = libvirt.open(lab.libvirt_uri(host))
    try:
        dom = conn.lookupByName(guest.vm)
        if dom.isActive():
            dom.destroy()
        mark = guest.mark()
        t0 = time.monotonic()
        dom.create()
        guest.wait_ready(timeout=60, since=mark)
        return time.monotonic() - t0
    finally:
        conn.close()


def _kvm_boot(lab: Lab, host: str) -> str:
    """Whether a Linux guest boots under this machine's /dev/kvm within KVM_BOOT_LIMIT_S."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no /dev/kvm here"
    import libvirt
    vm = "vmkvm"
    boot = lab.guest_boot("vm1")
    assert boot is not None
    boot = L.GuestBoot(boot.kernel, boot.initrd, boot.cmdline, str(lab.layout.guest_console(vm)),
                       lab.layout.guest_socket(vm))
    conn = libvirt.open(lab.libvirt_uri(host))
    try:
        dom = conn.createXML(L.domain_xml(vm, lab.vm_uuid(vm), lab.prefix, True, None, ha=False,
                                          memory_mib=L.GUEST_MEMORY_MIB, guest=boot), 0)
        t0 = time.monotonic()
        probe = Guest(lab, vm)
        try:
            probe.wait_ready(timeout=KVM_BOOT_LIMIT_S)
            return f"ready in {time.monotonic() - t0:.1f} s"
        except LabError:
            return f"not ready after {KVM_BOOT_LIMIT_S:g} s"
        finally:
            dom.destroy()
    finally:
        conn.close()


def _migrate(lab: Lab, guest: Guest, src: str, dst: str) -> dict[str, float]:
    import libvirt
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER |
             libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    s, d = libvirt.open(lab.libvirt_uri(src)), libvirt.open(lab.libvirt_uri(dst))
    try:
        with guest.recorder() as rec:
            time.sleep(SETTLE_S)
            t0 = time.monotonic()
            s.lookupByName(guest.vm).migrateToURI3(lab.migration_uri(dst), {}, flags)
            t1 = time.monotonic()
            time.sleep(SETTLE_S)
            ticks = rec.ticks
        stats = d.lookupByName(guest.vm).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    finally:
        s.close()
        d.close()
    during = largest_gap(ticks, t0, t1 + SETTLE_S)
    quiet = largest_gap(ticks, float("-inf"), t0)  # the same guest and load, no migration
    if during is None or quiet is None:
        raise LabError(f"guest {guest.vm}: no ticks recorded around the migration")
    return {"total_ms": (t1 - t0) * 1000, "libvirt_ms": float(stats.get("downtime", float("nan"))),
            "seen_ms": during.seen_ms, "guest_ms": during.guest_ms, "lost": during.lost,
            "quiet_ms": quiet.seen_ms}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def _row(label: str, values: list[float], unit: str = "ms") -> str:
    return (f"| {label} | {statistics.median(values):.0f} {unit} | {_p95(values):.0f} {unit} | "
            f"{min(values):.0f} / {max(values):.0f} |")


def run() -> str:
    if os.geteuid() != 0:
        return "## Lab: Linux guests\n\nSkipped: the lab needs root.\n"
    lab = Lab(PREFIX)
    lab.down()
    try:
        lab.up(2, 1, guest="linux", memory_mib=MEMORY_MIB, ha=False)
        guest = lab.guest("vm1")
        guest.wait_ready(timeout=60)
        home = guest.host()
        boots = [_boot(lab, guest, home) for _ in range(BOOTS)]
        time.sleep(2)
        pid = _qemu_pid("vm1")
        c0, t0 = _cpu_s(pid), time.monotonic()
        time.sleep(5)
        idle_cpu = (_cpu_s(pid) - c0) / (time.monotonic() - t0) * 100
        rss_idle = _rss_mib(pid)
        avail_idle = guest.status()["avail_kib"] / 1024
        t0 = time.monotonic()
        guest.load(0, HOLD_MIB, DIRTY_MIB_S, timeout=120)
        fill_s = time.monotonic() - t0
        rss_held = _rss_mib(pid)
        kvm = _kvm_boot(lab, home)
        runs = []
        src, dst = home, "h2" if home == "h1" else "h1"
        for _ in range(MIGRATIONS):
            runs.append(_migrate(lab, guest, src, dst))
            src, dst = dst, src
        assert guest.status()["mem"] == HOLD_MIB, "the guest still holds its memory after the migrations"
    finally:
        lab.down()
    col = {k: [r[k] for r in runs] for k in runs[0]}
    col["excess_ms"] = [r["seen_ms"] - r["libvirt_ms"] for r in runs]
    lost = int(sum(col["lost"]))
    return f"""## Lab: Linux guests

`haagent lab up --guest linux` (haagent/lab/guest_image.py): Debian's kernel booted directly
(PVH entry of the uncompressed vmlinux) with a busybox initramfs, TCG, 1 vCPU, {MEMORY_MIB} MiB,
on a 2-host lab (prefix `{PREFIX}`).

| measure | value |
|---|---|
| boot, `dom.create()` to the guest's ready line, median of {BOOTS} | {statistics.median(boots):.2f} s (runs: {', '.join(f'{b:.2f}' for b in boots)}) |
| QEMU RSS of an idle guest ({MEMORY_MIB} MiB VM) | {rss_idle:.0f} MiB |
| memory the guest's kernel leaves free (MemAvailable, idle) | {avail_idle:.0f} MiB of {MEMORY_MIB} |
| QEMU RSS holding {HOLD_MIB} MiB (`lab load --mem {HOLD_MIB}`, filled in {fill_s:.1f} s) | {rss_held:.0f} MiB |
| CPU of an idle guest (the 10 ms tick loop, TCG timers) | {idle_cpu:.1f} % of one core |
| the same guest under this machine's /dev/kvm (`--kvm`, CPU qemu64 -svm) | {kvm} |

Live migration (p2p, h1 <-> h2) of the guest holding {HOLD_MIB} MiB of random data and
rewriting {DIRTY_MIB_S} MiB/s of it, {MIGRATIONS} runs:

| measure | median | p95 (nearest rank) | min / max |
|---|---|---|---|
{_row("migration, call to return", col["total_ms"])}
{_row("downtime libvirt reports (`jobStats` downtime, `MigrationResult.downtime_ms`)", col["libvirt_ms"])}
{_row("**downtime the guest shows**: largest gap between tick arrivals", col["seen_ms"])}
{_row("guest-observed minus libvirt-reported, run by run", col["excess_ms"])}
{_row("the same pair of ticks by the guest's own clock", col["guest_ms"])}
{_row(f"largest gap between tick arrivals in the {SETTLE_S:g} s before each migration", col["quiet_ms"])}

How the guest-observed figure is measured: the guest prints `T <seq> <its clock>` every 10 ms on
its serial console, a file on the shared storage that the source and the destination QEMU both
append to. A thread of the benchmark polls that file every 1 ms and stamps each tick with this
machine's monotonic clock when it arrives; the downtime shown is the largest gap between the
arrivals of two consecutive ticks from the start of the migration to {SETTLE_S:g} s after it
returned. It includes the 10 ms tick period and any scheduling jitter of the guest (the row
"before each migration" is that jitter alone, under the same load). {lost} ticks were lost
across all runs (the sequence numbers are consecutive when 0). The guest's own clock is no
witness: it does not advance while the VM is paused (QEMU stops the guest's clock with its vCPUs
and restarts it on the destination), so by the guest's clock the switchover looks like a short
tick gap, as the "own clock" row shows; only an outside clock sees the pause.
"""
