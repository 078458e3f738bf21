"""CPU usage from counter deltas (pure), and the sampler that keeps the agent loop unblocked."""

from __future__ import annotations

import threading

import pytest

from haagent.errors import HypervisorUnavailable
from haagent.hypervisor.port import RawStats, RawVmCounters
from haagent.hypervisor.stats import StatsSampler, compute_usage


def reading(at, busy, total, vms):
    return RawStats(at=at, host_cpu_busy_ns=busy, host_cpu_total_ns=total, host_cpus=4,
                    host_memory_total_kib=8 * 2**20, host_memory_free_kib=2 * 2**20,
                    vms=tuple(RawVmCounters(u, u, True, int(t), 65536) for u, t in vms))


def test_first_sample_has_no_rates():
    s = compute_usage(None, reading(10.0, 0, 0, [("a", 5e9)]))
    assert s.host_load is None and s.vms["a"].cpu_percent is None
    assert s.vms["a"].memory_used_mib == 64 and s.host_memory_free_mib == 2048


def test_rates_from_deltas():
    a = reading(10.0, 1_000, 10_000, [("a", 1e9), ("b", 0)])
    b = reading(12.0, 4_000, 20_000, [("a", 2e9), ("b", 3e9), ("c", 1e9)])
    s = compute_usage(a, b)
    assert s.interval_s == 2.0
    assert s.host_load == pytest.approx(0.3)
    assert s.vms["a"].cpu_percent == pytest.approx(50.0)  # 1 s of CPU in 2 s
    assert s.vms["b"].cpu_percent == pytest.approx(150.0)  # more than one host CPU
    assert s.vms["c"].cpu_percent is None  # new VM: no previous counter


def test_restarted_vm_gives_no_negative_rate():
    a = reading(10.0, 0, 1, [("a", 9e9)])
    b = reading(11.0, 0, 2, [("a", 1e8)])
    assert compute_usage(a, b).vms["a"].cpu_percent is None


def test_sampler_never_blocks_the_reader():
    gate = threading.Event()
    calls = []

    def slow_read():
        calls.append(1)
        if len(calls) > 1:
            gate.wait(5)  # libvirtd hangs on the second reading
        return reading(float(len(calls)), 0, 1, [])

    sampler = StatsSampler(slow_read, interval=0.01)
    sampler.sample_once()
    sampler.start()
    try:
        # The reader gets the last good sample at once while the sampler thread is stuck.
        assert sampler.latest() is not None and sampler.latest().at == 1.0
    finally:
        gate.set()
        sampler.stop()


def test_failed_reading_keeps_figures_and_says_why():
    n = []

    def read():
        n.append(1)
        if len(n) == 2:
            raise HypervisorUnavailable("libvirtd gone")
        return reading(float(len(n)), 0, 1, [("a", 1e9 * len(n))])

    s = StatsSampler(read)
    s.sample_once()
    with pytest.raises(HypervisorUnavailable):
        s.sample_once()
    assert s.latest().error == "libvirtd gone" and "a" in s.latest().vms
    s.sample_once()
    assert s.latest().error is None
