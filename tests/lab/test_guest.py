"""The lab's Linux guest on real libvirtd + QEMU: it boots, ticks, and burns CPU on command (root)."""

from __future__ import annotations

import time
from typing import Callable

from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
from haagent.hypervisor.stats import compute_usage
from haagent.lab.lab import Lab


def _cpu_percent(hv: LibvirtHypervisor, uuid: str, window: float = 2.0) -> float:
    """The VM's CPU use over ``window`` seconds, from getAllDomainStats cpu.time as the agent reads it."""
    before = hv.raw_stats()
    time.sleep(window)
    pct = compute_usage(before, hv.raw_stats()).vms[uuid].cpu_percent
    assert pct is not None
    return pct


def test_linux_guest_ticks_and_takes_load(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab("lbg", hosts=2, vms=1, guest="linux", ha=False)
    guest = lab.guest("vm1")
    guest.wait_ready(timeout=60)

    first = guest.ticks()
    time.sleep(0.5)
    ticks = guest.ticks()
    assert len(ticks) >= len(first) + 20, "the guest prints a tick every 10 ms"
    assert [t.seq for t in ticks] == list(range(ticks[0].seq, ticks[0].seq + len(ticks)))
    assert all(b.guest_s >= a.guest_s for a, b in zip(ticks, ticks[1:]))

    hv = LibvirtHypervisor(lab.libvirt_uri(guest.host()))
    try:
        uuid = lab.vm_uuid("vm1")
        idle = _cpu_percent(hv, uuid)
        assert lab.load("vm1", cpu=1, mem=16) == {"cpu": 1, "mem": 16, "dirty": 0}
        assert guest.status()["mem"] == 16
        busy = _cpu_percent(hv, uuid)
        assert busy > idle + 20, f"a burning vCPU shows in libvirt's cpu.time ({idle:.0f}% -> {busy:.0f}%)"
        lab.load("vm1", cpu=0, mem=0)
        cleared = _cpu_percent(hv, uuid)
        assert cleared < idle + (busy - idle) / 2, f"clearing the load stops the burner ({cleared:.0f}%)"
    finally:
        hv.close()
    status = guest.status()
    assert (status["cpu"], status["mem"], status["dirty"]) == (0, 0, 0)
