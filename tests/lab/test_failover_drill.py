"""Unattended failover in the real lab: crash, partition, and the leader's own host.

One lab serves the three drills: after each, the failed host is powered back on and returned to
service with a host_return request, the way an operator would. The verdict of every drill comes
from asking each libvirtd where each VM runs; a VM seen on two hosts at any poll fails it.
"""

from __future__ import annotations

import json
import time

import pytest

from haagent.state.codec import build_view
from haagent.lab.drill import run_drill
from haagent.lab.lab import Lab
from haagent.store.keys import Keys

from lab_helpers import return_host

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def ha_lab():
    import os

    if os.geteuid() != 0:
        pytest.skip("lab tests need root (namespaces, libvirtd, etcd); CI runs them as root")
    with Lab("lfo").running(3, 6) as lab:
        yield lab


def busy_host(lab) -> tuple[str, str]:
    """A host that runs at least one VM, and one of its VMs."""
    deadline = time.monotonic() + 30
    while True:
        for h in lab.hosts():
            running = lab.running_vms(h) or []
            if running:
                return h, running[0]
        assert time.monotonic() < deadline, "no host runs a VM"
        time.sleep(0.2)


def check(result) -> None:
    assert result.ok, f"{result.verdict}\n{json.dumps(result.to_json(), indent=1)}"
    moved = [v for v in result.vms if v["moved_from"]]
    assert moved, "the target ran no VMs: nothing was tested"
    for v in result.vms:
        assert len(v["running_on"]) == 1 and result.target not in v["running_on"] or v["moved_from"] is None
    phases = [r["phase"] for r in result.timeline]
    for phase in ("fault", "detect", "confirm", "fence", "fenced", "place", "running"):
        assert phase in phases, f"timeline lacks {phase}: {phases}"


def test_crash_of_a_host(ha_lab):
    result = run_drill(ha_lab, "crash", timeout=60, say=lambda m: None)
    check(result)
    return_host(ha_lab, result.target)


def test_partitioned_host_is_fenced_through_its_bmc(ha_lab):
    result = run_drill(ha_lab, "partition", timeout=60, say=lambda m: None)
    check(result)
    # the partitioned host was powered off by its BMC (the management network is not cut)
    assert ha_lab.status()["hosts"][ha_lab.hosts().index(result.target)]["power"] == "off"
    return_host(ha_lab, result.target)


def test_crash_of_the_leaders_host(ha_lab):
    result = run_drill(ha_lab, "crash-leader", timeout=60, say=lambda m: None)
    check(result)
    assert result.target == result.leader_before
    return_host(ha_lab, result.target)


def test_crashed_vm_restarts_in_place(ha_lab):
    """A QEMU killed with SIGKILL (a VM crash, not a shutdown) is restarted on the same host."""
    h, vm = busy_host(ha_lab)
    pid = ha_lab.exec(h, ["cat", f"/run/libvirt/qemu/{vm}.pid"], check=True).stdout.strip()
    ha_lab.exec(h, ["kill", "-9", pid], check=True)
    t0 = time.monotonic()
    gone = False
    while True:
        now_running = vm in (ha_lab.running_vms(h) or [])
        gone = gone or not now_running
        new_pid = ha_lab.exec(h, ["cat", f"/run/libvirt/qemu/{vm}.pid"]).stdout.strip()
        if now_running and new_pid and new_pid != pid:
            break
        assert time.monotonic() - t0 < 20, f"{vm} was not restarted on {h}"
        time.sleep(0.1)
    others = [x for x in ha_lab.hosts() if x != h]
    assert all(vm not in (ha_lab.running_vms(x) or []) for x in others), "restarted elsewhere as well"


def test_manual_live_migration_of_an_ha_vm(ha_lab):
    """`virsh migrate` of an HA VM by hand: the old owner does not restart it, placement follows."""
    keys = Keys(ha_lab.prefix)
    src, vm = busy_host(ha_lab)
    dst = next(h for h in ha_lab.hosts() if h != src)
    ha_lab.exec(src, ["virsh", "migrate", "--live", "--p2p", "--persistent", "--undefinesource", vm,
                      ha_lab.migration_uri(dst)], check=True, timeout=60)
    store = ha_lab.etcd_store(timeout=1)
    try:
        deadline = time.monotonic() + 15
        while True:
            where = [h for h in ha_lab.hosts() if vm in (ha_lab.running_vms(h) or [])]
            assert len(where) <= 1, f"{vm} running on {where}"
            kvs, _ = store.get_prefix(keys.root)
            placed = build_view({kv.key: kv for kv in kvs}, keys, 0).placements.get(ha_lab.vm_uuid(vm))
            if where == [dst] and placed == dst:
                break
            assert time.monotonic() < deadline, f"{vm}: running on {where}, placed on {placed}"
            time.sleep(0.1)
        time.sleep(2)  # and it stays that way: the old owner does not start a second copy
        assert [h for h in ha_lab.hosts() if vm in (ha_lab.running_vms(h) or [])] == [dst]
    finally:
        store.close()
