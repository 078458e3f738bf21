"""The host report's inventory and load, and when it is worth an etcd write."""

from __future__ import annotations

import math
import pytest

from haagent.agent.inventory import LoadSmoother, host_inventory, worth_writing
from haagent.hypervisor.fake import FakeHypervisor, default_cells
from haagent.hypervisor.port import StatsSample, VmUsage


def sample(at: float, load: float | None, free: float = 3000.0, vms: dict | None = None) -> StatsSample:
    return StatsSample(at=at, interval_s=5.0, host_load=load, host_memory_free_mib=free,
                       host_memory_total_mib=4096.0,
                       vms={u: VmUsage(u, u, pct, 256.0) for u, pct in (vms or {}).items()})


def test_the_smoothed_load_follows_a_step_by_the_one_minute_time_constant():
    s = LoadSmoother()
    s.add(sample(0.0, 0.0), cpus=4)
    assert s.cpu == 0.0
    for t in range(5, 61, 5):  # a step to 2 cores busy, held for a minute
        s.add(sample(float(t), 0.5), cpus=4)
    assert s.cpu == pytest.approx(2.0 * (1 - math.exp(-1)), rel=1e-6)


def test_a_burst_moves_the_average_little_and_a_vm_gone_leaves_it():
    s = LoadSmoother()
    s.add(sample(0.0, 0.1, vms={"a": 10.0, "b": 50.0}), cpus=4)
    s.add(sample(5.0, 1.0, vms={"a": 400.0}), cpus=4)  # 5 s of everything busy; b is gone
    assert 0.4 < s.cpu < 0.8  # from 0.4 cores towards 4, 8 % of the way
    assert set(s.vms) == {"a"}
    assert s.record()["vms"]["a"] == pytest.approx(0.1 + (1 - math.exp(-5 / 60)) * 3.9, abs=0.01)


def test_cpu_figures_wait_for_two_readings_memory_does_not():
    s = LoadSmoother()
    s.add(sample(0.0, None, free=1096.0), cpus=4)
    r = s.record()
    assert r["cpu"] is None and r["memory_used_mib"] == 3000


def test_the_inventory_names_cells_free_memory_and_hugepages():
    hv = FakeHypervisor("fake://h", numa=default_cells(2, 2, 2048, hugepages_2m_per_cell=64))
    inv = host_inventory(hv.host_info(), ("ssd", "rack-a", "ssd"))
    assert inv["tags"] == ["rack-a", "ssd"] and inv["cpus"] == 4
    assert [c["cpus"] for c in inv["numa"]] == [[0, 1], [2, 3]]
    assert inv["numa"][0]["hugepages"] == {"2048": [64, 64]}
    assert inv["numa"][0]["free_mib"] <= 2048
    assert inv["cpu"]["key"] == hv.host_info().migration_key


BASE = {"host": "h1", "cpus": 8, "memory_mib": 16384, "tags": [], "running_vms": ["a"],
        "numa": [{"id": 0, "cpus": [0, 1], "memory_mib": 8192, "free_mib": 4000, "hugepages": {}}],
        "load": {"cpu": 2.0, "memory_used_mib": 8000, "vms": {"a": 1.0}}, "reported_at": 1.0}


def changed(**kw) -> dict:
    out = dict(BASE)
    for k, v in kw.items():
        out[k] = v
    return out


def test_facts_the_leader_acts_on_are_written_at_once():
    assert worth_writing(None, BASE, 0.0, 5.0)
    assert worth_writing(BASE, changed(running_vms=["a", "b"]), 0.1, 5.0)
    assert worth_writing(BASE, changed(tags=["ssd"]), 0.1, 5.0)
    assert worth_writing(BASE, changed(inventory_error="libvirt down"), 0.1, 5.0)
    cells = [dict(BASE["numa"][0], cpus=[0])]
    assert worth_writing(BASE, changed(numa=cells), 0.1, 5.0)


def test_drifting_load_is_written_at_most_once_per_interval_and_only_past_a_threshold():
    busy = changed(load={"cpu": 4.0, "memory_used_mib": 8000, "vms": {"a": 1.0}})
    assert not worth_writing(BASE, busy, 4.9, 5.0)  # within the interval: never
    assert worth_writing(BASE, busy, 5.0, 5.0)
    drift = changed(load={"cpu": 2.5, "memory_used_mib": 8300, "vms": {"a": 1.2}}, reported_at=9.0)
    assert not worth_writing(BASE, drift, 60.0, 5.0)  # 0.5 core < 0.8 (10 % of 8), 300 < 819 MiB, 0.2 < 0.25
    assert worth_writing(BASE, changed(load={"cpu": 2.0, "memory_used_mib": 9000, "vms": {"a": 1.0}}), 60, 5)
    assert worth_writing(BASE, changed(load={"cpu": 2.0, "memory_used_mib": 8000, "vms": {"a": 2.0}}), 60, 5)
    freed = [dict(BASE["numa"][0], free_mib=3000)]
    assert worth_writing(BASE, changed(numa=freed), 60.0, 5.0)
    assert not worth_writing(BASE, changed(numa=freed), 1.0, 5.0)
