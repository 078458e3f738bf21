"""The leader places with what the lab's hosts really report: NUMA cells and load.

A strict-NUMA VM restarts only on a host whose cell can hold it, though another host is first by
name; the dead host's VM goes to the least loaded host while Linux guests burn CPU on another.
Verdicts come from asking every libvirtd where each VM runs, and from the leader's own records.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

import pytest

from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
from haagent.lab import layout as L
from haagent.lab.lab import Lab
from lab_helpers import view

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]


def wait(what: str, cond: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def where(lab: Lab, vm: str) -> list[str]:
    return [h for h in lab.hosts() if vm in (lab.running_vms(h) or [])]


def crash_and_follow(lab: Lab, host: str, vm: str, timeout: float = 90) -> str:
    """Crash ``host`` and return where ``vm`` runs again, checking it never runs twice."""
    lab.crash(host)
    deadline = time.monotonic() + timeout
    while True:
        now = where(lab, vm)
        assert len(now) <= 1, f"{vm} runs on {now}"
        if now:
            return now[0]
        assert time.monotonic() < deadline, f"{vm} did not run again after {host} crashed"
        time.sleep(0.3)


def test_a_strict_numa_vm_restarts_where_its_cell_fits(make_lab) -> None:
    # Cell 0 free: h1 512 MiB, h2 3072, h3 2048 (layout.default_cells). A 1 GiB VM bound to
    # cell 0 fits h2 but not h1, which would win a tie by name.
    lab = make_lab("lnp", 3, 0)
    assert [c.free_mib for c in L.default_cells("h1")][0] < 1024 <= L.default_cells("h2")[0].free_mib
    vm, vm_uuid = "numavm", str(uuid.uuid4())
    hv = LibvirtHypervisor(lab.libvirt_uri("h3"))
    try:
        assert hv.wait_connected(15)
        hv.define_and_start(L.domain_xml(vm, vm_uuid, lab.prefix, kvm=False, disk=None, ha=True,
                                         memory_mib=1024, numa_strict="0"))
    finally:
        hv.close()
    spec = wait("the agent to register the VM with its NUMA needs",
                lambda: view(lab).specs.get(vm_uuid), 30)
    assert (spec.needs.numa, spec.needs.nodeset) == ("strict", (0,))
    wait("the leader to record it on h3", lambda: view(lab).placements.get(vm_uuid) == "h3", 30)
    # The report carries the cells (once the agent has read its libvirtd: its first read may come
    # before libvirtd answers, and then the next one, report_interval later, brings them).
    cells = wait("h1's report to carry its NUMA cells", lambda: view(lab).hosts["h1"].numa, 30)
    assert cells[0].free_mib == L.default_cells("h1")[0].free_mib
    assert crash_and_follow(lab, "h3", vm) == "h2"
    assert view(lab).placements.get(vm_uuid) == "h2"


def test_a_failover_places_on_the_least_loaded_host(make_lab) -> None:
    lab = make_lab("lld", 3, 3, guest="linux")  # vm1 on h1, vm2 on h2, vm3 on h3
    for vm in ("vm1", "vm2", "vm3"):
        lab.guest(vm).wait_ready(timeout=90)
    lab.load("vm1", cpu=1, mem=0)  # h1 gets busy; h2 stays idle
    try:
        def busier() -> bool:
            hosts = view(lab).hosts
            used = {h: hosts[h].cpu_used for h in ("h1", "h2")}
            return None not in used.values() and used["h1"] > used["h2"] + 0.3
        wait("h1's smoothed load to show in its report", busier, 90)
        assert crash_and_follow(lab, "h3", "vm3") == "h2"  # h1 would win a tie by name
    finally:
        lab.load("vm1", cpu=0, mem=0)
